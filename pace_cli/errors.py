"""The one exception type the CLI turns into a clean one-line message, and its renderer."""

from __future__ import annotations


def one_line(text: object) -> str:
    """``text`` (a message, an exception) on one line: runs of whitespace become one space."""
    return " ".join(str(text).split()) or (type(text).__name__ if isinstance(text, BaseException) else "")


class PaceError(Exception):
    """A problem the user can fix, kept as parts: ``what`` was wrong, ``where``, and the ``remedy``.

    ``one_line()`` renders them as ``where: what; remedy`` (each part optional); the CLI prints
    that and exits with ``exit_code``. Code that wraps an error reads the parts it needs
    (``error.what``) instead of cutting the rendered text apart, and :meth:`with_parts` builds
    the same error with a part replaced. ``PaceError("whole message")`` is a message with no
    separate parts.
    """

    exit_code = 2

    def __init__(self, what: str, *, where: str | None = None, remedy: str | None = None,
                 exit_code: int | None = None):
        self.what = what
        self.where = where
        self.remedy = remedy
        if exit_code is not None:
            self.exit_code = exit_code
        super().__init__(self.one_line())

    def one_line(self) -> str:
        return one_line(self._sentence())

    def _sentence(self) -> str:
        """The parts in their order; a subclass whose message reads in another order overrides this."""
        text = f"{self.where}: {self.what}" if self.where else self.what
        return f"{text}; {self.remedy}" if self.remedy else text

    def with_parts(self, **parts: str | None) -> PaceError:
        """A copy of this error (same type, exit code and attributes) with some of what/where/remedy replaced."""
        unknown = set(parts) - {"what", "where", "remedy"}
        if unknown:
            raise TypeError(f"with_parts() takes what, where and remedy, not {', '.join(sorted(unknown))}")
        # not through __init__: a subclass's constructor takes its own arguments (WriteError's path, ...)
        copy = type(self).__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy.__dict__.update(parts)
        Exception.__init__(copy, copy.one_line())
        return copy


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
