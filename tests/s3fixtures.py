"""A real S3 server for tests: a throw-away single-node Ceph cluster with radosgw (Debian 12's
Ceph 16.2 "pacific"), and boto3 clients that never wait without a bound.

Each pytest worker that needs it starts one cluster for the session (`ceph_s3`, ~2 s): one
monitor, one OSD on memstore (objects in RAM), no manager, radosgw on a free port on
127.0.0.1, `auth none`, pools of size 1, all in a temp folder, every daemon a child process in
the foreground that dies with its parent (PR_SET_PDEATHSIG). Each test gets a fresh bucket
(`s3_bucket`), emptied and deleted afterwards so that memstore's RAM is given back. The
daemons' logs are in `CephS3.base / "log"`. What each ceph.conf setting is for, the start times
and the reliability loop's results: docs/DEPLOY-SCALEOUT.md.

A full memstore makes writes wait rather than fail, and a stopped radosgw accepts connections
it never answers: every client made here has connect and read timeouts and bounded retries.

Also a command line:
    .venv/bin/python tests/s3fixtures.py up          # prints endpoint and keys; Ctrl-C ends it
    .venv/bin/python tests/s3fixtures.py cycle 20    # start, use, stop 20 times; reports each
"""

from __future__ import annotations

import ctypes
import datetime
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest
from botocore.config import Config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

if TYPE_CHECKING:
    # Types only, from boto3-stubs[s3] (the test extra).
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

CEPH_PROGRAMS = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph")
TIMEOUT = 60.0  # seconds for any single step of bringing the cluster up or down
# The size memstore reports. RAM is taken only for what is stored, but about twice that (a
# 512 MiB memstore went full at 676 MiB of 4 MiB objects, the OSD then at 1.4 GiB RSS): 2 GiB
# lets a test store over 2 GiB, and two pytest workers still fit in the machine's RAM.
MEMSTORE_BYTES = int(os.environ.get("STRONGROOM_TEST_MEMSTORE_BYTES", 2 << 30))
REGION = "us-east-1"


class CephError(RuntimeError):
    """The fixture could not set up, start or stop the Ceph cluster (the message says why)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    """PR_SET_PDEATHSIG: no daemon outlives a killed pytest. The signal comes when the thread
    that started the daemon ends, so start clusters from the main thread (pytest's fixtures
    run there, xdist's workers too)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)


def client_config(
    *, connect_timeout: float = 5, read_timeout: float = 30, attempts: int = 3
) -> Config:
    """botocore settings for radosgw: timeouts on every call, bounded retries, path-style
    addressing (no wildcard DNS on loopback), and checksums only where S3 requires them: over
    HTTPS, botocore ≥ 1.36 by default sends bodies as aws-chunked with a CRC trailer, which
    Ceph 16's radosgw refuses with MissingContentLength (tests/test_infra_s3.py shows it)."""
    return Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        # total_max_attempts counts the first try; botocore's "max_attempts" would not.
        retries={"total_max_attempts": attempts, "mode": "standard"},
        s3={"addressing_style": "path"},
        signature_version="s3v4",
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=16,
    )


