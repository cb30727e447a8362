"""Structured logs: one JSON object per line on stderr.

Fields are passed explicitly, never whole config objects, so no secret (a DSN
password, a key path's content) can slip into a log line by accident.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from typing import Any

from logship import jsonout

_FIELDS = "logship_fields"


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        line.update(getattr(record, _FIELDS, {}))
        if record.exc_info and record.levelno >= logging.ERROR:
            line["exception"] = self.formatException(record.exc_info)
        return jsonout.dumps(line, default=str)


def setup_logging(debug: bool = False, stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    # Python warnings become log lines too: stderr stays JSON lines. watchdog
    # warns when a new folder's watch is added twice (once for the folder,
    # once by the recursive walk of its parent): harmless, and frequent.
    logging.captureWarnings(True)
    warnings.filterwarnings(
        "ignore", message="Callback with id .* already exists", category=RuntimeWarning
    )
    # paramiko and apscheduler are chatty at INFO; their problems surface through ours.
    for noisy in ("paramiko", "apscheduler", "watchdog"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)


def fields(**values: Any) -> dict[str, Any]:
    """`extra=` for a plain logging call (one with exc_info, say): these fields
    become keys of the JSON line, as with `event`."""
    return {_FIELDS: values}


def event(logger: logging.Logger, level: int, name: str, **values: Any) -> None:
    logger.log(level, name, extra=fields(**values))
