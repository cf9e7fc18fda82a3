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


def config_dir() -> Path:
    env = os.environ.get("STRONGROOM_CONFIG_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_config_dir("strongroom", appauthor=False))


def config_path() -> Path:
    return config_dir() / "client.json"


@dataclass
class ClientConfig:
    server: str | None = None
    user: str | None = None
    fingerprints: dict[str, str] = field(default_factory=dict)  # "host:port" -> "SHA256:..."

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
        return ClientConfig(
            server=raw.get("server") if isinstance(raw.get("server"), str) else None,
            user=raw.get("user") if isinstance(raw.get("user"), str) else None,
            fingerprints={
                str(k): str(v) for k, v in (prints.items() if isinstance(prints, dict) else [])
            },
        )

    def save(self) -> Path:
        path = config_path()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(path.name + ".tmp")
        data = json.dumps(
            {"server": self.server, "user": self.user, "fingerprints": self.fingerprints},
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
