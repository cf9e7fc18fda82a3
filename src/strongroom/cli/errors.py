"""One clear line and a meaningful exit code instead of a traceback, for all three programs."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..errors import EXIT_ERROR, StrongroomError

F = TypeVar("F", bound=Callable[..., Any])

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def display(text: str) -> str:
    """One line per path, whatever the name holds: undecodable bytes (surrogate escapes),
    control characters and line separators are shown as escapes, so a terminal never receives
    raw control bytes (a name with ESC or CR could otherwise rewrite the screen). Credentials
    (a password in a connection URL, a registered secret) are masked."""
    from ..redact import redact

    text = redact(text)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that was not valid UTF-8 (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or 0x7F <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code <= 0xDFFF or code in (0x2028, 0x2029):
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def handle_errors(prog: str, extra: tuple[type[Exception], ...] = ()) -> Callable[[F], F]:
    """Decorator: expected errors (and `extra` ones, as usage errors) become one line."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except StrongroomError as exc:
                click.echo(f"{prog}: error: {display(str(exc))}", err=True)
                sys.exit(exc.exit_code)
            except extra as exc:
                click.echo(f"{prog}: error: {display(str(exc))}", err=True)
                sys.exit(2)
            except KeyboardInterrupt:
                click.echo(f"{prog}: interrupted; nothing was committed", err=True)
                sys.exit(130)
            except OSError as exc:
                where = f" ({exc.filename})" if exc.filename else ""
                click.echo(f"{prog}: error: {display(f'{exc.strerror or exc}{where}')}", err=True)
                sys.exit(EXIT_ERROR)
            except Exception as exc:
                if os.environ.get("STRONGROOM_DEBUG"):
                    raise
                click.echo(
                    f"{prog}: internal error: {type(exc).__name__}: {display(str(exc))} "
                    "(set STRONGROOM_DEBUG=1 for details)",
                    err=True,
                )
                sys.exit(EXIT_ERROR)

        return wrapper  # type: ignore[return-value]

    return decorate
