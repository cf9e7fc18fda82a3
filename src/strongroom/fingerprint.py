"""Certificate fingerprints as users see and type them: "SHA256:" and 64 hex digits.

Kept apart from server/tls.py so the client can check a pin without loading X.509 code.
"""

from __future__ import annotations

import hashlib
import re

from .errors import UsageError


def fingerprint_of_der(der: bytes) -> str:
    return "SHA256:" + hashlib.sha256(der).hexdigest()


_SEPARATORS = re.compile(r"[\s:]")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def normalize_fingerprint(text: str) -> str:
    """'SHA256:AB..', 'ab:cd:..', with any case and spaces -> 'SHA256:<64 lowercase hex>'."""
    body = text.strip()
    if body[:7].lower() == "sha256:":
        body = body[7:]
    body = _SEPARATORS.sub("", body).lower()
    if not _HEX64.fullmatch(body):
        raise UsageError(
            "invalid certificate fingerprint: expected SHA256: and 64 hex digits "
            "(as printed by 'strongroom-admin fingerprint')"
        )
    return "SHA256:" + body
