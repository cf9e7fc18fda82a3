"""The S3 test fixtures are real and usable: boto3 against Ceph's radosgw on a throw-away
single-node cluster (tests/s3fixtures.py), including the failures later storage tests rely on:
a stopped radosgw and a hung one give a clear exception within a bounded time."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import botocore.exceptions
import pytest
from botocore.config import Config

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

    from s3fixtures import CephS3, S3Bucket

# The fixtures ceph_s3 and s3_bucket. Nothing else imports s3fixtures before pytest does,
# so that pytest can rewrite its asserts.
pytest_plugins = ["s3fixtures"]
pytestmark = pytest.mark.timeout(180)

MiB = 1 << 20


def error_code(e: botocore.exceptions.ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def test_put_get_list_delete(s3_bucket: S3Bucket) -> None:
    s3, b = s3_bucket.client, s3_bucket.name
    blobs = {f"packs/{i:02x}/{i:064x}": os.urandom(1000 + i) for i in range(12)}
    blobs["locks/node-1"] = b""
    for key, body in blobs.items():
        s3.put_object(Bucket=b, Key=key, Body=body)
    for key, body in blobs.items():
        assert s3.get_object(Bucket=b, Key=key)["Body"].read() == body
    # A ranged read, as a restore of one blob out of a pack does.
    key = next(iter(blobs))
    part = s3.get_object(Bucket=b, Key=key, Range="bytes=100-199")["Body"].read()
    assert part == blobs[key][100:200]
    head = s3.head_object(Bucket=b, Key=key)
    assert head["ContentLength"] == len(blobs[key])

    # Listing: by prefix, in pages, and with a delimiter.
    listed = s3.list_objects_v2(Bucket=b, Prefix="packs/")
    assert sorted(o["Key"] for o in listed["Contents"]) == sorted(k for k in blobs if "packs/" in k)
    pages = list(
        s3.get_paginator("list_objects_v2").paginate(Bucket=b, PaginationConfig={"PageSize": 5})
    )
    assert len(pages) == 3 and sum(p["KeyCount"] for p in pages) == len(blobs)
    top = s3.list_objects_v2(Bucket=b, Delimiter="/")
    assert sorted(p["Prefix"] for p in top["CommonPrefixes"]) == ["locks/", "packs/"]

    # Overwrite, delete, and what a missing object looks like.
    s3.put_object(Bucket=b, Key="locks/node-1", Body=b"taken")
    assert s3.get_object(Bucket=b, Key="locks/node-1")["Body"].read() == b"taken"
    s3.delete_object(Bucket=b, Key="locks/node-1")
    with pytest.raises(botocore.exceptions.ClientError) as missing:
        s3.get_object(Bucket=b, Key="locks/node-1")
    assert error_code(missing.value) == "NoSuchKey"
    with pytest.raises(botocore.exceptions.ClientError) as missing_head:
        s3.head_object(Bucket=b, Key="locks/node-1")
    assert missing_head.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_multipart_upload_of_40_mib(s3_bucket: S3Bucket) -> None:
    s3, b = s3_bucket.client, s3_bucket.name
    data = os.urandom(40 * MiB)
    # By hand, as a pack writer streaming its parts would: 8 MiB parts (S3's minimum is 5).
    up = s3.create_multipart_upload(Bucket=b, Key="pack-a")
    parts: list[CompletedPartTypeDef] = []
    for n, off in enumerate(range(0, len(data), 8 * MiB), start=1):
        res = s3.upload_part(
            Bucket=b, Key="pack-a", UploadId=up["UploadId"], PartNumber=n,
            Body=data[off : off + 8 * MiB],
        )  # fmt: skip
        parts.append({"PartNumber": n, "ETag": res["ETag"]})
    listed = s3.list_multipart_uploads(Bucket=b)
    assert [u["Key"] for u in listed.get("Uploads", [])] == ["pack-a"]
    s3.complete_multipart_upload(
        Bucket=b, Key="pack-a", UploadId=up["UploadId"], MultipartUpload={"Parts": parts}
    )
    assert s3.head_object(Bucket=b, Key="pack-a")["ETag"].endswith('-5"')
    got = s3.get_object(Bucket=b, Key="pack-a")["Body"].read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    tail = s3.get_object(Bucket=b, Key="pack-a", Range=f"bytes={len(data) - 4096}-")
    assert tail["Body"].read() == data[-4096:]  # a trailer index is read like this

    # And through boto3's transfer manager (threads, parts of its own choosing).
    s3.upload_fileobj(io.BytesIO(data), b, "pack-b")
    out = io.BytesIO()
    s3.download_fileobj(b, "pack-b", out)
    assert out.getvalue() == data

    # An aborted upload leaves nothing behind.
    up = s3.create_multipart_upload(Bucket=b, Key="pack-c")
    s3.upload_part(Bucket=b, Key="pack-c", UploadId=up["UploadId"], PartNumber=1, Body=b"x" * MiB)
    s3.abort_multipart_upload(Bucket=b, Key="pack-c", UploadId=up["UploadId"])
    assert not s3.list_multipart_uploads(Bucket=b).get("Uploads")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=b)["Contents"]]
    assert keys == ["pack-a", "pack-b"]


def test_delete_in_batches(s3_bucket: S3Bucket) -> None:
    s3, b = s3_bucket.client, s3_bucket.name
    keys = [f"obj/{i:05d}" for i in range(1100)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=b, Key=k, Body=k.encode()), keys))
    pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket=b))
    assert [p["KeyCount"] for p in pages] == [1000, 100]

    # S3 deletes at most 1000 keys a request; radosgw enforces it.
    with pytest.raises(botocore.exceptions.ClientError):
        s3.delete_objects(Bucket=b, Delete={"Objects": [{"Key": k} for k in keys[:1001]]})

    # A batch reports per key; deleting a key that is not there is no error in S3.
    res = s3.delete_objects(
        Bucket=b, Delete={"Objects": [{"Key": k} for k in [*keys[:10], "obj/missing"]]}
    )
    assert len(res["Deleted"]) == 11 and not res.get("Errors")
    assert s3_bucket.empty() == 1090
    assert s3.list_objects_v2(Bucket=b)["KeyCount"] == 0


def test_users_are_isolated_and_keys_checked(ceph_s3: CephS3, s3_bucket: S3Bucket) -> None:
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="secret", Body=b"mine")
    access, secret = ceph_s3.create_user(f"other-{os.getpid()}-{time.monotonic_ns()}")
    other = ceph_s3.client(access_key=access, secret_key=secret)
    with pytest.raises(botocore.exceptions.ClientError) as denied:
        other.get_object(Bucket=s3_bucket.name, Key="secret")
    assert error_code(denied.value) == "AccessDenied"
    forged = ceph_s3.client(secret_key="not-the-secret")
    with pytest.raises(botocore.exceptions.ClientError) as bad:
        forged.get_object(Bucket=s3_bucket.name, Key="secret")
    assert error_code(bad.value) == "SignatureDoesNotMatch"


def test_https_endpoint_and_why_checksums_are_only_sent_when_required(
    ceph_s3: CephS3, s3_bucket: S3Bucket
) -> None:
    s3 = ceph_s3.client(tls=True)
    s3.put_object(Bucket=s3_bucket.name, Key="over-tls", Body=b"x" * 1000)
    s3.upload_fileobj(io.BytesIO(os.urandom(12 * MiB)), s3_bucket.name, "big-over-tls")
    assert s3.get_object(Bucket=s3_bucket.name, Key="over-tls")["Body"].read() == b"x" * 1000

    # botocore's defaults (CRC trailers in aws-chunked bodies over HTTPS) do not work against
    # Ceph 16: the server's S3 client must set request_checksum_calculation="when_required".
    # If this starts to pass, Ceph or botocore changed: revisit client_config().
    defaults = ceph_s3.client(
        Config(s3={"addressing_style": "path"}, connect_timeout=5, read_timeout=30), tls=True
    )
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        defaults.put_object(Bucket=s3_bucket.name, Key="default-checksums", Body=b"x")
    assert error_code(refused.value) == "MissingContentLength"


def test_stopped_radosgw_is_a_clear_error_not_a_hang(ceph_s3: CephS3, s3_bucket: S3Bucket) -> None:
    s3 = ceph_s3.client(connect_timeout=2, read_timeout=3, attempts=2)
    s3.put_object(Bucket=s3_bucket.name, Key="before", Body=b"kept")
    ceph_s3.stop_rgw(signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(botocore.exceptions.EndpointConnectionError, match="Could not connect"):
        s3.get_object(Bucket=s3_bucket.name, Key="before")
    assert time.monotonic() - t0 < 10
    ceph_s3.start_rgw()
    assert s3.get_object(Bucket=s3_bucket.name, Key="before")["Body"].read() == b"kept"


def test_hung_radosgw_times_out(ceph_s3: CephS3, s3_bucket: S3Bucket) -> None:
    """A radosgw that accepts connections and never answers (SIGSTOP): the read timeout ends
    each attempt, and the bounded retries end the call."""
    s3 = ceph_s3.client(connect_timeout=2, read_timeout=1, attempts=2)
    s3.put_object(Bucket=s3_bucket.name, Key="before", Body=b"x")
    ceph_s3.pause_rgw()
    try:
        # attempts x read timeout (the kernel still accepts the connections)
        t0 = time.monotonic()
        with pytest.raises(botocore.exceptions.ReadTimeoutError):
            s3.get_object(Bucket=s3_bucket.name, Key="before")
        elapsed = time.monotonic() - t0
        assert 1.9 <= elapsed < 8, elapsed
        # An upload also waits up to 1 s per attempt for "100 Continue" before its body.
        t0 = time.monotonic()
        with pytest.raises(botocore.exceptions.ReadTimeoutError):
            s3.put_object(Bucket=s3_bucket.name, Key="during", Body=b"x" * 1000)
        elapsed = time.monotonic() - t0
        assert 1.9 <= elapsed < 10, elapsed
    finally:
        ceph_s3.resume_rgw()
    s3.put_object(Bucket=s3_bucket.name, Key="after", Body=b"y")
    assert s3.get_object(Bucket=s3_bucket.name, Key="after")["Body"].read() == b"y"


def test_bucket_url_and_fresh_bucket(s3_bucket: S3Bucket) -> None:
    assert s3_bucket.url == (
        f"s3://{s3_bucket.name}?endpoint=http://127.0.0.1:{s3_bucket.cluster.rgw_port}"
        f"&region={s3_bucket.region}"
    )
    assert s3_bucket.client.list_objects_v2(Bucket=s3_bucket.name)["KeyCount"] == 0
