"""Keep credentials out of logs and error lines: URL passwords, `key=value` secrets, and any
secret value the process registered (a PostgreSQL password read from a file, S3 keys).

Every server log record passes through RedactingFilter, and the programs' one-line errors go
through `redact` (cli/errors.display), so a driver message that quotes a connection string
cannot leak what it holds. Dependency-free: the client imports it too.
"""

from __future__ import annotations

import logging
import re
import threading

MASK = "***"
_MIN_SECRET = 4  # shorter values would mask ordinary words

_lock = threading.Lock()
_secrets: set[str] = set()

# scheme://user:password@host -> scheme://user:***@host
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:@/\s'\"]*:)[^@\s'\"]*@")
# password=..., secret_key=..., aws_secret_access_key = ... (conninfo, query strings, INI)
_KEY_VALUE = re.compile(
    r"(?P<head>\b(?:password|passwd|pwd|sslpassword|secret|secret_key|secret_access_key|"
    r"aws_secret_access_key|aws_session_token|session_token|token)\s*[=:]\s*)"
    r"(?P<value>'[^']*'|\"[^\"]*\"|[^\s&;,'\"]+)",
    re.IGNORECASE,
)


def register_secret(value: str | bytes | None) -> None:
    """Mask this exact value wherever it appears in a log line or an error from now on."""
    if value is None:
        return
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    if len(text) >= _MIN_SECRET:
        with _lock:
            _secrets.add(text)


def redact(text: str) -> str:
    """`text` without URL passwords, `password=…`-style values and registered secrets."""
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)  # a longer secret may hold a shorter one
    for secret in known:
        if secret in text:
            text = text.replace(secret, MASK)
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK + "@", text)
    return _KEY_VALUE.sub(lambda m: m.group("head") + MASK, text)


class RedactingFilter(logging.Filter):
    """A handler filter: formats the record's message once, redacted (exception text too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_text is None:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
