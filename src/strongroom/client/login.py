"""Connecting and logging in: certificate pinning, the Argon2id login, and first-use keys.

The password is stretched once with Argon2id (salt and cost from the server) and split into an
auth key, which is sent over TLS, and a key-encryption key (KEK), which never leaves this
process and unwraps the data keys the server holds for us.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .. import __version__, crypto
from ..errors import IntegrityError, StrongroomError, WrongPasswordError
from ..fingerprint import normalize_fingerprint
from ..keys import KeyFile, RepoKeys, unlock, unwrap
from ..protocol import messages as m
from .remote import Account, RemoteRepository, new_keyfile
from .transport import FingerprintMismatch, Transport, parse_address

PasswordSource = Callable[[], bytes]


@dataclass
class Target:
    server: str
    user: str
    fingerprint: str | None  # pinned; None = ask (trust on first use) unless a CA is given
    ca_file: str | None = None


class PasswordChangeRequired(StrongroomError):
    pass


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
        welcome = transport.call(m.Hello(m.PROTOCOL_VERSION, f"strongroom {__version__}"), 30)
        assert isinstance(welcome, m.Welcome)
    except BaseException:
        transport.close()
        raise
    return transport


def login(
    transport: Transport,
    user: str,
    password: bytes,
    *,
    new_password: PasswordSource | None = None,
    old_password: PasswordSource | None = None,
) -> RemoteRepository:
    """Log in and unlock the keys. A password set by the admin is replaced first, which needs
    `new_password` (and `old_password` when existing backups are locked with an earlier one)."""
    params = transport.call(m.AuthParamsRequest(user), 30)
    assert isinstance(params, m.AuthParams)
    kdf = crypto.KdfParams(params.memory_kib, params.iterations, params.lanes)
    try:
        pk = crypto.split_master(crypto.derive_master(password, params.salt, kdf))
    except IntegrityError:
        raise StrongroomError(f"server {transport.address} sent invalid login parameters") from None
    answer = transport.call(m.Login(user, pk.auth_key), 60)
    assert isinstance(answer, m.LoginOk)
    account = Account(
        user=user,
        directory=answer.directory,
        repo_id=answer.repo_id,
        append_only=bool(answer.flags & m.LOGIN_APPEND_ONLY),
        kdf=kdf,
    )
    keyfile = KeyFile.from_json(answer.keyfile) if answer.keyfile else None
    if answer.flags & m.LOGIN_MUST_CHANGE_PASSWORD:
        if new_password is None:
            raise PasswordChangeRequired(
                "your password was set by the admin: choose your own first with "
                "'strongroom passwd' (the admin must not be able to read your backups)"
            )
        keys = _keys_for_change(keyfile, pk, old_password)
        fresh = new_password()
        transport.call(m.SetKeyFile(new_keyfile(fresh, keys, kdf)), 60)
        return RemoteRepository(transport, keys, account)
    if keyfile is None:
        raise StrongroomError("the server holds no keys for this account; ask the admin")
    if keyfile.salt == params.salt and keyfile.kdf == kdf:
        keys = unwrap(keyfile, pk.kek)
    else:
        keys = unlock(keyfile, password)
    return RemoteRepository(transport, keys, account)


def _keys_for_change(
    keyfile: KeyFile | None, pk: crypto.PasswordKeys, old_password: PasswordSource | None
) -> RepoKeys:
    """Keys to wrap under the user's new password: new ones for a new account, else the old."""
    if keyfile is None:
        return RepoKeys.generate()
    try:
        return unwrap(keyfile, pk.kek)
    except WrongPasswordError:
        pass
    if old_password is None:
        raise PasswordChangeRequired(
            "the admin reset your password, but your backups are locked with your previous one: "
            "run 'strongroom passwd' on a terminal (or with --old-password-file) to unlock them"
        )
    try:
        return unlock(keyfile, old_password())
    except WrongPasswordError:
        raise WrongPasswordError(
            "that is not your previous password: your backups stay locked with it"
        ) from None
