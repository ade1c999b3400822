"""Structured logs: JSON lines (or text) with a level switch (docs/tracing.md §7).

::

    import lama.log
    lama.log.configure()                  # LAMA_LOG_LEVEL / LAMA_LOG_FORMAT, else info / json
    log.info("message posted", extra={"fields": {"message_id": m.id, "peer": p}})

One JSON object per record: ``{"ts", "level", "logger", "msg", "event"?, ...fields}``. Records
below the level are dropped by :mod:`logging` before anything is formatted.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import IO, Any

from lama.errors import InvalidArgumentError

__all__ = ["JsonFormatter", "configure", "LEVELS", "FORMATS"]

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("json", "text")
LEVEL_ENV = "LAMA_LOG_LEVEL"
FORMAT_ENV = "LAMA_LOG_FORMAT"

_HANDLER_MARK = "_lama_log_handler"


class JsonFormatter(logging.Formatter):
    """A record as one JSON line; ``extra={"fields": {...}}`` adds fields (``event`` among
    them by convention); an exception adds ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        t = record.created
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"
        out: dict[str, Any] = {"ts": ts, "level": record.levelname.lower(),
                               "logger": record.name, "msg": record.getMessage()}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for k, v in fields.items():
                if k not in out:
                    out[str(k)] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``HH:MM:SS.mmm level logger: msg key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        t = record.created
        line = (time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d} "
                f"{record.levelname.lower():7} {record.name}: {record.getMessage()}")
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure(level: str | None = None, fmt: str | None = None,
              stream: IO[str] | None = None) -> logging.Handler:
    """Send the ``lama`` loggers' records at ``level`` and above to ``stream`` (default
    stderr) as JSON lines (``fmt="json"``) or text. ``None`` takes ``$LAMA_LOG_LEVEL`` /
    ``$LAMA_LOG_FORMAT``, else ``info`` / ``json``. Calling it again replaces the handler it
    installed before. Returns the handler."""
    level = (level or os.environ.get(LEVEL_ENV) or "info").lower()
    fmt = (fmt or os.environ.get(FORMAT_ENV) or "json").lower()
    if level not in LEVELS:
        raise InvalidArgumentError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}",
                                   code="LAMA-ARG")
    if fmt not in FORMATS:
        raise InvalidArgumentError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}",
                                   code="LAMA-ARG")
    logger = logging.getLogger("lama")
    for h in list(logger.handlers):
        if getattr(h, _HANDLER_MARK, False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(getattr(logging, level.upper()))
    logger.propagate = False
    return handler
