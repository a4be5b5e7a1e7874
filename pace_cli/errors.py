"""The one exception type the CLI turns into a clean one-line message."""


class PaceError(Exception):
    """A problem the user can fix: say what was wrong, where, and how to fix it, in one line.

    The CLI prints ``str(error)`` and exits with ``exit_code``; library callers can catch it.
    """

    exit_code = 2

    def __init__(self, message: str, *, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