class CephS3:
    """A single-node Ceph cluster with radosgw: start, stop, S3 users, clients, buckets."""

    def __init__(self, base: Path | None = None, *, memstore_bytes: int = MEMSTORE_BYTES) -> None:
        missing = [p for p in CEPH_PROGRAMS if shutil.which(p) is None]
        if missing:
            raise CephError(
                f"Ceph is not installed ({', '.join(missing)} missing): run ./scripts/test.sh "
                "as root, or apt-get install ceph-mon ceph-osd radosgw ceph-common"
            )
        self.base = Path(tempfile.mkdtemp(prefix="strongroom-ceph-", dir=base))
        self.conf = self.base / "ceph.conf"
        self.logdir = self.base / "log"
        self.memstore_bytes = memstore_bytes
        self.fsid = str(uuid.uuid4())
        self.mon_port = 0
        self.rgw_port = 0
        self.rgw_tls_port = 0
        self.ca_file = self.base / "rgw-cert.pem"  # radosgw's self-signed certificate
        self.access_key = ""
        self.secret_key = ""
        self.region = REGION
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.timings: dict[str, float] = {}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.rgw_port}"

    @property
    def https_endpoint(self) -> str:
        """The same radosgw over TLS (verify with `ca_file`), as production runs it."""
        return f"https://127.0.0.1:{self.rgw_tls_port}"

    # -- configuration -------------------------------------------------------------------------

    def _write_conf(self) -> None:
        b = self.base
        self.conf.write_text(
            f"""[global]
fsid = {self.fsid}
mon host = v2:127.0.0.1:{self.mon_port}
public addr = 127.0.0.1
ms bind msgr1 = false
ms mon client mode = crc
auth cluster required = none
auth service required = none
auth client required = none
run dir = {b}/run
admin socket = {b}/run/$name.$pid.asok
log file = {b}/log/$name.log
log to stderr = false
err to stderr = true
chdir = ""
mon data = {b}/mon
mon allow pool size one = true
mon allow pool delete = true
mon data avail warn = 0
mon data avail crit = 0
mon max pg per osd = 1000
mon warn on pool no redundancy = false
paxos propose interval = 0.01
paxos min wait = 0.01
osd data = {b}/osd
osd objectstore = memstore
memstore device bytes = {self.memstore_bytes}
osd crush update on start = false
osd crush chooseleaf type = 0
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
# radosgw watches its control objects; after a SIGKILL the OSD keeps the dead watch until it
# times out, and every metadata write (bucket create/delete, users) waits for it: 30 s by
# default. Clients ping their watches every objecter tick, so that must stay well below.
osd client watch timeout = 5
objecter tick interval = 1

[client.rgw.s3]
rgw frontends = beast endpoint=127.0.0.1:{self.rgw_port} \
    ssl_endpoint=127.0.0.1:{self.rgw_tls_port} ssl_certificate={self.base}/rgw-tls.pem
rgw thread pool size = 64
rgw init timeout = {int(TIMEOUT)}
rgw gc obj min wait = 10
rgw gc processor period = 10
rgw enable usage log = false
"""
        )

    def _write_tls(self) -> None:
        """A self-signed certificate for 127.0.0.1 (radosgw wants certificate and key in one
        PEM file); clients trust it through `ca_file`."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.ca_file.write_bytes(cert_pem)
        tls = self.base / "rgw-tls.pem"
        tls.write_bytes(cert_pem + key_pem)
        tls.chmod(0o600)

    # -- running Ceph's programs ---------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "HOME": str(self.base),
            "CEPH_CONF": str(self.conf),
        }

    def _run(self, *args: str, timeout: float = TIMEOUT) -> str:
        try:
            res = subprocess.run(
                list(args),
                env=self._env(),
                cwd=self.base,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise CephError(f"{' '.join(args[:3])} took more than {timeout:.0f}s") from None
        if res.returncode != 0:
            raise CephError(
                f"{' '.join(args[:3])} failed ({res.returncode}): "
                f"{(res.stderr or res.stdout).strip()[-2000:]}"
            )
        return res.stdout

    def ceph(self, *args: str) -> str:
        """The `ceph` command line against this cluster (JSON output where asked for)."""
        return self._run("ceph", "--connect-timeout", "10", *args)

    def _spawn(self, name: str, *args: str) -> None:
        with open(self.logdir / f"{name}.stderr", "ab") as err:
            self.procs[name] = subprocess.Popen(
                [*args, "-f"],  # foreground: a child we can wait for and kill by its pid
                env=self._env(),
                cwd=self.base,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,  # Ctrl-C on pytest must not kill it before teardown
                preexec_fn=_die_with_parent,
            )

    def _check_alive(self, name: str) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is not None:
            raise CephError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 20) -> str:
        out = []
        for path in sorted(self.logdir.glob(f"*{name.split('-')[-1]}*")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Bring the whole cluster up and create an S3 user (keys in access_key/secret_key)."""
        t0 = time.monotonic()
        for sub in ("mon", "osd", "run", "log"):
            (self.base / sub).mkdir(exist_ok=True)
        self.mon_port = free_port()
        self.rgw_port = free_port()
        self.rgw_tls_port = free_port()
        self._write_tls()
        self._write_conf()
        monmap = self.base / "monmap"
        self._run(
            "monmaptool", "--create", "--fsid", self.fsid,
            "--addv", "a", f"[v2:127.0.0.1:{self.mon_port}]", str(monmap),
        )  # fmt: skip
        self._run(
            "ceph-mon", "-i", "a", "--mkfs", "--monmap", str(monmap), "--keyring", "/dev/null"
        )
        self._spawn("ceph-mon", "ceph-mon", "-i", "a")
        # The OSD is placed in the CRUSH map by hand: with "crush update on start" it races
        # its own first boot (the measurements; see docs/DEPLOY-SCALEOUT.md).
        osd_id = self.ceph("osd", "create").strip()
        if osd_id != "0":
            raise CephError(f"a fresh cluster gave OSD id {osd_id!r}, expected 0")
        self.ceph("osd", "crush", "add", "osd.0", "1", "root=default")
        self._run("ceph-osd", "-i", "0", "--mkfs")
        self._spawn("ceph-osd", "ceph-osd", "-i", "0")
        t1 = time.monotonic()
        self.start_rgw()  # radosgw's start waits for the OSD: it creates its pools first
        t2 = time.monotonic()
        self.access_key, self.secret_key = self.create_user("strongroom")
        # The first bucket creates the index and data pools (a few OSD map epochs): pay for
        # that here rather than in whichever test comes first.
        s3 = self.client()
        s3.delete_bucket(Bucket=self.new_bucket(s3, "warm-up"))
        t3 = time.monotonic()
        self.timings = {
            "mon+osd": t1 - t0,
            "radosgw": t2 - t1,
            "user+pools": t3 - t2,
            "total": t3 - t0,
        }

    def osd_up(self) -> bool:
        dump = json.loads(self.ceph("osd", "dump", "--format=json"))
        return any(o["osd"] == 0 and o["up"] == 1 for o in dump["osds"])

    def start_rgw(self) -> None:
        """Start radosgw (again, on the same port) and wait until it answers S3 requests."""
        if self.rgw_alive():
            return
        self._spawn("radosgw", "radosgw", "-n", "client.rgw.s3")
        deadline = time.monotonic() + TIMEOUT
        while True:
            for daemon in self.procs:
                self._check_alive(daemon)
            try:
                with urllib.request.urlopen(self.endpoint, timeout=5) as resp:  # anonymous
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise CephError(
                    f"radosgw did not answer in {TIMEOUT:.0f}s:\n{self.log_tail('rgw')}"
                )
            time.sleep(0.05)

    def rgw_alive(self) -> bool:
        proc = self.procs.get("radosgw")
        return proc is not None and proc.poll() is None

    def stop_rgw(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop radosgw (SIGTERM, or SIGKILL): the S3 port then refuses connections."""
        proc = self.procs.get("radosgw")
        if proc is None or proc.poll() is not None:
            return
        self._signal(proc, sig)
        try:
            proc.wait(TIMEOUT / 4)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(TIMEOUT / 4)

    def pause_rgw(self) -> None:
        """SIGSTOP radosgw: connections are accepted by the kernel and never answered (what a
        hung object store looks like to a client). resume_rgw() lets it go on."""
        self._signal(self.procs["radosgw"], signal.SIGSTOP)

    def resume_rgw(self) -> None:
        self._signal(self.procs["radosgw"], signal.SIGCONT)

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        if proc.poll() is None:
            os.kill(proc.pid, sig)

    def destroy(self) -> None:
        """Kill every daemon (nothing here is kept: memstore would otherwise write all it holds
        to disk on a clean stop) and remove the folder."""
        try:
            for proc in self.procs.values():
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGCONT)
                    proc.kill()
            for name, proc in self.procs.items():
                try:
                    proc.wait(TIMEOUT / 4)
                except subprocess.TimeoutExpired:
                    raise CephError(f"{name} (pid {proc.pid}) survived SIGKILL") from None
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    # -- S3 ------------------------------------------------------------------------------------

    def create_user(self, uid: str) -> tuple[str, str]:
        """A new S3 user with fresh keys; returns (access key, secret key)."""
        access = "SR" + secrets.token_hex(9).upper()
        secret = secrets.token_urlsafe(30)
        self._run(
            "radosgw-admin", "-n", "client.rgw.s3", "user", "create",
            f"--uid={uid}", f"--display-name={uid}",
            f"--access-key={access}", f"--secret={secret}",
        )  # fmt: skip
        return access, secret

    def client(
        self,
        config: Config | None = None,
        *,
        tls: bool = False,
        access_key: str | None = None,
        secret_key: str | None = None,
        connect_timeout: float = 5,
        read_timeout: float = 30,
        attempts: int = 3,
    ) -> S3Client:
        """A boto3 S3 client for this radosgw, over HTTP or (tls=True) HTTPS, as the fixture's
        user unless keys are given; client_config() with the given timeouts and attempts
        unless a whole botocore config is given."""
        session = boto3.session.Session(
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=self.region,
        )
        return session.client(
            "s3",
            endpoint_url=self.https_endpoint if tls else self.endpoint,
            verify=str(self.ca_file) if tls else None,
            config=config
            or client_config(
                connect_timeout=connect_timeout, read_timeout=read_timeout, attempts=attempts
            ),
        )

    def new_bucket(self, s3: S3Client, prefix: str = "test") -> str:
        name = f"{prefix}-{secrets.token_hex(8)}"
        s3.create_bucket(Bucket=name)
        return name


def empty_bucket(s3: S3Client, bucket: str) -> int:
    """Delete every object and unfinished multipart upload in a bucket, 1000 keys per
    request (S3's limit for DeleteObjects); returns how many objects were deleted."""
    deleted = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys: list[ObjectIdentifierTypeDef] = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            res = s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            if res.get("Errors"):
                raise RuntimeError(f"delete_objects in {bucket}: {res['Errors'][:3]}")
            deleted += len(keys)
    for uploads in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
        for up in uploads.get("Uploads", []):
            s3.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
    return deleted


@dataclass
class S3Bucket:
    """A fresh bucket on the session's radosgw, with everything needed to reach it."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str
    name: str
    client: S3Client  # boto3, with client_config()'s timeouts and retries
    cluster: CephS3

    @property
    def url(self) -> str:
        """The bucket as strongroom-server's `--blobs` takes it (issue 9)."""
        return f"s3://{self.name}?endpoint={self.endpoint}&region={self.region}"

    def empty(self) -> int:
        """Delete every object in the bucket (in batches); returns how many there were."""
        return empty_bucket(self.client, self.name)


@pytest.fixture(scope="session")
def ceph_s3() -> Iterator[CephS3]:
    """This worker's Ceph cluster with radosgw, running, for the whole session."""
    try:
        cluster = CephS3()
    except CephError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def s3_bucket(ceph_s3: CephS3) -> Iterator[S3Bucket]:
    """A fresh, empty bucket for this test (radosgw is restarted first if a previous test left
    it stopped); emptied and deleted afterwards."""
    if ceph_s3.rgw_alive():
        ceph_s3.resume_rgw()
    else:
        ceph_s3.start_rgw()
    s3 = ceph_s3.client()
    name = ceph_s3.new_bucket(s3)
    yield S3Bucket(
        endpoint=ceph_s3.endpoint,
        access_key=ceph_s3.access_key,
        secret_key=ceph_s3.secret_key,
        region=ceph_s3.region,
        name=name,
        client=s3,
        cluster=ceph_s3,
    )
    if ceph_s3.rgw_alive():
        ceph_s3.resume_rgw()
    else:
        ceph_s3.start_rgw()
    empty_bucket(s3, name)
    s3.delete_bucket(Bucket=name)


# -- command line ------------------------------------------------------------------------------


def _smoke(cluster: CephS3) -> None:
    s3 = cluster.client(client_config(attempts=1))
    bucket = cluster.new_bucket(s3, "cycle")
    body = secrets.token_bytes(100_000)
    s3.put_object(Bucket=bucket, Key="k", Body=body)
    if s3.get_object(Bucket=bucket, Key="k")["Body"].read() != body:
        raise CephError("read back something else")
    empty_bucket(s3, bucket)
    s3.delete_bucket(Bucket=bucket)


def _cycle(n: int) -> int:
    failures = 0
    totals: list[float] = []
    for i in range(1, n + 1):
        t0 = time.monotonic()
        cluster = CephS3()
        try:
            cluster.start()
            _smoke(cluster)
            t1 = time.monotonic()
            totals.append(cluster.timings["total"])
            steps = ", ".join(f"{k} {v:.2f}s" for k, v in cluster.timings.items())
            status = f"ok   ({steps}; with smoke test {t1 - t0:.2f}s)"
        except Exception as e:  # the loop reports every kind of failure and goes on
            failures += 1
            status = f"FAIL {type(e).__name__}: {e}"
        finally:
            t2 = time.monotonic()
            cluster.destroy()
            status += f"; teardown {time.monotonic() - t2:.2f}s"
        print(f"cycle {i:2}/{n}: {status}", flush=True)
    if totals:
        totals.sort()
        print(
            f"{n} cycles, {failures} failed; start min {totals[0]:.2f}s, "
            f"median {totals[len(totals) // 2]:.2f}s, max {totals[-1]:.2f}s"
        )
    return 1 if failures else 0


def main(argv: list[str]) -> int:
    if argv[1:2] == ["cycle"] and len(argv) == 3 and argv[2].isdigit():
        return _cycle(int(argv[2]))
    if argv[1:] == ["up"]:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        cluster = CephS3()
        try:
            cluster.start()
            print(f"started in {cluster.timings['total']:.2f}s; logs in {cluster.logdir}")
            print(f"export AWS_ENDPOINT_URL={cluster.endpoint}")
            print(f"export AWS_ACCESS_KEY_ID={cluster.access_key}")
            print(f"export AWS_SECRET_ACCESS_KEY={cluster.secret_key}")
            print(f"export AWS_DEFAULT_REGION={cluster.region}", flush=True)
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        finally:
            cluster.destroy()
        return 0
    print("usage: s3fixtures.py up | cycle N", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
