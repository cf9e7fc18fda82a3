"""`strongroom`: the program's entry point. The commands are registered in `app.py`."""

from __future__ import annotations

from .app import cli, handle_errors

__all__ = ["cli", "handle_errors", "main"]


def main() -> None:
    cli(prog_name="strongroom")


if __name__ == "__main__":
    main()
