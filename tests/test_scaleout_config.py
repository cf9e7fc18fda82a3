"""Scale-out settings: --metadata / --blobs from flags, environment and the TOML file; secrets
only from the environment or files, never argv; every URL redacted in messages and logs."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from strongroom.errors import UsageError
from strongroom.redact import MASK, RedactingFilter, redact, register_secret
from strongroom.server.config import load_config
from strongroom.server.deployment import blobs_spec, metadata_spec, refuse_argv_secrets


def test_redact_url_passwords_and_key_values() -> None:
    assert redact("postgresql://sr:hunter22@db:5432/x failed") == (
        f"postgresql://sr:{MASK}@db:5432/x failed"
    )
    assert redact("host=db password=hunter22 user=sr") == f"host=db password={MASK} user=sr"
    assert redact("aws_secret_access_key = abc/def+ghi") == f"aws_secret_access_key = {MASK}"
    assert redact("no secret here: s3://bucket?endpoint=http://h:1") == (
        "no secret here: s3://bucket?endpoint=http://h:1"
    )
    register_secret("Zq8-registered-secret")
    assert "Zq8" not in redact("boto said Zq8-registered-secret was wrong")


def test_log_filter_masks_formatted_arguments() -> None:
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "connecting to %s", ("postgresql://a:pw1234@h/db",), None
    )
    RedactingFilter().filter(record)
    assert record.getMessage() == f"connecting to postgresql://a:{MASK}@h/db"


def test_flags_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "server.toml"
    conf.write_text(
        '[server]\nmetadata = "postgresql://sr@file-db/sr"\nblobs = "s3://from-file"\n'
        "heartbeat_interval = 2\n"
    )
    cfg = load_config(conf, {})
    assert cfg.scaleout and cfg.metadata.endswith("file-db/sr") and cfg.heartbeat_interval == 2
    monkeypatch.setenv("STRONGROOM_METADATA", "postgresql://sr@env-db/sr")
    assert load_config(conf, {}).metadata == "postgresql://sr@env-db/sr"
    flag = load_config(conf, {"metadata": "postgresql://sr@flag-db/sr"})
    assert flag.metadata == "postgresql://sr@flag-db/sr" and flag.blobs == "s3://from-file"
    monkeypatch.delenv("STRONGROOM_METADATA")
    assert not load_config(None, {}).scaleout  # embedded unless told


def test_both_or_neither(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="both metadata"):
        load_config(None, {"metadata": "postgresql://sr@db/sr"})
    with pytest.raises(UsageError, match="both metadata"):
        load_config(None, {"blobs": "s3://bucket"})


def test_no_secrets_in_argv() -> None:
    with pytest.raises(UsageError, match="metadata_password_file"):
        refuse_argv_secrets("postgresql://sr:pw@db/sr", None)
    with pytest.raises(UsageError, match="s3_credentials_file"):
        refuse_argv_secrets(None, "s3://KEY:SECRET@bucket")
    refuse_argv_secrets("postgresql://sr@db/sr", "s3://bucket?endpoint=http://h:1")


def test_metadata_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "pgpass"
    secret.write_text("s3cr3t-pg\n")
    secret.chmod(0o644)
    with pytest.raises(UsageError, match="chmod 600"):
        metadata_spec("postgresql://sr@db/sr", secret)
    secret.chmod(0o600)
    spec = metadata_spec("postgresql://sr@db/sr", secret)
    assert spec.password == "s3cr3t-pg" and "s3cr3t" not in redact(f"login with {spec.password}")
    with pytest.raises(UsageError, match="postgresql://"):
        metadata_spec("mysql://sr:pw@db/sr", None)
    with pytest.raises(UsageError) as refused:
        metadata_spec("mysql://sr:pwxyz@db", None)
    assert "pwxyz" not in str(refused.value)


def test_blobs_url_and_credentials_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "s3creds"
    creds.write_text("[default]\naws_access_key_id = AKIA1\naws_secret_access_key = sk-abcdef\n")
    creds.chmod(0o600)
    spec = blobs_spec("s3://my-bucket?endpoint=https://s3.example:7480&region=eu", creds)
    assert (spec.bucket, spec.endpoint, spec.region) == (
        "my-bucket",
        "https://s3.example:7480",
        "eu",
    )
    with pytest.raises(UsageError, match="bucket only"):
        blobs_spec("s3://my-bucket/pre/fix", creds)
    assert (spec.access_key, spec.secret_key) == ("AKIA1", "sk-abcdef")
    assert "sk-abcdef" not in redact("the key sk-abcdef")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-1")
    assert blobs_spec("s3://my-bucket", None).secret_key == "env-secret-1"
    with pytest.raises(UsageError, match="3 to 63"):
        blobs_spec("s3://ab", None)
    with pytest.raises(UsageError, match="unknown setting"):
        blobs_spec("s3://my-bucket?secret=1", None)
    with pytest.raises(UsageError, match="no \\[other\\] section"):
        blobs_spec("s3://my-bucket?profile=other", creds)
    assert blobs_spec("file:///srv/packs", None).path == Path("/srv/packs")


def test_server_refuses_password_on_command_line(tmp_path: Path) -> None:
    """One line, exit 2, and the password is not echoed back."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "strongroom.server.cli",
            "--data-dir",
            str(tmp_path / "d"),
            "--metadata",
            "postgresql://sr:topsecret99@127.0.0.1:1/sr",
            "--blobs",
            "s3://bucket",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "topsecret99" not in proc.stderr + proc.stdout
    assert proc.stderr.count("\n") == 1 and "metadata_password_file" in proc.stderr
