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


def describe_key_mismatch(expected, given, *, missing_what: str, unknown_what: str) -> str | None:
    """'3 <missing_what> (e.g. x); 1 <unknown_what> (e.g. y)', or None when the key sets agree."""
    missing = sorted(set(expected) - set(given))
    unknown = sorted(set(given) - set(expected))
    parts = []
    if missing:
        parts.append(f"{len(missing)} {missing_what} (e.g. {missing[0]})")
    if unknown:
        parts.append(f"{len(unknown)} {unknown_what} (e.g. {unknown[0]})")
    return "; ".join(parts) or None
