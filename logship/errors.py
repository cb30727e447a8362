"""Errors a user can cause, each carrying the documented exit code."""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3


def first_line(exc: BaseException) -> str:
    """An exception as one line: drivers' messages run over several."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def printable(text: str) -> str:
    """`text` with control and other unprintable characters escaped (\\n, \\x00, ...)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def shown_text(text: str, limit: int = 300) -> str:
    """Text from elsewhere (the site, a driver) fit for a terminal: control and
    escape characters escaped, cut to `limit` characters with an ellipsis."""
    text = printable(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class LogshipError(Exception):
    """An error reported as one line (what, where, what to do) with an exit code.

    The line holds what a user wrote (a key, a file name) and may quote it: a
    newline or a control character in there is shown escaped, never raw.
    """

    def __str__(self) -> str:
        return printable(super().__str__())

    exit_code = EXIT_FAILED


class ConfigError(LogshipError):
    exit_code = EXIT_USAGE


class UsageError(LogshipError):
    exit_code = EXIT_USAGE


class OperationFailed(LogshipError):
    exit_code = EXIT_FAILED


class SafetyRefusal(LogshipError):
    """Refused because going on could lose or corrupt data, or trust an unknown host."""

    exit_code = EXIT_REFUSED


class HostKeyRefused(SafetyRefusal):
    pass
