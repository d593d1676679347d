"""How ``tiergate serve`` writes its log to stderr: text lines, or one JSON object a line.

``--log-format json`` (``TIERGATE_LOG_FORMAT``, ``log_format`` in the TOML file)
writes each record as one JSON object with ``time`` (UTC, ISO 8601 with
milliseconds), ``level``, ``logger`` and ``message``, then the structured fields
the record carries (what tiergate passes as ``extra=``: ``rpc``, ``listen``,
``senders``, ``changes`` …), then ``exception`` with the traceback if there is
one. The standard library's logging does it with the small formatter below: one
``json.dumps`` a record, no dependency to keep.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Final, TextIO

__all__ = ["LOG_FORMATS", "TEXT_FORMAT", "JsonFormatter", "configure", "handler"]

LOG_FORMATS: Final = ("text", "json")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Attributes every LogRecord has; the others on a record are its structured fields.
_RECORD_ATTRIBUTES: Final = frozenset(
    (*vars(logging.makeLogRecord({})), "message", "asctime", "taskName")
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in values are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_") and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        # default=str: a field of a type JSON lacks (a Path, an Endpoint) is logged as text.
        return json.dumps(out, default=str, ensure_ascii=False)


def handler(log_format: str, stream: TextIO | None = None) -> logging.Handler:
    """A handler writing ``log_format`` records to ``stream`` (stderr)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}: {log_format!r}")
    out = logging.StreamHandler(sys.stderr if stream is None else stream)
    out.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    return out


def configure(level: str, log_format: str) -> None:
    """Send the root logger's records at ``level`` and above to stderr as ``log_format``."""
    logging.basicConfig(level=level.upper(), handlers=[handler(log_format)], force=True)
