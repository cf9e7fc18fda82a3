"""Keys, key files and the blob codec: what a hostile server or a damaged disk can and cannot do."""

from __future__ import annotations

import base64
import hmac
import json
import os
import struct
import time
from typing import Any

import blake3
import pytest
import zstandard
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from strongroom import crypto, keys
from strongroom.blobs import MAX_BLOB_SIZE, BlobCodec, stored_size
from strongroom.errors import IntegrityError, StrongroomError, WrongPasswordError
from strongroom.keys import KeyFile, RepoKeys

TINY = crypto.KdfParams(memory_kib=64, iterations=1, lanes=1)
PASSWORD = b"correct horse battery staple"
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

REPO_KEYS = RepoKeys.generate()
KEYFILE = keys.create_keyfile(PASSWORD, REPO_KEYS, TINY)


def codec_for(k: RepoKeys) -> BlobCodec:
    return BlobCodec(k.aead(), k.hasher())


CODEC = codec_for(REPO_KEYS)


# ---- key files -------------------------------------------------------------------------------


def test_keyfile_round_trip() -> None:
    text = KEYFILE.to_json()
    again = KeyFile.from_json(text)
    assert again == KEYFILE
    assert keys.unlock(again, PASSWORD) == REPO_KEYS
    assert keys.unlock(KeyFile.from_json(text.encode()), PASSWORD) == REPO_KEYS


def test_wrong_password() -> None:
    for wrong in [b"", b"correct horse battery stapl", PASSWORD + b"\0", PASSWORD.upper()]:
        with pytest.raises(WrongPasswordError):
            keys.unlock(KEYFILE, wrong)


def test_password_change_rewraps_the_same_keys() -> None:
    new = keys.create_keyfile(b"new password", REPO_KEYS, TINY)
    assert keys.unlock(new, b"new password") == REPO_KEYS
    assert new.salt != KEYFILE.salt and new.wrapped != KEYFILE.wrapped
    with pytest.raises(WrongPasswordError):
        keys.unlock(new, PASSWORD)


@FAST
@given(st.data())
def test_tampered_wrapped_keys_are_refused(data: st.DataObject) -> None:
    wrapped = bytearray(KEYFILE.wrapped)
    pos = data.draw(st.integers(0, len(wrapped) - 1))
    wrapped[pos] ^= data.draw(st.integers(1, 255))
    tampered = KeyFile(KEYFILE.salt, KEYFILE.kdf, bytes(wrapped), KEYFILE.auth_hash)
    with pytest.raises(WrongPasswordError):
        keys.unlock(tampered, PASSWORD)


@pytest.mark.parametrize(
    "change",
    [
        {"salt": base64.b64encode(b"another salt 123").decode()},
        {"iterations": 2},
        {"memory_kib": 128},
        {"wrapped": base64.b64encode(KEYFILE.wrapped[:-1]).decode()},
        {"wrapped": base64.b64encode(KEYFILE.wrapped + b"\0").decode()},
        {"wrapped": base64.b64encode(os.urandom(len(KEYFILE.wrapped))).decode()},
        {"wrapped": ""},
    ],
)
def test_tampered_key_file_fields(change: dict[str, Any]) -> None:
    obj = {**json.loads(KEYFILE.to_json()), **change}
    with pytest.raises(StrongroomError):  # WrongPasswordError or IntegrityError, never a crash
        keys.unlock(KeyFile.from_json(json.dumps(obj)), PASSWORD)


def test_wrapped_keys_of_another_user_do_not_unlock() -> None:
    """A server handing out another user's wrapped keys under this user's salt gains nothing."""
    other = keys.create_keyfile(b"other password", RepoKeys.generate(), TINY)
    swapped = KeyFile(KEYFILE.salt, KEYFILE.kdf, other.wrapped, KEYFILE.auth_hash)
    with pytest.raises(WrongPasswordError):
        keys.unlock(swapped, PASSWORD)


GARBAGE_KEYFILES = [
    "",
    "null",
    "[]",
    '"text"',
    "42",
    "{}",
    "[" * 100_000,
    '{"version": 1, "kdf": "argon2id"}',
    '{"version": 2}',
    b"\xff\xfe\x00",
    b"\x00" * 10,
]


@pytest.mark.parametrize("text", GARBAGE_KEYFILES)
def test_keyfile_garbage_is_integrity_error(text: str | bytes) -> None:
    with pytest.raises(IntegrityError):
        KeyFile.from_json(text)


def _hostile(**fields: Any) -> str:
    return json.dumps({**json.loads(KEYFILE.to_json()), **fields})


