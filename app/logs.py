"""Logging to stderr: one line per event, JSON lines when stderr is not a terminal."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """For a person at a terminal: time, level, what happened, then `key=value` (quoted when a value
    has spaces). An access line leads with the request as one reads it: `GET /v2/x/manifests/1 200`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        fields = dict(getattr(record, "fields", None) or {})
        if record.name == "registry.access" and "method" in fields:
            target = str(fields.pop("path", ""))
            query = fields.pop("query", None)
            if query:
                target += f"?{query}"
            record = logging.makeLogRecord({**record.__dict__, "msg": (
                f"{fields.pop('method')} {target} {fields.pop('status', '')} "
                f"{fields.pop('duration_ms', '')} ms"), "args": ()})
        line = super().format(record)
        if fields:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items() if v is not None)
        return line


def _text_value(value: object) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c.isspace() or c == '"' for c in text)) else text


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs requests its parser rejects (bad request line, oversized headers) as errors with a
    traceback, before any middleware runs. They are the client's fault: one warning line, no trace."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__module__.startswith("aiohttp.http_exceptions"):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "rejected a malformed request: %s", (exc,)
            record.exc_info = None
            record.exc_text = None
        return True


LEVELS = {"debug": "DEBUG", "info": "INFO", "warning": "WARNING", "warn": "WARNING", "error": "ERROR"}


def setup_logging(*handlers: logging.Handler) -> None:
    """Log to stderr (or to `handlers`: a service host's log file and Event Log), at REGISTRY_LOG."""
    level = LEVELS.get(os.environ.get("REGISTRY_LOG", "info").strip().lower(), "INFO")
    if not handlers:
        handler = logging.StreamHandler(sys.stderr)
        stream = sys.stderr
        handler.setFormatter(TextFormatter() if stream is not None and stream.isatty() else JsonFormatter())
        handlers = (handler,)
    root = logging.getLogger()
    root.handlers[:] = list(handlers)
    root.setLevel(level)
    # pykka logs every exception an actor hands back to its caller; those are answered, not failures.
    logging.getLogger("pykka").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(MalformedRequestFilter())
