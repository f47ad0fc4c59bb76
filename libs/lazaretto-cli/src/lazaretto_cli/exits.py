"""The exit codes scripts can rely on, and the one exception that carries them to the command line."""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    # The service refused (409, 404, 422, ...) or the operation failed (a modem not back, a broken audit
    # chain, an invalid rule file, a problem found by `doctor`).
    FAILED = 1
    # Bad arguments or no token: nothing was asked of any service.
    USAGE = 2
    # A service could not be reached (connection refused, timeout, name not resolved).
    UNREACHABLE = 3
    # The token is unknown (401) or its role is too low for the operation (403).
    NOT_PERMITTED = 4


EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 refused or failed (the service said no, or the check found a problem); "
    "2 usage (bad arguments, no token); 3 a service unreachable; 4 token unknown or role too low."
)


class CliError(Exception):
    """Stops the command with a one-line message on stderr and an exit code."""

    def __init__(self, message: str, code: Exit) -> None:
        super().__init__(message)
        self.code = code
