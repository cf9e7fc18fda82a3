"""Errors a user can act on. Each carries the process exit code the CLI should use."""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3


class StrongroomError(Exception):
    """An expected failure: printed as one line, never as a traceback."""

    exit_code = EXIT_ERROR


class WrongPasswordError(StrongroomError):
    pass


class RepositoryError(StrongroomError):
    """The repository is missing, locked, or not what we expected."""


class IntegrityError(StrongroomError):
    """Stored data failed authentication or does not match its ID."""


class UsageError(StrongroomError):
    exit_code = EXIT_USAGE
