"""Padmé padding of stored blobs and snapshot records (issue 8, finding 8): what the server
stores has one of few lengths, the padding costs at most 12 %, malformed padding is an
IntegrityError, and what older versions wrote still reads."""

from __future__ import annotations

import json
import os
import sqlite3
import struct
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import Cli
from strongroom import crypto, snapshot
from strongroom.blobs import MAX_BLOB_SIZE, OVERHEAD, BlobCodec, stored_size
from strongroom.errors import IntegrityError
from strongroom.keys import RepoKeys
from strongroom.padding import MAX_OVERHEAD, is_padme, padme
from strongroom.store import SnapshotRow

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = RepoKeys.generate()
CODEC = BlobCodec(KEYS.aead(), KEYS.hasher())
HEADER = struct.Struct("<BI")

# ---- Padmé ---------------------------------------------------------------------------------


def test_padme_known_values() -> None:
    # E = floor(log2 L), S = floor(log2 E) + 1, L rounded up to a multiple of 2**(E - S)
    assert [padme(n) for n in range(8)] == list(range(8))
    assert [padme(n) for n in (8, 9, 10, 11, 15, 16, 17)] == [8, 10, 10, 12, 16, 16, 18]
    assert padme(129) == 144  # the worst case: E = 7, S = 3, multiples of 16
    assert padme(1000) == 1024
    assert padme(1 << 20) == 1 << 20
    assert padme((1 << 20) + 1) == (1 << 20) + (1 << 15)
    assert padme(100_000) == 100_352
    with pytest.raises(ValueError):
        padme(-1)


def test_padme_overhead_is_below_twelve_percent_up_to_a_million() -> None:
    worst = max((padme(n) - n) / n for n in range(1, 1 << 20))
    assert worst == pytest.approx(15 / 129)
    assert worst <= MAX_OVERHEAD


lengths = st.integers(1, 1 << 40)


@FAST
@given(lengths)
@example(129)
@example((1 << 24) + 1)
def test_padme_properties(n: int) -> None:
    p = padme(n)
    assert n <= p <= n * (1 + MAX_OVERHEAD)
    assert padme(p) == p and is_padme(p)  # idempotent
    assert padme(n - 1) <= p  # monotonic
    e = n.bit_length() - 1
    assert p % (1 << (e - e.bit_length())) == 0


@pytest.mark.parametrize("e", [4, 10, 17, 20, 22, 24])
def test_padme_leaves_few_lengths_per_power_of_two(e: int) -> None:
    """Between 2**E and 2**(E+1) only 2**S lengths are possible: O(log log L) bits leak."""
    s = e.bit_length()
    step = 1 << (e - s)
    possible = {padme(n) for n in range(1 << e, (1 << (e + 1)) - step + 1, step)}
    possible |= {padme((1 << e) + 1), padme((1 << (e + 1)) - 1)}
    assert len(possible) <= (1 << s) + 1
    assert all(is_padme(p) for p in possible)


# ---- blobs ---------------------------------------------------------------------------------


def _body(stored: bytes, blob_id: bytes) -> bytes:
    return crypto.unseal(KEYS.aead(), stored, blob_id, "test")


def _seal(body: bytes, blob_id: bytes) -> bytes:
    """A stored blob built by hand: what only someone holding the data key could upload."""
    return crypto.seal(KEYS.aead(), body, blob_id)


def _padded(flag: int, payload: bytes, pad: int, declared: int | None = None) -> bytes:
    return HEADER.pack(flag, pad if declared is None else declared) + payload + bytes(pad)


payloads = st.one_of(
    st.binary(max_size=6000),
    st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=30), st.integers(1, 800)),
    st.integers(0, 300_000).map(os.urandom),
)


