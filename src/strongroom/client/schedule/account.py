"""Logging in for `schedule`: to check the password at enable time, and to report a failed run.

The same checks as every login (pinned fingerprint or CA, the account's remembered key
derivation cost and key check), with the password handed in rather than read here.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import AccountPin, ClientConfig, account_key
from ..login import Target, login, open_connection
from ..remote import RemoteRepository
from ..transport import format_address, parse_address


def open_account(
    server: str,
    user: str,
    password: bytes,
    *,
    fingerprint: str | None,
    ca_file: str | None,
    trust: Callable[[str, str], bool] | None = None,
) -> RemoteRepository:
    cfg = ClientConfig.load()
    key = format_address(*parse_address(server))
    pin_key = account_key(key, user)
    known = cfg.accounts.get(pin_key)
    pin = AccountPin(**vars(known)) if known is not None else AccountPin()
    pinned = fingerprint or cfg.fingerprints.get(key)
    transport = open_connection(Target(server, user, pinned, ca_file), trust)
    try:
        repo = login(transport, user, password, pin=pin)
    except BaseException:
        transport.close()
        raise
    if pin != known:
        # A fresh login's pins protect later ones, exactly as `strongroom login` keeps them.
        cfg = ClientConfig.load()
        cfg.accounts[pin_key] = pin
        cfg.save()
    return repo
