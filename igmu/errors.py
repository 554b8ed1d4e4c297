"""Errors that reach the user as one line, not as a traceback: exit code 2 for bad input, 1 for a run
that failed as a whole, 130 for a run the user stopped."""


class UsageError(ValueError):
    """Bad user input: an unknown name, an out-of-range value, a missing or unreadable file."""

    exit_code = 2


class RunFailed(RuntimeError):
    """Valid input, but the work failed as a whole (every trial of a sweep errored)."""

    exit_code = 1


class RunInterrupted(RunFailed):
    """The user stopped the run (Ctrl-C): what finished is kept, and the run can be resumed."""

    exit_code = 130