@FAST
@given(payloads)
@example(b"")
@example(bytes(1 << 20))
@example(os.urandom((1 << 20) - OVERHEAD))  # exactly a power of two once stored
def test_blob_round_trip_and_padded_length(plain: bytes) -> None:
    blob_id = CODEC.hash(plain)
    stored = CODEC.encode(blob_id, plain)
    assert CODEC.decode(blob_id, stored) == plain
    assert CODEC.decode(blob_id, memoryview(stored)) == plain
    assert is_padme(len(stored))
    body = _body(stored, blob_id)
    flag, pad = HEADER.unpack_from(body)
    assert flag in (2, 3)
    assert body[len(body) - pad :] == bytes(pad)
    payload = body[HEADER.size : len(body) - pad]
    if flag == 2:
        assert payload == plain
    else:
        assert zstandard.ZstdDecompressor().decompress(payload) == plain
    # The padding costs at most 12 % over the unpadded form of the same payload ...
    assert len(stored) <= (OVERHEAD + len(payload)) * (1 + MAX_OVERHEAD)
    assert len(stored) == stored_size(len(payload))
    # ... and a blob is never stored larger than its raw padded form.
    assert len(stored) <= stored_size(len(plain))


def test_random_data_is_stored_raw_with_padding() -> None:
    plain = os.urandom(100_000)
    blob_id = CODEC.hash(plain)
    stored = CODEC.encode(blob_id, plain)
    assert len(stored) == padme(100_000 + OVERHEAD) == 100_352
    assert _body(stored, blob_id)[0] == 2
    assert plain[:64] not in stored


def test_compressible_data_is_compressed_and_padded() -> None:
    plain = b"kernel source " * 20_000
    blob_id = CODEC.hash(plain)
    stored = CODEC.encode(blob_id, plain)
    assert _body(stored, blob_id)[0] == 3
    assert is_padme(len(stored)) and len(stored) < len(plain) // 50


def test_compression_is_skipped_when_it_does_not_shrink_the_stored_blob() -> None:
    """Slightly compressible data whose zstd frame pads to the same length is stored raw."""
    noise = os.urandom(60_000)
    skipped = 0
    for zeros in range(0, 6000, 100):
        plain = noise + bytes(zeros)
        frame = zstandard.ZstdCompressor(level=1).compress(plain)
        blob_id = CODEC.hash(plain)
        flag = _body(CODEC.encode(blob_id, plain), blob_id)[0]
        assert flag == (3 if stored_size(len(frame)) < stored_size(len(plain)) else 2)
        skipped += flag == 2 and len(frame) < len(plain)
    assert skipped > 0, "no case where zstd saved bytes but not stored bytes"


