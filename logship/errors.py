"""Errors a user can cause, each carrying the documented exit code."""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3


def first_line(exc: BaseException) -> str:
    """An exception as one line: drivers' messages run over several."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class LogshipError(Exception):
    """An error reported as one line (what, where, what to do) with an exit code."""

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
