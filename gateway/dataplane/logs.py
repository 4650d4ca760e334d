"""How the gateway writes logs: one JSON object per line (or readable console lines), on stdout.

Fields come from `extra=` of the logging call. Nothing here ever sees a header value unless the operator
allow-listed the header (`log.headers`), and Authorization, Cookie and the API key header cannot be
allow-listed (config.Log).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from typing import Any

import orjson

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName", "color_message"}
ACCESS_LOGGER = "zgw_gateway.access"
FLUSH_SECONDS = 0.1
FLUSH_BYTES = 64 * 1024
_ACCESS_HEAD = f'"level":"info","logger":"{ACCESS_LOGGER}","msg":"request"'


def _dumps(fields: dict[str, Any]) -> str:
    # orjson: several times faster than json.dumps, and this runs once per request.
    return orjson.dumps(fields, default=str).decode()


_second = (0, "")  # the last whole second formatted, for the once-per-request access line
_MILLIS = [f".{ms:03d}Z" for ms in range(1000)]  # a format spec per line cost more than the rest of `_utc`


def _utc(created: float) -> str:
    global _second
    whole = int(created)
    if whole != _second[0]:
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return _second[1] + _MILLIS[int(created * 1000) % 1000]


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_fields(record))
        if record.exc_info and record.exc_info[0] is not None:
            # The type only: exception text may carry values (URLs, header fragments) from a request.
            out["exception"] = record.exc_info[0].__name__
        return _dumps(out)


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if record.exc_info and record.exc_info[0] is not None:
            extra += f" exception={record.exc_info[0].__name__}"
        return f"{line} {extra}".rstrip()


class _AccessWriter:
    """Access lines written straight to the stream: the same line a logging call would give, at a fraction
    of the cost (no LogRecord, no handler chain), because this runs once per proxied request.

    The writer keeps its own buffer and hands it to the stream in one write at most FLUSH_SECONDS after a
    line was added (sooner past FLUSH_BYTES, and at exit), whatever buffering the interpreter gives stdout:
    the image runs with PYTHONUNBUFFERED=1, where every stream write is a write(2) (bench/README.md has the
    count of writes per access line). A process killed with SIGKILL can lose the last FLUSH_SECONDS of
    access lines; nothing else can.
    """

    def __init__(self, stream: Any, fmt: str) -> None:
        self.stream = stream
        self.json = fmt == "json"
        self._lines: list[str] = []
        self._size = 0
        self._pending = False

    def write(self, fields: dict[str, Any]) -> None:
        now = time.time()
        if self.json:
            # What `_dumps({"time": ..., "level": ..., "logger": ..., "msg": ...} | fields)` gives (no field
            # is called one of those four), without building the merged dict.
            rest = _dumps(fields)
            line = f'{{"time":"{_utc(now)}",{_ACCESS_HEAD}' + ("," + rest[1:] if len(rest) > 2 else "}")
        else:
            stamp = time.strftime("%H:%M:%S", time.localtime(now))
            line = f"{stamp} INFO    {ACCESS_LOGGER}: request " + " ".join(f"{k}={v}" for k, v in fields.items())
        self._lines.append(line + "\n")
        self._size += len(line) + 1
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif not self._pending:
            try:
                loop = asyncio.get_running_loop()  # once per FLUSH_SECONDS at most, not per line
            except RuntimeError:
                self.flush()
                return
            self._pending = True
            loop.call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        self._pending = False
        if not self._lines:
            return
        text = "".join(self._lines)
        self._lines.clear()
        self._size = 0
        with contextlib.suppress(ValueError, OSError):  # a closed or broken stdout must not break a request
            self.stream.write(text)
            self.stream.flush()


_access: _AccessWriter | None = None


class _InOrder(logging.StreamHandler):  # type: ignore[type-arg]
    """Other log lines go out after the access lines written before them (they are rare; flushing first is cheap)."""

    def emit(self, record: logging.LogRecord) -> None:
        flush()
        super().emit(record)


def access(fields: dict[str, Any]) -> None:
    """Write one access line (through `logging` when `setup` was not called, e.g. in tests)."""
    if _access is not None:
        _access.write(fields)
    else:
        logging.getLogger(ACCESS_LOGGER).info("request", extra=fields)


def flush() -> None:
    if _access is not None:
        _access.flush()


def setup(level: str = "info", fmt: str = "json") -> None:
    """Route the gateway's and the servers' loggers to stdout in the chosen format."""
    global _access
    _access = _AccessWriter(sys.stdout, fmt) if logging.getLevelName(level.upper()) <= logging.INFO else None
    handler = _InOrder(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("granian", "_granian"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    # The server's own access log would duplicate ours (and could show query strings).
    logging.getLogger("granian.access").disabled = True
    # httpx logs every request's URL at INFO; the notification relay writes its own access line instead.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def allowed_headers(raw_headers: list[tuple[bytes, bytes]], allow: list[bytes]) -> dict[str, str]:
    """The request headers the operator allow-listed (`log.headers`, lower case) for the access log."""
    out: dict[str, str] = {}
    for name, value in raw_headers:
        lname = name.lower()
        if lname in allow:
            text = value.decode("latin-1")[:256]  # bounded: a log line must not grow with a caller's header
            out[lname.decode()] = f"{out[lname.decode()]}, {text}" if lname.decode() in out else text
    return out