HOSTILE_FIELDS = [
    {"memory_kib": 2**40},
    {"memory_kib": 2**31},
    {"memory_kib": 4 * 1024 * 1024 + 1},
    {"memory_kib": 0},
    {"memory_kib": 7},
    {"memory_kib": -1},
    {"memory_kib": 64, "lanes": 9},  # less than 8 KiB per lane
    {"memory_kib": 1e400},  # json: Infinity
    {"memory_kib": True},
    {"memory_kib": None},
    {"iterations": 0},
    {"iterations": 65},
    {"iterations": 2**64},
    {"lanes": 0},
    {"lanes": 65},
    {"lanes": 2**32},
    {"salt": ""},
    {"salt": base64.b64encode(b"1234567").decode()},
    {"salt": "not base64!"},
    {"salt": 12},
    {"salt": "é"},
    {"wrapped": None},
    {"auth_hash": []},
    {"version": True, "kdf": "scrypt"},
]


@pytest.mark.parametrize("fields", HOSTILE_FIELDS, ids=repr)
def test_hostile_keyfile_is_refused_before_the_kdf_runs(fields: dict[str, Any]) -> None:
    started = time.monotonic()
    with pytest.raises(IntegrityError):
        keys.unlock(KeyFile.from_json(_hostile(**fields)), PASSWORD)
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("fields", [{"memory_kib": 64.5}, {"lanes": "1"}, {"iterations": False}])
def test_keyfile_numbers_must_be_integers(fields: dict[str, Any]) -> None:
    with pytest.raises(IntegrityError):
        KeyFile.from_json(_hostile(**fields))


def test_kdf_bounds_are_checked_even_for_a_hand_built_keyfile() -> None:
    for params in [
        crypto.KdfParams(memory_kib=2**40, iterations=1, lanes=1),
        crypto.KdfParams(memory_kib=64, iterations=1000, lanes=1),
        crypto.KdfParams(memory_kib=64, iterations=1, lanes=0),
    ]:
        hostile = KeyFile(KEYFILE.salt, params, KEYFILE.wrapped, KEYFILE.auth_hash)
        with pytest.raises(IntegrityError):
            keys.unlock(hostile, PASSWORD)
    with pytest.raises(IntegrityError):
        keys.unlock(KeyFile(b"", TINY, KEYFILE.wrapped, KEYFILE.auth_hash), PASSWORD)


keyfile_values = st.sampled_from(
    [8, 64, 1, 0, -1, 2**40, 1.5, float("inf"), float("nan"), "64", None, True, [], {}, "", "AA=="]
)


@FAST
@given(
    st.dictionaries(
        st.sampled_from(
            ["version", "kdf", "salt", "memory_kib", "iterations", "lanes", "wrapped", "auth_hash"]
        ),
        keyfile_values | st.text(max_size=10),
    )
)
def test_keyfile_fuzzed_fields(fields: dict[str, Any]) -> None:
    try:
        kf = KeyFile.from_json(json.dumps({**json.loads(KEYFILE.to_json()), **fields}))
    except IntegrityError:
        return
    assert kf.kdf.memory_kib <= 64  # nothing larger than the strategy's small valid costs
    try:
        unlocked = keys.unlock(kf, PASSWORD)
    except StrongroomError:  # wrong password or integrity error: a clean, expected failure
        return
    assert unlocked == REPO_KEYS


@FAST
@given(st.binary(max_size=200) | st.text(max_size=200))
@example("[" * 100_000)
@example('{"data_key": "", "id_key": "", "chunker_seed": 1e999}')
def test_repo_keys_from_garbage(raw: bytes | str) -> None:
    with pytest.raises(IntegrityError):
        RepoKeys.from_bytes(raw.encode() if isinstance(raw, str) else raw)


def test_repo_keys_round_trip_and_sizes() -> None:
    assert RepoKeys.from_bytes(REPO_KEYS.to_bytes()) == REPO_KEYS
    short = json.dumps({"data_key": "AAAA", "id_key": "AAAA", "chunker_seed": 1}).encode()
    with pytest.raises(IntegrityError):
        RepoKeys.from_bytes(short)


# ---- password-derived keys -------------------------------------------------------------------


def _password_keys(password: bytes, salt: bytes) -> crypto.PasswordKeys:
    return crypto.split_master(crypto.derive_master(password, salt, TINY))


def test_same_password_other_salt_gives_other_keys() -> None:
    a = _password_keys(PASSWORD, b"salt-one-16bytes")
    b = _password_keys(PASSWORD, b"salt-two-16bytes")
    assert a.auth_key != b.auth_key
    assert a.kek != b.kek
    assert a == _password_keys(PASSWORD, b"salt-one-16bytes")  # deterministic


