"""How a bench run drives load: the targets (a port and the caller's headers), wrk and bench/loadgen.py,
each a process pinned to the load CPU, and what each one reports."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from procs import BENCH

PAGE = "/zaken/api/v1/zaken"
LOAD_CPU, PROXY_CPU = 0, 1


@dataclass
class Target:
    """One way to reach the upstream: its port and the headers a caller sends on it."""

    name: str
    port: int
    headers: dict[str, str]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def header_args(self) -> list[str]:
        return [arg for k, v in self.headers.items() for arg in ("-H", f"{k}: {v}")]


def wrk(p: Target, path: str, duration: int, connections: int = 50) -> dict[str, Any]:
    """`wrk -t1 -c<connections>` for `duration` seconds: req/s, p50/p99, and the errors: answers other than
    2xx or 3xx (`non_2xx`: wrk's status errors) and socket errors (connect, read, write, timeouts)."""
    argv = [
        "taskset", "-c", str(LOAD_CPU), "wrk", "-t1", f"-c{connections}", f"-d{duration}s",
        "-s", str(BENCH / "wrk_report.lua"), *p.header_args(), p.url(path),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    sockets = sum(report[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts"))
    return {
        "rps": report["requests"] / (report["duration_us"] / 1e6),
        "requests": report["requests"],
        "p50_ms": report["p50_us"] / 1000,
        "p99_ms": report["p99_us"] / 1000,
        "errors": sockets + report["status_errors"],
        "non_2xx": report["status_errors"],
        "socket_errors": sockets,
    }


def loadgen(mode: str, url: str, headers: list[str], extra: list[str], timeout: float) -> dict[str, Any]:
    argv = ["taskset", "-c", str(LOAD_CPU), sys.executable, str(BENCH / "loadgen.py"), mode, url, *headers, *extra]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen {mode} {url} failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result
