"""Pack objects in an S3-compatible bucket (scale-out mode), through boto3 in threads.

Every call has a connect and a read timeout and a bounded number of attempts, so a hung or
unreachable object store becomes a one-line error, never a wait without end (a full Ceph
memstore, for one, makes writes hang rather than fail). Checksums are sent only where S3
requires them: Ceph 16's radosgw refuses the aws-chunked bodies newer botocore sends by
default (docs/DEPLOY-SCALEOUT.md). Objects above `multipart_threshold` are uploaded in parts,
several at once; an upload that fails is aborted. Keys are `PREFIX/packs/NAME`, PREFIX being the
user's storage ID, so each user's objects are one prefix of the shared bucket.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import parse_qs, urlsplit

from .objects import S3_PACK_TARGET, ObjectStore, ObjectStoreError, PackMissing, Part, check_name

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

MiB = 1024 * 1024
_DELETE_BATCH = 1000  # S3's limit for one DeleteObjects request
_MAX_GAP = 1 * MiB  # ranges of one pack closer than this are fetched by one GET
_MAX_RUN = 16 * MiB  # ... up to this many bytes per GET


@dataclass(frozen=True)
class S3Settings:
    bucket: str
    endpoint: str | None = None  # None: AWS itself
    region: str = "us-east-1"
    access_key: str | None = None  # None: boto3's usual sources (env, config files, roles)
    secret_key: str | None = None
    ca_file: str | None = None  # verify the endpoint's certificate with this CA bundle
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    attempts: int = 4  # counting the first
    part_size: int = 8 * MiB
    multipart_threshold: int = 16 * MiB
    upload_threads: int = 4
    pack_target: int = S3_PACK_TARGET

    @staticmethod
    def from_url(
        url: str, *, access_key: str | None = None, secret_key: str | None = None
    ) -> S3Settings:
        """`s3://BUCKET?endpoint=URL&region=R&ca_file=PATH` (credentials never in the URL)."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.hostname or parts.username or parts.password:
            raise ValueError("expected s3://BUCKET?endpoint=URL&region=REGION (no credentials)")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"endpoint", "region", "ca_file"}
        if unknown:
            raise ValueError(f"unknown s3:// option(s): {', '.join(sorted(unknown))}")
        return S3Settings(
            bucket=parts.netloc,
            endpoint=query.get("endpoint"),
            region=query.get("region", "us-east-1"),
            ca_file=query.get("ca_file"),
            access_key=access_key,
            secret_key=secret_key,
        )


class S3Bucket:
    """One boto3 client (thread-safe) and upload pool per bucket and process."""

    def __init__(self, settings: S3Settings) -> None:
        import boto3
        from botocore.config import Config

        self.settings = s = settings
        session = boto3.session.Session(
            aws_access_key_id=s.access_key, aws_secret_access_key=s.secret_key, region_name=s.region
        )
        self.client: S3Client = session.client(
            "s3",
            endpoint_url=s.endpoint,
            verify=s.ca_file if s.ca_file else None,
            config=Config(
                connect_timeout=s.connect_timeout_s,
                read_timeout=s.read_timeout_s,
                retries={"total_max_attempts": s.attempts, "mode": "standard"},
                s3={"addressing_style": "path"},
                signature_version="s3v4",
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                max_pool_connections=max(16, 2 * s.upload_threads),
            ),
        )
        self.name = s.bucket
        self.upload_pool = ThreadPoolExecutor(s.upload_threads, thread_name_prefix="s3-upload")

    def check(self) -> None:
        """Fail with one clear line unless the bucket exists and these credentials reach it."""
        with mapped(f"bucket {self.name}"):
            self.client.head_bucket(Bucket=self.name)

    def objects(self, prefix: str) -> S3Objects:
        return S3Objects(self, prefix)

    def close(self) -> None:
        self.upload_pool.shutdown(wait=True)
        self.client.close()


