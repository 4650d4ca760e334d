"""How the gateway writes logs: one JSON object per line (or readable console lines), on stdout.

Fields come from `extra=` of the logging call. Nothing here ever sees a header value unless the operator
allow-listed the header (`log.headers`), and Authorization, Cookie and the API key header cannot be
allow-listed (config.Log).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName", "color_message"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_fields(record))
        if record.exc_info and record.exc_info[0] is not None:
            # The type only: exception text may carry values (URLs, header fragments) from a request.
            out["exception"] = record.exc_info[0].__name__
        return json.dumps(out, ensure_ascii=False, default=str)


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if record.exc_info and record.exc_info[0] is not None:
            extra += f" exception={record.exc_info[0].__name__}"
        return f"{line} {extra}".rstrip()


def setup(level: str = "info", fmt: str = "json") -> None:
    """Route the gateway's and the servers' loggers to stdout in the chosen format."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "granian", "_granian", "aiohttp"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    # The servers' own access logs would duplicate ours (and could show query strings).
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("granian.access").disabled = True


def allowed_headers(raw_headers: list[tuple[bytes, bytes]], allow: list[bytes]) -> dict[str, str]:
    """The request headers the operator allow-listed (`log.headers`, lower case) for the access log."""
    out: dict[str, str] = {}
    for name, value in raw_headers:
        lname = name.lower()
        if lname in allow:
            text = value.decode("latin-1")[:256]  # bounded: a log line must not grow with a caller's header
            out[lname.decode()] = f"{out[lname.decode()]}, {text}" if lname.decode() in out else text
    return out