@FAST
@given(payloads, st.data())
def test_any_flipped_byte_of_a_padded_blob_is_detected(plain: bytes, data: st.DataObject) -> None:
    blob_id = CODEC.hash(plain)
    stored = bytearray(CODEC.encode(blob_id, plain))
    # the padding sits at the end: flip there as often as anywhere else
    n = len(stored)
    pos = data.draw(st.integers(0, n - 1) | st.integers(max(0, n - 40), n - 1))
    stored[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises(IntegrityError):
        CODEC.decode(blob_id, bytes(stored))


@FAST
@given(payloads, st.data())
def test_truncated_or_extended_padded_blob_is_detected(plain: bytes, data: st.DataObject) -> None:
    blob_id = CODEC.hash(plain)
    stored = CODEC.encode(blob_id, plain)
    with pytest.raises(IntegrityError):
        CODEC.decode(blob_id, stored[: data.draw(st.integers(0, len(stored) - 1))])
    with pytest.raises(IntegrityError):
        CODEC.decode(blob_id, stored + bytes(data.draw(st.integers(1, 64))))


PLAIN = b"the content of a small file\n" * 3
FRAME = zstandard.ZstdCompressor(level=1).compress(PLAIN * 20)


@pytest.mark.parametrize(
    "body",
    [
        b"\x02",  # header cut short
        b"\x03\x00\x00",
        b"\x02\x00\x00\x00",
        _padded(2, PLAIN, 0, declared=len(PLAIN) + 1),  # more padding than the body holds
        _padded(2, PLAIN, 4, declared=len(PLAIN) + 5),
        _padded(2, PLAIN, 4, declared=0xFFFFFFFF),
        _padded(3, FRAME, 8, declared=len(FRAME) + 9),
        _padded(2, PLAIN, 8, declared=4),  # less padding declared: zeros left in the payload
        _padded(2, PLAIN, 0, declared=3),  # padding eats into the payload
        _padded(3, FRAME, 0, declared=2),  # ... or into the zstd frame
        _padded(3, FRAME[:-3], 3),  # padding where the frame should end
        _padded(3, b"", 8),  # nothing to decompress
        _padded(3, PLAIN, 2),  # flag says zstd, payload is raw
        HEADER.pack(2, 4) + PLAIN + b"\x00\x00\x01\x00",  # padding that is not zeros
        HEADER.pack(3, 1) + FRAME + b" ",
        HEADER.pack(3, 0) + FRAME + b"\x00",  # bytes after the frame that are not padding
        _padded(3, FRAME + FRAME, 4),  # two frames
        _padded(4, PLAIN, 2),  # unknown encodings
        _padded(0xFF, PLAIN, 0),
        b"",
    ],
)
def test_malformed_padding_is_an_integrity_error(body: bytes) -> None:
    for blob_id in (CODEC.hash(PLAIN), CODEC.hash(PLAIN * 20)):
        with pytest.raises(IntegrityError):
            CODEC.decode(blob_id, _seal(body, blob_id))


@FAST
@given(
    st.sampled_from([2, 3]),
    st.binary(max_size=200) | st.just(FRAME),
    st.integers(0, 300),
    st.integers(0, 2**32 - 1) | st.integers(0, 400),
    st.binary(max_size=4),
)
def test_any_padded_body_decodes_correctly_or_is_an_integrity_error(
    flag: int, payload: bytes, pad: int, declared: int, tail: bytes
) -> None:
    """Whatever a key holder seals, decoding returns the ID's plaintext or IntegrityError."""
    body = HEADER.pack(flag, declared) + payload + bytes(pad) + tail
    for blob_id in (CODEC.hash(payload), CODEC.hash(PLAIN * 20), CODEC.hash(b"")):
        try:
            plain = CODEC.decode(blob_id, _seal(body, blob_id))
        except IntegrityError:
            continue
        assert CODEC.hash(plain) == blob_id
        assert declared == pad + len(tail) and not any(tail)


def test_decompression_bombs_in_padded_blobs_are_refused() -> None:
    plain = bytes(MAX_BLOB_SIZE + 1)
    blob_id = CODEC.hash(plain)
    for frame in (
        zstandard.ZstdCompressor(level=1).compress(plain),
        zstandard.ZstdCompressor(level=1, write_content_size=False).compress(plain),
        struct.pack("<IBQ", 0xFD2FB528, 0xE0, 2**62) + b"\x01\x00\x00",
    ):
        with pytest.raises(IntegrityError):
            CODEC.decode(blob_id, _seal(_padded(3, frame, 5), blob_id))


def test_largest_allowed_blob_still_decodes_padded() -> None:
    plain = os.urandom(MAX_BLOB_SIZE)
    blob_id = CODEC.hash(plain)
    stored = CODEC.encode(blob_id, plain)
    assert is_padme(len(stored)) and len(stored) > MAX_BLOB_SIZE
    assert CODEC.decode(blob_id, stored) == plain


# What strongroom 0.1 (before padding) wrote, under fixed keys: flag 0 (raw), flag 1 (zstd).
OLD_KEYS = RepoKeys(bytes(range(32)), bytes(range(32, 64)), 1)
OLD_BLOBS = [
    (
        b"written by strongroom 0.1",
        "e281e1fb59c8f8bf4ee99aa2ad77bb9db79385c29b619cce815f745664b64669",
        "7e20d50514ac715478688eff10313dc7e7838a83550ae716b5a61b1edb204c8f"
        "b4cf8ca945fdb5794a8e94f939fde99058bb64e3c80e",
    ),
    (
        b"compressible " * 40,
        "3f783c9d0b5ade06574d1e9175ab62a1958d087c99097abc3d44d63263bfeabf",
        "27602c0038a467c992361f81e60a4832a57f63e8f98e9f6efb23a3efe89c074a"
        "684cc908c60c318950327975b03e2c75c80c8590b379b696a76052",
    ),
]


@pytest.mark.parametrize(("plain", "blob_id", "stored"), OLD_BLOBS)
def test_blobs_written_before_padding_still_decode(plain: bytes, blob_id: str, stored: str) -> None:
    codec = BlobCodec(OLD_KEYS.aead(), OLD_KEYS.hasher())
    body = crypto.unseal(OLD_KEYS.aead(), bytes.fromhex(stored), bytes.fromhex(blob_id), "old")
    assert body[0] == (0 if plain.startswith(b"written") else 1)
    assert codec.decode(bytes.fromhex(blob_id), bytes.fromhex(stored)) == plain


@FAST
@given(payloads)
def test_unpadded_flag_0_and_1_bodies_still_decode(plain: bytes) -> None:
    blob_id = CODEC.hash(plain)
    assert CODEC.decode(blob_id, _seal(b"\x00" + plain, blob_id)) == plain
    frame = zstandard.ZstdCompressor(level=1).compress(plain)
    assert CODEC.decode(blob_id, _seal(b"\x01" + frame, blob_id)) == plain


# ---- snapshot records ----------------------------------------------------------------------

snap_ids = st.binary(min_size=16, max_size=16).map(bytes.hex)
texts = st.text(max_size=300)
records = st.builds(
    snapshot.Snapshot,
    id=snap_ids,
    time_ns=st.integers(0, 2**63),
    host=texts,
    username=texts,
    paths=st.lists(texts, max_size=8),
    tree=st.binary(min_size=32, max_size=32).map(bytes.hex),
    parent=st.none() | snap_ids,
    tags=st.lists(st.text(max_size=8), max_size=3),
    excludes=st.lists(texts, max_size=5),
    stats=st.dictionaries(st.text(max_size=8), st.integers(0, 2**64), max_size=8),
)


@FAST
@given(records)
def test_record_round_trip_and_padded_length(snap: snapshot.Snapshot) -> None:
    sealed = snapshot.seal_snapshot(KEYS.aead(), snap)
    assert snapshot.open_snapshot(KEYS.aead(), SnapshotRow(snap.id, snap.time_ns, sealed)) == snap
    assert is_padme(len(sealed)) and len(sealed) >= snapshot.RECORD_MIN_SIZE
    raw = crypto.unseal(KEYS.aead(), sealed, b"strongroom v1 snapshot " + snap.id.encode(), "t")
    unpadded = raw.rstrip(b" ")
    assert raw[len(unpadded) :] == b" " * (len(raw) - len(unpadded))
    assert json.loads(unpadded) == json.loads(raw)
    real = len(unpadded) + crypto.NONCE_SIZE + crypto.TAG_SIZE
    assert len(sealed) <= max(snapshot.RECORD_MIN_SIZE, real * (1 + MAX_OVERHEAD))


def test_typical_records_all_have_the_same_length() -> None:
    """Host, user, paths and stats of ordinary backups do not show in the record's length."""
    lengths = set()
    for host, user, paths in [
        ("h", "u", ["/x"]),
        ("build-server-01.example.org", "annabelle", ["/home/annabelle/Documents", "/srv/www"]),
    ]:
        snap = snapshot.Snapshot(
            snapshot.new_snapshot_id(), 2**62, host, user, paths, "ab" * 32,
            snapshot.new_snapshot_id(), ["daily"], ["**/node_modules", "*.o"],
            {k: 2**40 for k in ("added", "modified", "removed", "unchanged", "files", "dirs",
                                 "bytes_scanned", "bytes_uploaded")},
        )  # fmt: skip
        lengths.add(len(snapshot.seal_snapshot(KEYS.aead(), snap)))
    assert lengths == {snapshot.RECORD_MIN_SIZE}


OLD_RECORD = (
    "564ad71b5d6c10079a4ecf5d53fd29ea1cea52055e565cc57fc43a7487d9f6ab239e24b94ffb55f0ea9a167b04"
    "09139012ca8dbe30096e6f741e15ac533bb5aecc24fa50a2e93abde4f3e5bd4905c26feb5b7213ada4c4776369"
    "fee85d6e320f514cad8fab533ca99635ef87cf54499563cfa8dbc6e53d9bb97fbf152ef7a1d00d35dc6ddaa1d4"
    "29287bc34a5b146b063d16509f23b2e71f67fcd9fb186f38b177ac582d57538376eb3909043baad7dfcaa070ce"
    "3a80cd4ee3e6b1293af721dd69de7ffa52393feb61670195d3bcea4a17ff9f35105418770375927e172d8acd1a"
    "3de3213f0fa225417272bac50732aacea2a71402c2f19b74960627311fa25f803e1a3005508c29651d3f707908"
    "1df0e3e4a736f46f281972f8008af1f30a203d7f17bd61"
)


def test_records_written_before_padding_still_open() -> None:
    snap_id = "0123456789abcdef0123456789abcdef"
    row = SnapshotRow(snap_id, 1700000000000000000, bytes.fromhex(OLD_RECORD))
    assert not is_padme(len(row.record))
    snap = snapshot.open_snapshot(OLD_KEYS.aead(), row)
    assert snap == snapshot.Snapshot(
        snap_id, 1700000000000000000, "host", "ann", ["/home/ann"], "ab" * 32, None, ["t"], [],
        {"files": 3},
    )  # fmt: skip


@pytest.mark.parametrize("garbage", [b" x", b"\x00", b" {}", b"\n\t\r \x0b"])
def test_record_with_garbage_after_the_json_is_refused(garbage: bytes) -> None:
    snap = snapshot.Snapshot(snapshot.new_snapshot_id(), 1, "h", "u", ["/p"], "00" * 32)
    raw = json.dumps(dict(snap.to_json(), v=1)).encode() + garbage
    record = crypto.seal(KEYS.aead(), raw, b"strongroom v1 snapshot " + snap.id.encode())
    with pytest.raises(IntegrityError):
        snapshot.open_snapshot(KEYS.aead(), SnapshotRow(snap.id, 1, record))


# ---- a real backup ---------------------------------------------------------------------------


def test_every_blob_and_record_of_a_backup_has_a_padme_length(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(40):
        folder = src / f"d{i % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"small{i}.txt").write_bytes(b"line %d\n" % i * (i * 37 + 1))
        (folder / f"random{i}.bin").write_bytes(os.urandom(1000 * i + 1))
    (src / "large.bin").write_bytes(os.urandom(700_000))  # one chunk, stored raw
    (src / "large.txt").write_bytes(b"compressible text\n" * 40_000)
    cli.backup(src)
    db = sqlite3.connect(cli.repo / "index.sqlite")
    try:
        lengths = [n for (n,) in db.execute("SELECT length FROM blobs")]
        records = [len(r) for (r,) in db.execute("SELECT record FROM snapshots")]
    finally:
        db.close()
    assert len(lengths) > 8 and len(records) == 1
    assert all(is_padme(n) for n in lengths), sorted(n for n in lengths if not is_padme(n))
    assert all(is_padme(n) and n >= snapshot.RECORD_MIN_SIZE for n in records)
    assert cli.run("check", "--read-data").returncode == 0
