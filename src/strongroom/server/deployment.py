"""Which deployment a server or admin tool runs: embedded (SQLite + the data folder) or
scale-out (`--metadata postgresql://…` + `--blobs s3://BUCKET?endpoint=…`).

Credentials never come from the command line: the PostgreSQL password from the URL only when it
is in the environment or the config file, else from `metadata_password_file` or libpq's own
PGPASSWORD / ~/.pgpass; S3 keys from `s3_credentials_file` (the AWS credentials file format) or
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. Every secret read is registered with redact.py, and
only the redacted URLs (`shown`) are ever printed or logged.
"""

from __future__ import annotations

import configparser
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import UsageError
from ..redact import redact, register_secret

_MAX_SECRET_FILE = 64 * 1024


@dataclass(frozen=True)
class MetadataSpec:
    """PostgreSQL: a libpq connection URL (with the password when one was given) and the
    same URL without it, for messages."""

    url: str
    password: str | None
    shown: str


@dataclass(frozen=True)
class BlobsSpec:
    """Where packs go: an S3 bucket of strongroom's own (keys STORAGE_ID/packs/NAME) or, for a
    shared file system and tests, a folder (`file:///path`)."""

    kind: str  # "s3" or "file"
    shown: str
    bucket: str = ""
    endpoint: str | None = None
    region: str | None = None
    ca_file: Path | None = None
    access_key: str | None = None
    secret_key: str | None = None
    path: Path | None = None


def refuse_argv_secrets(metadata: str | None, blobs: str | None) -> None:
    """A password or key given on the command line is visible to every local user (ps)."""
    if metadata and urlsplit(metadata).password is not None:
        raise UsageError(
            "do not put the PostgreSQL password in --metadata (the command line is visible to "
            "every local user): use metadata_password_file, PGPASSWORD or ~/.pgpass"
        )
    if blobs and "@" in urlsplit(blobs).netloc:
        raise UsageError(
            "do not put S3 keys in --blobs: use s3_credentials_file or AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY"
        )


def read_secret_file(path: Path, what: str) -> str:
    """The first line of a file only its owner may read (mode 0600 or 0400)."""
    try:
        info = path.stat()
        if os.name == "posix" and stat.S_IMODE(info.st_mode) & 0o077:
            raise UsageError(
                f"{what} {path} can be read by other users; make it mode 0600 (chmod 600)"
            )
        if info.st_size > _MAX_SECRET_FILE:
            raise UsageError(f"{what} {path} is too large")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{what} {path} is not valid UTF-8") from None
    value = text.splitlines()[0].strip() if text.strip() else ""
    if not value:
        raise UsageError(f"{what} {path} is empty")
    register_secret(value)
    return value


def metadata_spec(url: str, password_file: Path | None) -> MetadataSpec:
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise UsageError(
            f"--metadata must be a postgresql:// URL, not {redact(url)[:80]!r} "
            "(e.g. postgresql://strongroom@db.example.org/strongroom)"
        )
    if not parts.hostname and "host=" not in parts.query:
        raise UsageError("--metadata names no database host (postgresql://USER@HOST/DATABASE)")
    password = unquote(parts.password) if parts.password is not None else None
    register_secret(password)
    if password_file is not None:
        password = read_secret_file(password_file, "metadata_password_file")
    return MetadataSpec(url=url, password=password, shown=redact(url))


def blobs_spec(url: str, credentials_file: Path | None) -> BlobsSpec:
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise UsageError("--blobs file:// needs an absolute path (file:///srv/strongroom)")
        return BlobsSpec(kind="file", shown=url, path=Path(unquote(parts.path)))
    if parts.scheme != "s3":
        raise UsageError(
            f"--blobs must be s3://BUCKET?endpoint=URL (or file:///PATH), not {redact(url)[:80]!r}"
        )
    bucket = parts.hostname or ""
    if not 3 <= len(bucket) <= 63:
        raise UsageError("--blobs: an S3 bucket name has 3 to 63 characters (s3://BUCKET?…)")
    if parts.path.strip("/"):
        raise UsageError(
            "--blobs: give the bucket only (s3://BUCKET?…); strongroom needs one of its own"
        )
    unknown = set(query) - {"endpoint", "region", "ca_file", "profile"}
    if unknown:
        raise UsageError(f"--blobs: unknown setting(s) {', '.join(sorted(unknown))}")
    endpoint = query.get("endpoint") or None
    if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
        raise UsageError("--blobs: endpoint must be an http:// or https:// URL")
    access, secret = _s3_keys(credentials_file, query.get("profile") or "default")
    ca = query.get("ca_file")
    return BlobsSpec(
        kind="s3",
        shown=redact(url),
        bucket=bucket,
        endpoint=endpoint,
        region=query.get("region") or None,
        ca_file=Path(ca) if ca else None,
        access_key=access,
        secret_key=secret,
    )


def _s3_keys(credentials_file: Path | None, profile: str) -> tuple[str | None, str | None]:
    """Keys from the credentials file, else from the environment; (None, None) leaves them to
    boto3's own chain (instance roles and the like)."""
    if credentials_file is None:
        access = os.environ.get("AWS_ACCESS_KEY_ID") or None
        secret = os.environ.get("AWS_SECRET_ACCESS_KEY") or None
        register_secret(secret)
        return access, secret
    read_secret_file(credentials_file, "s3_credentials_file")  # mode and size checks
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(credentials_file.read_text(encoding="utf-8"))
    except (configparser.Error, OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"s3_credentials_file {credentials_file} is not an AWS credentials file "
            f"({type(exc).__name__})"
        ) from None
    if not parser.has_section(profile):
        raise UsageError(f"s3_credentials_file {credentials_file} has no [{profile}] section")
    access = parser.get(profile, "aws_access_key_id", fallback="").strip()
    secret = parser.get(profile, "aws_secret_access_key", fallback="").strip()
    if not access or not secret:
        raise UsageError(
            f"s3_credentials_file {credentials_file}: [{profile}] needs aws_access_key_id and "
            "aws_secret_access_key"
        )
    register_secret(secret)
    return access, secret
