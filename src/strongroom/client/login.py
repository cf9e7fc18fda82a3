"""Connecting and logging in: certificate pinning, the Argon2id login, and first-use keys.

The password is stretched once with Argon2id (salt and cost from the server) and split into an
auth key, which is sent over TLS, and a key-encryption key (KEK), which never leaves this
process and unwraps the data keys the server holds for us. After an admin reset the keys are
opened with the user's previous password or their recovery key, and wrapped under the new one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .. import __version__, crypto
from ..errors import IntegrityError, StrongroomError, WrongPasswordError
from ..fingerprint import normalize_fingerprint
from ..keys import KeyFile, RepoKeys, auth_hash, create_keyfile, unlock, unwrap
from ..protocol import messages as m
from ..recovery import RecoveryKey
from .config import AccountPin
from .remote import Account, RemoteRepository
from .transport import FingerprintMismatch, Transport, expect, parse_address

PasswordSource = Callable[[], bytes]


@dataclass
class Target:
    server: str
    user: str
    fingerprint: str | None  # pinned; None = ask (trust on first use) unless a CA is given
    ca_file: str | None = None


class PasswordChangeRequired(StrongroomError):
    pass


@dataclass
class Recovery:
    """What this login does with recovery keys.

    `key`: `strongroom recover`: after an admin reset, open the keys with this recovery key
    instead of the previous password. `made`: when this login creates the account's keys,
    also make a recovery key and hand it here once the server holds its wrapping."""

    key: Callable[[], RecoveryKey] | None = None
    made: Callable[[RecoveryKey], None] | None = None


def mismatch_warning(address: str, pinned: str, actual: str) -> str:
    return (
        f"WARNING: the certificate of {address} has CHANGED (pinned {pinned}, server sent "
        f"{actual}). Someone may be intercepting the connection, or the server got a new "
        "certificate. Nothing was sent. If the admin confirms the new fingerprint, log in again "
        "with --fingerprint."
    )


def open_connection(target: Target, trust: Callable[[str, str], bool] | None) -> Transport:
    host, port = parse_address(target.server)
    transport = Transport(host, port, ca_file=target.ca_file)
    try:
        if target.fingerprint:
            pinned = normalize_fingerprint(target.fingerprint)
            if not crypto.constant_time_equal(pinned.encode(), transport.fingerprint.encode()):
                raise FingerprintMismatch(
                    mismatch_warning(transport.address, pinned, transport.fingerprint)
                )
        elif target.ca_file is None and (
            trust is None or not trust(transport.address, transport.fingerprint)
        ):
            raise FingerprintMismatch(
                f"server {transport.address} is not trusted yet: its certificate fingerprint "
                f"is {transport.fingerprint}; check it with the admin "
                "('strongroom-admin fingerprint') and pass it with --fingerprint or "
                "STRONGROOM_FINGERPRINT, or run 'strongroom login'"
            )
        hello = m.Hello(m.PROTOCOL_VERSION, f"strongroom {__version__}")
        expect(transport.call(hello, 30), m.Welcome, "HELLO")
    except BaseException:
        transport.close()
        raise
    return transport


def login(
    transport: Transport,
    user: str,
    password: bytes,
    *,
    pin: AccountPin | None = None,
    new_password: PasswordSource | None = None,
    old_password: PasswordSource | None = None,
    recovery: Recovery | None = None,
) -> RemoteRepository:
    """Log in and unlock the keys. A password set by the admin is replaced first, which needs
    `new_password` (and `old_password` or `recovery.key` when existing backups are locked
    with an earlier one).

    `pin` is what this computer remembers of the account (client.json); it is checked before
    anything derived from the password is sent, and updated in place after a good login."""
    pin = pin if pin is not None else AccountPin()
    params = expect(transport.call(m.AuthParamsRequest(user), 30), m.AuthParams, "the login")
    kdf = crypto.KdfParams(params.memory_kib, params.iterations, params.lanes)
    check_kdf(kdf, pin, transport.address)
    try:
        pk = crypto.split_master(crypto.derive_master(password, params.salt, kdf))
    except IntegrityError:
        raise StrongroomError(f"server {transport.address} sent invalid login parameters") from None
    answer = expect(transport.call(m.Login(user, pk.auth_key), 60), m.LoginOk, "the login")
    if not is_storage_id(answer.repo_id):
        raise IntegrityError(f"server {transport.address} sent a malformed account ID")
    wrap_kdf = _strongest(kdf, pin)
    account = Account(
        user=user,
        directory=answer.directory,
        repo_id=answer.repo_id,
        append_only=bool(answer.flags & m.LOGIN_APPEND_ONLY),
        kdf=wrap_kdf,
    )
    recovery = recovery or Recovery()
    keyfile = KeyFile.from_json(answer.keyfile) if answer.keyfile else None
    reset = bool(answer.flags & m.LOGIN_MUST_CHANGE_PASSWORD)
    if reset:
        if new_password is None:
            raise PasswordChangeRequired(
                "your password was set by the admin: choose your own first with "
                "'strongroom passwd' (the admin must not be able to read your backups)"
            )
        if recovery.key is not None:
            keys = _keys_from_recovery(keyfile, recovery.key)
        else:
            keys = _keys_for_change(
                keyfile, password, pk, params.salt, kdf, old_password, pin, transport.address
            )
        _check_keys(keys, pin, transport.address)
        fresh = new_password()
        made = RecoveryKey.generate() if keyfile is None and recovery.made else None
        # New keys get a recovery key; existing ones keep their recovery wrapping as it was
        # (it seals these same keys, so the user's recovery key keeps working).
        kept = made.wrap(keys) if made else (keyfile.recovery if keyfile else None)
        keyfile = create_keyfile(fresh, keys, wrap_kdf, recovery=kept)
        expect(transport.call(m.SetKeyFile(keyfile.to_json().encode()), 60), m.Ok, "SET_KEYFILE")
        if made is not None and recovery.made is not None:
            recovery.made(made)
    else:
        if keyfile is None:
            raise StrongroomError("the server holds no keys for this account; ask the admin")
        if keyfile.salt == params.salt and keyfile.kdf == kdf:
            keys = unwrap(keyfile, pk.kek)
        else:
            check_kdf(keyfile.kdf, pin, transport.address)
            keys = unlock(keyfile, password)
        _check_keys(keys, pin, transport.address)
    pin.memory_kib = max(pin.memory_kib, kdf.memory_kib)
    pin.iterations = max(pin.iterations, kdf.iterations)
    pin.key_check = keys.check_value()
    repo = RemoteRepository(transport, keys, account)
    repo.keyfile = keyfile
    repo.reset = reset
    # Only a key file whose verifier is this login's may be resent with just its recovery
    # wrapping changed (recovery-key create/rotate/remove); otherwise it is re-wrapped.
    repo.keyfile_is_login = reset or (
        keyfile.salt == params.salt
        and keyfile.kdf == kdf
        and crypto.constant_time_equal(keyfile.auth_hash, auth_hash(pk.auth_key))
    )
    return repo


KDF_MAX_MEMORY_KIB = 1024 * 1024
KDF_MAX_ITERATIONS = 16


def is_storage_id(text: str) -> bool:
    """A server account's repository ID: 32 lowercase hex digits (server/datadir.py)."""
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