def test_auth_key_and_kek_are_independent() -> None:
    pk = _password_keys(PASSWORD, b"salt-one-16bytes")
    master = crypto.derive_master(PASSWORD, b"salt-one-16bytes", TINY)
    assert len({pk.auth_key, pk.kek, master}) == 3
    assert all(len(k) == crypto.KEY_SIZE for k in (pk.auth_key, pk.kek, master))


def test_keyfile_holds_no_secret() -> None:
    """The server stores the key file: it must not hold the auth key, KEK or repository keys."""
    pk = crypto.split_master(crypto.derive_master(PASSWORD, KEYFILE.salt, KEYFILE.kdf))
    assert KEYFILE.auth_hash == keys.auth_hash(pk.auth_key)
    assert KEYFILE.auth_hash != pk.auth_key
    text = KEYFILE.to_json()
    for secret in (pk.auth_key, pk.kek, REPO_KEYS.data_key, REPO_KEYS.id_key):
        for form in (base64.b64encode(secret).decode(), secret.hex()):
            assert form not in text
        assert secret not in KEYFILE.wrapped
    assert PASSWORD.decode() not in text


def test_auth_hash_differs_per_salt() -> None:
    again = keys.create_keyfile(PASSWORD, REPO_KEYS, TINY)
    assert again.salt != KEYFILE.salt
    assert again.auth_hash != KEYFILE.auth_hash


# ---- blob codec ------------------------------------------------------------------------------

payloads = st.one_of(
    st.binary(max_size=5000),
    st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=20), st.integers(1, 500)),
    st.just(b""),
)


@FAST
@given(payloads)
def test_codec_round_trip(plain: bytes) -> None:
    blob_id = CODEC.hash(plain)
    stored = CODEC.encode(blob_id, plain)
    assert CODEC.decode(blob_id, stored) == plain
    assert CODEC.decode(blob_id, memoryview(stored)) == plain
    if len(plain) > 64 and len(set(plain)) == 1:
        assert len(stored) < len(plain)  # compressible data is compressed
    assert len(stored) <= stored_size(len(plain))  # never more than raw + Padmé padding


def test_codec_random_data_is_stored_raw_and_sealed() -> None:
    plain = os.urandom(100_000)
    stored = CODEC.encode(CODEC.hash(plain), plain)
    assert len(stored) == stored_size(len(plain))  # raw, padded (tests/test_padding.py)
    assert plain[:64] not in stored


