"""Errors that reach the user as one line and exit code 2 (bad input), not as a traceback."""


class UsageError(ValueError):
    """Bad user input: an unknown name, an out-of-range value, a missing or unreadable file."""

    exit_code = 2