class UnsafeServer(StrongroomError):
    """The server asked for something only an attacker would: refused before any harm."""


def check_kdf(kdf: crypto.KdfParams, pin: AccountPin, address: str) -> None:
    """Refuse, before deriving or sending anything, a cost below the floor or below what this
    account used before: a cheap Argon2id makes the auth key cheap to brute-force offline."""
    floor = crypto.kdf_floor()
    if crypto.weaker_than(kdf, floor):
        raise UnsafeServer(
            f"server {address} asks for weak password hashing (Argon2id {_cost(kdf)}; the "
            f"minimum is {_cost(floor)}). Nothing derived from your password was sent. A "
            "server that does this may be trying to guess your password; ask the admin (an "
            "account made with weak settings needs a password reset by a current "
            "strongroom-admin)"
        )
    if kdf.memory_kib > KDF_MAX_MEMORY_KIB or kdf.iterations > KDF_MAX_ITERATIONS:
        # Pins only grow: a hostile server must not push this account's cost out of reach of
        # the user's smaller machines (or make this one allocate gigabytes).
        raise UnsafeServer(
            f"server {address} asks for more expensive password hashing (Argon2id "
            f"{_cost(kdf)}) than this client allows (1 GiB, 16 passes); nothing was sent"
        )
    remembered = crypto.KdfParams(max(pin.memory_kib, 8), max(pin.iterations, 1), kdf.lanes)
    if pin.memory_kib and crypto.weaker_than(kdf, remembered):
        raise UnsafeServer(
            f"server {address} asks for weaker password hashing than at your last login "
            f"(Argon2id {_cost(kdf)}, was {_cost(remembered)}). Nothing derived from your "
            "password was sent. If the admin recreated your account, run "
            "'strongroom login --accept-new-keys'"
        )