@FAST
@given(payloads, st.data())
def test_codec_any_flipped_byte_is_detected(plain: bytes, data: st.DataObject) -> None:
    blob_id = CODEC.hash(plain)
    stored = bytearray(CODEC.encode(blob_id, plain))
    pos = data.draw(st.integers(0, len(stored) - 1))
    stored[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises(IntegrityError):
        CODEC.decode(blob_id, bytes(stored))


@FAST
@given(payloads, st.data())
def test_codec_truncated_or_extended_is_detected(plain: bytes, data: st.DataObject) -> None:
    blob_id = CODEC.hash(plain)
    stored = CODEC.encode(blob_id, plain)
    cut = data.draw(st.integers(0, len(stored) - 1))
    with pytest.raises(IntegrityError):
        CODEC.decode(blob_id, stored[:cut])
    with pytest.raises(IntegrityError):
        CODEC.decode(blob_id, stored + data.draw(st.binary(min_size=1, max_size=8)))


@FAST
@given(payloads, payloads)
def test_codec_wrong_blob_id_is_detected(plain: bytes, other: bytes) -> None:
    blob_id = CODEC.hash(plain)
    stored = CODEC.encode(blob_id, plain)
    other_id = CODEC.hash(other)
    if other_id != blob_id:
        with pytest.raises(IntegrityError):
            CODEC.decode(other_id, stored)  # a server swapping two blobs
    with pytest.raises(IntegrityError):
        CODEC.decode(bytes(32), stored)


def test_codec_plaintext_not_matching_its_id_is_detected() -> None:
    """Encrypted correctly under an ID, but the content is not what that ID names."""
    blob_id = CODEC.hash(b"the real content")
    stored = CODEC.encode(blob_id, b"substituted content")
    with pytest.raises(IntegrityError, match="does not match its ID"):
        CODEC.decode(blob_id, stored)


def test_codec_other_repository_key_is_refused() -> None:
    other = codec_for(RepoKeys.generate())
    blob_id = CODEC.hash(b"data")
    with pytest.raises(IntegrityError):
        other.decode(blob_id, CODEC.encode(blob_id, b"data"))


def _sealed_body(body: bytes, blob_id: bytes) -> bytes:
    """A stored blob built by hand: what someone holding the data key could upload."""
    return crypto.seal(REPO_KEYS.aead(), body, blob_id)


def test_decompression_bomb_with_declared_size_is_refused() -> None:
    plain = bytes(MAX_BLOB_SIZE + 1)
    frame = zstandard.ZstdCompressor(level=1).compress(plain)
    assert zstandard.frame_content_size(frame) == MAX_BLOB_SIZE + 1
    blob_id = CODEC.hash(plain)  # the ID even matches: only the size limit can stop it
    with pytest.raises(IntegrityError):
        CODEC.decode(blob_id, _sealed_body(b"\x01" + frame, blob_id))


def test_decompression_bomb_without_declared_size_is_refused() -> None:
    plain = bytes(MAX_BLOB_SIZE + 1)
    frame = zstandard.ZstdCompressor(level=1, write_content_size=False).compress(plain)
    blob_id = CODEC.hash(plain)
    with pytest.raises(IntegrityError):
        CODEC.decode(blob_id, _sealed_body(b"\x01" + frame, blob_id))


@pytest.mark.parametrize("declared", [2**40, 2**63, MAX_BLOB_SIZE + 1])
def test_frame_header_declaring_huge_size_is_refused_without_allocating(declared: int) -> None:
    # magic, single-segment header with an 8-byte content size, one empty raw last block
    frame = struct.pack("<IBQ", 0xFD2FB528, 0xE0, declared) + b"\x01\x00\x00"
    assert zstandard.frame_content_size(frame) == declared
    blob_id = CODEC.hash(b"")
    with pytest.raises(IntegrityError):
        CODEC.decode(blob_id, _sealed_body(b"\x01" + frame, blob_id))


@pytest.mark.parametrize(
    "body",
    [b"", b"\x02data", b"\xffdata", b"\x01not zstd", b"\x01", b"\x01\x28\xb5\x2f\xfd"],
)
def test_codec_malformed_bodies(body: bytes) -> None:
    blob_id = CODEC.hash(body[1:])
    with pytest.raises(IntegrityError):
        CODEC.decode(blob_id, _sealed_body(body, blob_id))


def test_largest_allowed_blob_still_decodes() -> None:
    plain = bytes(MAX_BLOB_SIZE)
    blob_id = CODEC.hash(plain)
    assert CODEC.decode(blob_id, CODEC.encode(blob_id, plain)) == plain


# ---- blob IDs --------------------------------------------------------------------------------


@FAST
@given(st.binary(max_size=2000))
def test_blob_ids_are_keyed_per_repository(plain: bytes) -> None:
    other = RepoKeys.generate()
    a, b = REPO_KEYS.hasher()(plain), other.hasher()(plain)
    assert a != b
    assert a != blake3.blake3(plain).digest()  # a server cannot compute it from known files
    assert len(a) == crypto.ID_SIZE
    assert a == REPO_KEYS.hasher()(memoryview(plain))


def test_hasher_refuses_wrong_key_size() -> None:
    for bad in (b"", b"k" * 31, b"k" * 33):
        with pytest.raises(ValueError):
            crypto.BlobHasher(bad)


def test_constant_time_equal() -> None:
    a = os.urandom(32)
    assert crypto.constant_time_equal(a, bytes(a))
    assert not crypto.constant_time_equal(a, a[:-1] + bytes([a[-1] ^ 1]))
    assert not crypto.constant_time_equal(a, a[:16])
    assert not crypto.constant_time_equal(a, b"")


def test_blob_id_check_uses_constant_time_comparison(monkeypatch: pytest.MonkeyPatch) -> None:
    """A spy around the real functions: the ID check must go through hmac.compare_digest."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((bytes(a), bytes(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    blob_id = CODEC.hash(b"payload")
    assert CODEC.decode(blob_id, CODEC.encode(blob_id, b"payload")) == b"payload"
    assert (blob_id, blob_id) in calls
    calls.clear()
    with pytest.raises(IntegrityError):
        CODEC.decode(blob_id, CODEC.encode(blob_id, b"other"))
    assert (CODEC.hash(b"other"), blob_id) in calls


def test_seal_uses_fresh_nonces() -> None:
    key = crypto.random_key()
    sealed = {crypto.seal(key, b"same", b"aad")[: crypto.NONCE_SIZE] for _ in range(200)}
    assert len(sealed) == 200
    with pytest.raises(IntegrityError, match="truncated"):
        crypto.unseal(key, b"\0" * (crypto.NONCE_SIZE + crypto.TAG_SIZE - 1), b"aad", "x")
