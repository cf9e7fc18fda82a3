"""The written form of a recovery key (recovery_code.py): round trips, and typing mistakes
found before anything is tried with the key."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strongroom import crypto, keys, recovery_code
from strongroom.errors import IntegrityError
from strongroom.recovery import RecoveryKey, WrongRecoveryKey
from strongroom.recovery_code import ALPHABET, GROUP_SIZE, LENGTH, RecoveryKeyTypo

secrets_ = st.binary(min_size=32, max_size=32)
ANY_TIME = settings(deadline=None)  # timing is not what is tested (a busy CI machine)


def symbols(text: str) -> list[str]:
    return [ch for ch in text if ch != "-"]


def join(chars: list[str]) -> str:
    return "".join(chars)


@ANY_TIME
@given(secrets_)
def test_round_trip(secret: bytes) -> None:
    text = recovery_code.encode(secret)
    assert len(symbols(text)) == LENGTH
    assert all(ch in ALPHABET for ch in symbols(text))
    assert recovery_code.decode(text) == secret


@ANY_TIME
@given(secrets_, st.data())
def test_separators_case_and_look_alikes_do_not_matter(secret: bytes, data: st.DataObject) -> None:
    chars = symbols(recovery_code.encode(secret))
    look_alike = {"0": "oO", "1": "iIlL"}
    typed = []
    for i, ch in enumerate(chars):
        ch = data.draw(st.sampled_from(look_alike.get(ch, ch) + ch.lower()))
        sep = data.draw(st.sampled_from(["", " ", "-", "\n", "  "])) if i % GROUP_SIZE == 0 else ""
        typed.append(sep + ch)
    assert recovery_code.decode("".join(typed)) == secret


@ANY_TIME
@given(secrets_, st.integers(0, LENGTH - 1), st.sampled_from(ALPHABET))
def test_any_wrong_character_is_caught_in_its_group(secret: bytes, pos: int, new: str) -> None:
    chars = symbols(recovery_code.encode(secret))
    if chars[pos] == new:
        return
    chars[pos] = new
    with pytest.raises(RecoveryKeyTypo, match=f"group {pos // GROUP_SIZE + 1} "):
        recovery_code.decode(join(chars))


@ANY_TIME
@given(secrets_, st.integers(0, LENGTH - 2))
def test_any_two_neighbours_swapped_are_caught(secret: bytes, pos: int) -> None:
    chars = symbols(recovery_code.encode(secret))
    if chars[pos] == chars[pos + 1]:
        return
    chars[pos], chars[pos + 1] = chars[pos + 1], chars[pos]
    with pytest.raises(RecoveryKeyTypo, match="typo"):
        recovery_code.decode(join(chars))


@ANY_TIME
@given(secrets_, st.integers(0, 12), st.integers(0, 12))
def test_groups_in_the_wrong_order_are_caught(secret: bytes, a: int, b: int) -> None:
    groups = recovery_code.encode(secret).split("-")
    if groups[a] == groups[b]:
        return
    groups[a], groups[b] = groups[b], groups[a]
    with pytest.raises(RecoveryKeyTypo, match="typo"):
        recovery_code.decode("-".join(groups))


@ANY_TIME
@given(secrets_, st.integers(0, LENGTH - 1), st.sampled_from(ALPHABET))
def test_a_character_left_out_or_added_is_caught(secret: bytes, pos: int, extra: str) -> None:
    chars = symbols(recovery_code.encode(secret))
    with pytest.raises(RecoveryKeyTypo, match="65 characters"):
        recovery_code.decode(join(chars[:pos] + chars[pos + 1 :]))
    with pytest.raises(RecoveryKeyTypo, match="65 characters"):
        recovery_code.decode(join([*chars[:pos], extra, *chars[pos:]]))


@settings(max_examples=300, deadline=None)
@given(secrets_, st.lists(st.tuples(st.integers(0, LENGTH - 1), st.sampled_from(ALPHABET))))
def test_several_typos_never_decode_to_another_key(
    secret: bytes, edits: list[tuple[int, str]]
) -> None:
    """Whatever passes every check is the exact written form of the key it decodes to, so no
    two texts stand for one key (a typo that passes is another key, which AES-GCM refuses)."""
    chars = symbols(recovery_code.encode(secret))
    for pos, ch in edits:
        chars[pos] = ch
    try:
        decoded = recovery_code.decode(join(chars))
    except RecoveryKeyTypo:
        return
    assert recovery_code.encode(decoded).replace("-", "") == join(chars)


@pytest.mark.parametrize("bad", ["", "U" * LENGTH, "!" + "0" * (LENGTH - 1), "0" * 64 + "é"])
def test_bad_text_is_a_usage_error(bad: str) -> None:
    with pytest.raises(RecoveryKeyTypo) as info:
        recovery_code.decode(bad)
    assert info.value.exit_code == 2


def test_a_wrong_key_is_refused_with_the_same_words_whatever_it_is() -> None:
    repo_keys = keys.RepoKeys.generate()
    right = RecoveryKey.generate()
    wrapped = right.wrap(repo_keys)
    assert right.unwrap(wrapped) == repo_keys
    messages = set()
    for _ in range(3):
        with pytest.raises(WrongRecoveryKey) as info:
            RecoveryKey.generate().unwrap(wrapped)
        messages.add(str(info.value))
    assert len(messages) == 1


def test_key_files_version_1_and_2() -> None:
    repo_keys = keys.RepoKeys.generate()
    kdf = crypto.KdfParams(memory_kib=1024, iterations=1)
    plain = keys.create_keyfile(b"pw", repo_keys, kdf)
    old = json.loads(plain.to_json())
    assert old["version"] == 1 and "recovery" not in old  # as clients before 0.x wrote it
    assert keys.KeyFile.from_json(json.dumps(old)) == plain
    rk = RecoveryKey.generate()
    with_rk = plain.with_recovery(rk.wrap(repo_keys))
    new = json.loads(with_rk.to_json())
    assert new["version"] == 2 and new["recovery"]["kdf"] == "hkdf-sha256"
    parsed = keys.KeyFile.from_json(with_rk.to_json())
    assert parsed == with_rk and parsed.same_login(plain)
    assert rk.unwrap(parsed.recovery or b"") == repo_keys
    assert keys.unlock(parsed, b"pw") == repo_keys
    for broken in (
        {**new, "version": 3},
        {**new, "version": True},
        {**new, "recovery": {"kdf": "argon2id", "wrapped": new["recovery"]["wrapped"]}},
        {**new, "recovery": {"kdf": "hkdf-sha256", "wrapped": "AAAA"}},
        {**new, "recovery": "x"},
    ):
        with pytest.raises(IntegrityError):
            keys.KeyFile.from_json(json.dumps(broken))
    # A version-1 file never carries a recovery wrapping, whatever else it holds.
    assert keys.KeyFile.from_json(json.dumps({**old, "recovery": new["recovery"]})).recovery is None