def _strongest(kdf: crypto.KdfParams, pin: AccountPin) -> crypto.KdfParams:
    """The cost this client wraps key files with: its own floor, never less than the server's
    current cost or the strongest this account has used."""
    floor = crypto.kdf_floor()
    return crypto.KdfParams(
        memory_kib=max(floor.memory_kib, kdf.memory_kib, pin.memory_kib),
        iterations=max(floor.iterations, kdf.iterations, pin.iterations),
        lanes=floor.lanes,
    )


def _cost(kdf: crypto.KdfParams) -> str:
    memory = (
        f"{kdf.memory_kib // 1024} MiB" if kdf.memory_kib % 1024 == 0 else f"{kdf.memory_kib} KiB"
    )
    return f"{memory}, {kdf.iterations} pass{'es' if kdf.iterations != 1 else ''}"


def _opens_with(
    keyfile: KeyFile,
    password: bytes,
    pk: crypto.PasswordKeys,
    login_salt: bytes,
    login_kdf: crypto.KdfParams,
    pin: AccountPin,
    address: str,
) -> bool:
    """Does the key file open with `password`, under the login's salt or its own?"""
    try:
        if keyfile.salt == login_salt and keyfile.kdf == login_kdf:
            unwrap(keyfile, pk.kek)
        else:
            check_kdf(keyfile.kdf, pin, address)
            unlock(keyfile, password)
    except WrongPasswordError:
        return False
    return True


def _check_keys(keys: RepoKeys, pin: AccountPin, address: str) -> None:
    if pin.key_check is not None and not crypto.constant_time_equal(
        pin.key_check.encode(), keys.check_value().encode()
    ):
        raise UnsafeServer(
            f"WARNING: server {address} unlocked DIFFERENT KEYS for this account than before. "
            "Someone with access to the server may have replaced them to read your future "
            "backups. Nothing was sent. If the admin recreated your account on purpose, run "
            "'strongroom login --accept-new-keys'"
        )


def _keys_from_recovery(
    keyfile: KeyFile | None, recovery_key: Callable[[], RecoveryKey]
) -> RepoKeys:
    """`strongroom recover`: the keys from the recovery wrapping, never from the password the
    admin set. AES-GCM authenticates them: only the user's own recovery key opens them, so
    no one at the server can have planted them."""
    if keyfile is None:
        raise StrongroomError(
            "this account holds no keys yet, so there is nothing to recover: run "
            "'strongroom passwd' to choose your password"
        )
    if keyfile.recovery is None:
        raise StrongroomError(
            "this account has no recovery key: your backups open only with your previous "
            "password ('strongroom passwd --old-password-file')"
        )
    return recovery_key().unwrap(keyfile.recovery)


def _keys_for_change(
    keyfile: KeyFile | None,
    admin_password: bytes,
    pk: crypto.PasswordKeys,
    login_salt: bytes,
    login_kdf: crypto.KdfParams,
    old_password: PasswordSource | None,
    pin: AccountPin,
    address: str,
) -> RepoKeys:
    """Keys to wrap under the user's new password: new ones for a new account, else the old
    ones, opened with the user's previous password and never with the admin's."""
    if keyfile is None:
        if pin.key_check is not None:
            raise UnsafeServer(
                f"WARNING: server {address} holds no keys for this account, but this computer has "
                "used its keys before: whoever controls the server removed them. Nothing was "
                "changed. If the admin recreated your account on purpose, run "
                "'strongroom login --accept-new-keys'"
            )
        return RepoKeys.generate()
    if _opens_with(keyfile, admin_password, pk, login_salt, login_kdf, pin, address):
        # No legitimate flow wraps keys under a password the admin chose: these were planted
        # by someone who knows that password, to read everything backed up from now on.
        raise UnsafeServer(
            f"WARNING: the keys server {address} holds for this account open with the password the "
            "admin set. Someone with access to the server planted keys they know, to read "
            "your future backups. Nothing was changed; tell your admin and do not back up to "
            "this server until it is explained"
        )
    if old_password is None:
        raise PasswordChangeRequired(
            "the admin reset your password, but your backups are locked with your previous one: "
            "run 'strongroom passwd' on a terminal (or with --old-password-file) to unlock them, "
            "or 'strongroom recover' with your recovery key"
        )
    check_kdf(keyfile.kdf, pin, address)
    try:
        return unlock(keyfile, old_password())
    except WrongPasswordError:
        raise WrongPasswordError(
            "that is not your previous password: your backups stay locked with it"
        ) from None
