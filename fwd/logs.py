"""Log output of the daemon: text (``fwd: info: ...``, one line per record, what the CLI has always
printed) or JSON lines (``--log-format json`` / ``[daemon] log_format``), both on stderr, which
systemd's journal collects.

A JSON line holds ``time`` (UTC, ISO 8601, milliseconds), ``level``, ``logger``, ``msg`` (one
line) and every field the caller passed with ``extra={...}`` (for example ``event``, ``table``,
``backend``, ``rows_changed``, ``generation``), so log processors need not parse the text.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import UTC, datetime

__all__ = ["JsonLineHandler", "TextLineHandler", "use_format"]

# attributes every LogRecord has: anything else came from extra={...}
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def _one_line(text: str) -> str:
    return " ".join(text.split())


class TextLineHandler(logging.Handler):
    """``fwd: LEVEL: message`` on the current sys.stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(f"fwd: {record.levelname.lower()}: {_one_line(record.getMessage())}\n")
            if record.exc_info and record.levelno >= logging.ERROR:
                sys.stderr.write("".join(traceback.format_exception(*record.exc_info)))
            sys.stderr.flush()
        except Exception:  # pragma: no cover - logging must not fail the daemon
            self.handleError(record)


class JsonLineHandler(logging.Handler):
    """One JSON object per record on the current sys.stderr."""

    def format_record(self, record: logging.LogRecord) -> dict[str, object]:
        obj: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _one_line(record.getMessage()),
        }
        for k, v in vars(record).items():
            if k not in _STANDARD and not k.startswith("_") and k not in obj:
                obj[k] = v
        if record.exc_info:
            obj["exception"] = "".join(traceback.format_exception(*record.exc_info))
        return obj

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(json.dumps(self.format_record(record), default=str) + "\n")
            sys.stderr.flush()
        except Exception:  # pragma: no cover
            self.handleError(record)


def use_format(fmt: str, level: int = logging.INFO, logger_name: str = "fwd") -> None:
    """Make the ``fwd`` logger write ``fmt`` (text | json) at ``level``; replaces its handlers."""
    logger = logging.getLogger(logger_name)
    for h in list(logger.handlers):
        logger.removeHandler(h)
    handler: logging.Handler = JsonLineHandler(level) if fmt == "json" else TextLineHandler(level)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