class S3Objects(ObjectStore):
    kind: ClassVar[Literal["local", "s3"]] = "s3"

    def __init__(self, bucket: S3Bucket, prefix: str) -> None:
        if not prefix or "/" in prefix or prefix.startswith("."):
            raise ValueError(f"not an object prefix: {prefix!r}")
        self.bucket = bucket
        self.prefix = f"{prefix}/packs/"
        self.target_pack_size = bucket.settings.pack_target

    def describe(self) -> str:
        return f"s3://{self.bucket.name}/{self.prefix}"

    def key(self, name: str) -> str:
        return self.prefix + check_name(name)

    def put(self, name: str, parts: Sequence[Part]) -> None:
        key = self.key(name)
        size = sum(len(p) for p in parts)
        s = self.bucket.settings
        with mapped(f"storing pack {name[:16]}"):
            if size <= s.multipart_threshold:
                body = b"".join(parts)
                self.bucket.client.put_object(Bucket=self.bucket.name, Key=key, Body=body)
            else:
                self._multipart(key, parts, size)

    def _multipart(self, key: str, parts: Sequence[Part], size: int) -> None:
        client, bucket = self.bucket.client, self.bucket.name
        upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        try:
            futures = []
            for number, body in enumerate(_split(parts, self.bucket.settings.part_size), 1):
                futures.append(
                    self.bucket.upload_pool.submit(
                        client.upload_part,
                        Bucket=bucket,
                        Key=key,
                        UploadId=upload,
                        PartNumber=number,
                        Body=body,
                    )
                )
            done: list[CompletedPartTypeDef] = [
                {"PartNumber": n, "ETag": f.result()["ETag"]} for n, f in enumerate(futures, 1)
            ]
            client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": done}
            )
        except BaseException:
            with contextlib.suppress(Exception):  # the original error is the one to report
                client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
            raise

    def _get(self, name: str, byte_range: str | None) -> tuple[int, bytes]:
        kwargs: dict[str, Any] = {"Bucket": self.bucket.name, "Key": self.key(name)}
        if byte_range:
            kwargs["Range"] = byte_range
        for attempt in range(2):
            with mapped(f"reading pack {name[:16]}"):
                try:
                    res = self.bucket.client.get_object(**kwargs)
                except self.bucket.client.exceptions.NoSuchKey:
                    raise PackMissing(f"pack {name[:16]} is missing") from None
                except self.bucket.client.exceptions.ClientError as exc:
                    if str(exc.response.get("Error", {}).get("Code")) != "InvalidRange":
                        raise
                    # Wholly past the end: a short object. A short read, as from a file, so
                    # the caller reports damage instead of failing on the request.
                    return 0, b""
                try:
                    body = res["Body"].read()
                except Exception:
                    # botocore retries requests, not a body cut off halfway: once more here.
                    if attempt == 1:
                        raise
                    continue
            total = _total_size(res.get("ContentRange"), len(body))
            return total, body
        raise AssertionError("unreachable")

    def read_ranges(self, name: str, ranges: Sequence[tuple[int, int]]) -> Iterator[bytes]:
        i = 0
        while i < len(ranges):
            # One GET for a run of ranges that are close together (a restore reads most of a
            # pack in order): far fewer requests than one per blob.
            start = ranges[i][0]
            end = ranges[i][0] + ranges[i][1]
            j = i + 1
            while j < len(ranges):
                off, n = ranges[j]
                if off < end or off - end > _MAX_GAP or off + n - start > _MAX_RUN:
                    break
                end = off + n
                j += 1
            if end <= start:
                yield from (b"" for _ in range(j - i))
            else:
                _size, data = self._get(name, f"bytes={start}-{end - 1}")
                for off, n in ranges[i:j]:
                    yield data[off - start : off - start + n]
            i = j

    def read_all(self, name: str) -> bytes:
        return self._get(name, None)[1]

    def tail(self, name: str, length: int) -> tuple[int, bytes]:
        if length <= 0:
            size = self.size(name)
            if size is None:
                raise PackMissing(f"pack {name[:16]} is missing")
            return size, b""
        return self._get(name, f"bytes=-{length}")

    def size(self, name: str) -> int | None:
        client = self.bucket.client
        with mapped(f"looking up pack {name[:16]}"):
            try:
                head = client.head_object(Bucket=self.bucket.name, Key=self.key(name))
            except client.exceptions.ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey"):
                    return None
                raise
        return int(head["ContentLength"])

    def _listing(self) -> Iterator[tuple[str, int]]:
        pages = self.bucket.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket.name, Prefix=self.prefix
        )
        with mapped("listing packs"):
            for page in pages:
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(self.prefix) :]
                    if _is_name(name):
                        yield name, int(obj["Size"])

    def names(self) -> Iterator[str]:
        for name, _size in self._listing():
            yield name

    def sizes(self, names: Iterable[str]) -> dict[str, int]:
        wanted = set(names)
        return {name: size for name, size in self._listing() if name in wanted}

    def delete(self, names: Iterable[str]) -> None:
        keys = [self.key(n) for n in names]
        for i in range(0, len(keys), _DELETE_BATCH):
            batch = keys[i : i + _DELETE_BATCH]
            with mapped("deleting packs"):
                res = self.bucket.client.delete_objects(
                    Bucket=self.bucket.name,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            errors = res.get("Errors", [])
            if errors:
                raise ObjectStoreError(
                    f"the object store refused to delete {len(errors)} pack(s): "
                    f"{errors[0].get('Code', '?')}"
                )

    def _uploads(self) -> Iterator[tuple[str, str]]:
        pages = self.bucket.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket.name, Prefix=self.prefix
        )
        with mapped("listing unfinished uploads"):
            for page in pages:
                for up in page.get("Uploads", []):
                    yield up["Key"], up["UploadId"]

    def partials(self) -> list[str]:
        return [
            k[len(self.prefix) :] for k, _u in self._uploads() if _is_name(k[len(self.prefix) :])
        ]

    def remove_partials(self, names: Iterable[str]) -> None:
        wanted = {self.key(n) for n in names}
        for key, upload in list(self._uploads()):
            if key in wanted:
                with mapped("abandoning an upload"):
                    self.bucket.client.abort_multipart_upload(
                        Bucket=self.bucket.name, Key=key, UploadId=upload
                    )


def _is_name(name: str) -> bool:
    try:
        check_name(name)
    except ValueError:
        return False
    return True


def _split(parts: Sequence[Part], size: int) -> Iterator[bytes]:
    """The concatenated parts in pieces of `size` bytes (the last one shorter)."""
    piece: list[Part] = []
    have = 0
    for part in parts:
        view = memoryview(part)
        while view:
            take = min(len(view), size - have)
            piece.append(view[:take])
            have += take
            view = view[take:]
            if have == size:
                yield b"".join(piece)
                piece, have = [], 0
    if piece:
        yield b"".join(piece)


def _total_size(content_range: str | None, fallback: int) -> int:
    # "bytes 100-199/1234": the object's size is after the slash.
    if content_range and "/" in content_range:
        tail = content_range.rsplit("/", 1)[1]
        if tail.isdigit():
            return int(tail)
    return fallback


@contextlib.contextmanager
def mapped(what: str) -> Iterator[None]:
    """botocore's errors as one line saying what failed; never a key or a signature."""
    from botocore import exceptions as bx

    try:
        yield
    except bx.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", "?"))
        raise ObjectStoreError(f"object store: {what} failed: {code}") from exc
    except (bx.BotoCoreError, OSError) as exc:
        raise ObjectStoreError(
            f"object store unreachable while {what}: {type(exc).__name__}"
        ) from exc
