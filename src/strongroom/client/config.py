"""The client's remembered settings: default server and user, and pinned fingerprints.

Stored as JSON in the user's config folder (platformdirs; STRONGROOM_CONFIG_DIR overrides it),
written atomically with mode 0600. Never holds a password.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import StrongroomError
from ..names import fold_name


def config_dir() -> Path:
    env = os.environ.get("STRONGROOM_CONFIG_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_config_dir("strongroom", appauthor=False))


def config_path() -> Path:
    return config_dir() / "client.json"


@dataclass
class AccountPin:
    """What this computer remembers of an account, so a server cannot quietly weaken it: the
    strongest Argon2id cost it has logged in with, and the check value of its keys."""

    memory_kib: int = 0
    iterations: int = 0
    key_check: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "memory_kib": self.memory_kib,
            "iterations": self.iterations,
            "keys": self.key_check,
        }

    @staticmethod
    def from_json(raw: Any) -> AccountPin:
        if not isinstance(raw, dict):
            return AccountPin()
        mem, its, check = raw.get("memory_kib"), raw.get("iterations"), raw.get("keys")
        return AccountPin(
            memory_kib=mem if isinstance(mem, int) else 0,
            iterations=its if isinstance(its, int) else 0,
            key_check=check if isinstance(check, str) else None,
        )


def account_key(server: str, user: str) -> str:
    """The pins' key: the server as written in `fingerprints`, and the user name as the server
    compares it (ASCII letters folded)."""
    return f"{server}|{fold_name(user)}"


@dataclass
class ClientConfig:
    server: str | None = None
    user: str | None = None
    fingerprints: dict[str, str] = field(default_factory=dict)  # "host:port" -> "SHA256:..."
    accounts: dict[str, AccountPin] = field(default_factory=dict)  # account_key -> pins

    @staticmethod
    def load() -> ClientConfig:
        path = config_path()
        try:
            raw: Any = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return ClientConfig()
        except (OSError, ValueError) as exc:
            raise StrongroomError(f"cannot read client config {path}: {exc}") from None
        if not isinstance(raw, dict):
            raise StrongroomError(f"client config {path} is malformed; remove it and log in again")
        prints = raw.get("fingerprints", {})
        accounts = raw.get("accounts", {})
        return ClientConfig(
            server=raw.get("server") if isinstance(raw.get("server"), str) else None,
            user=raw.get("user") if isinstance(raw.get("user"), str) else None,
            fingerprints={
                str(k): str(v) for k, v in (prints.items() if isinstance(prints, dict) else [])
            },
            accounts={
                str(k): AccountPin.from_json(v)
                for k, v in (accounts.items() if isinstance(accounts, dict) else [])
            },
        )

    def save(self) -> Path:
        path = config_path()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(path.name + ".tmp")
        data = json.dumps(
            {
                "server": self.server,
                "user": self.user,
                "fingerprints": self.fingerprints,
                "accounts": {k: v.to_json() for k, v in self.accounts.items()},
            },
            indent=2,
            sort_keys=True,
        )
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return path
