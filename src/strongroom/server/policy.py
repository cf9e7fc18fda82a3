"""Which retention policy applies to a user: their own, else the server-wide default."""

from __future__ import annotations

import json
import logging

from ..errors import UsageError
from ..retention import Policy
from .userdb import User, UserDB

log = logging.getLogger("strongroom.server")


def policy_for(userdb: UserDB, user: User) -> Policy | None:
    raw = user.policy if user.policy is not None else userdb.get_setting("default_policy")
    if raw is None:
        return None
    try:
        policy = Policy.from_json(json.loads(raw))
    except (ValueError, UsageError) as exc:
        log.warning("ignoring an invalid retention policy for %r: %s", user.name, exc)
        return None
    return None if policy.is_empty() else policy
