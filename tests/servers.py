"""Real servers on 127.0.0.1 for the tests: the gateway as a process, and ASGI apps in threads."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml

ROOT = Path(__file__).resolve().parent.parent
# The official OpenAPI documents the tests read, in the repository (specs/SOURCES.md says where each comes from).
SPECS = ROOT / "specs"


def free_port() -> int:
    """A port nothing listens on, for a server a test is about to start. Taken below the kernel's ephemeral
    range: a port from that range (what binding to port 0 gives) can become the source port of any outgoing
    connection - the gateway's to its upstream, a client's - before the server binds it. Random, so suites
    running side by side rarely pick the same one."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(max(1024, low - 16384), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port below {low}")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError("condition not met in time")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


class ManualClock:
    """The tests' one fake clock: stands still until the test moves it (`advance`, or set `now`). Stands in
    for a wall clock (`create_app(config, clock=...)`, the sandbox) and a monotonic one (breaker, limiter)."""

    def __init__(self, now: float | None = None) -> None:
        self.now = float(int(time.time())) if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class ThreadServer:
    """An ASGI app under uvicorn in a background thread (for upstream doubles the test inspects)."""

    app: Any
    port: int = 0
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_ca_certs: str | None = None  # with this, client certificates are required (mTLS)
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None

    def __enter__(self) -> ThreadServer:
        self.port = self.port or free_port()
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="auto",
            proxy_headers=False,  # upstream doubles see X-Forwarded-* as headers, like Open Zaak does
            ssl_certfile=self.ssl_certfile,
            ssl_keyfile=self.ssl_keyfile,
            ssl_ca_certs=self.ssl_ca_certs,
            ssl_cert_reqs=ssl.CERT_REQUIRED if self.ssl_ca_certs else ssl.CERT_NONE,
        )
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server is not None and self.server.started, 10)
        return self

    def _run(self) -> None:
        assert self.server is not None
        with contextlib.suppress(Exception):
            asyncio.run(self.server.serve())

    def __exit__(self, *exc: object) -> None:
        assert self.server is not None and self.thread is not None
        self.server.should_exit = True
        self.thread.join(10)

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_certfile else "http"
        return f"{scheme}://127.0.0.1:{self.port}"


@contextlib.contextmanager
def gateway_in_thread(
    config: dict[str, Any], clock: Callable[[], float], environ: dict[str, str]
) -> Iterator[tuple[str, Callable[[], str]]]:
    """The gateway app on an injected clock, under uvicorn in a thread; yields its URL and its exposition."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import generate_latest

    from gateway.config.loading import parse
    from gateway.dataplane.app import create_app

    registry = CollectorRegistry()
    app = create_app(parse(config), clock=clock, environ=environ, registry=registry)
    with ThreadServer(app) as server:
        yield server.url, lambda: generate_latest(registry).decode()


@dataclass
class GatewayProcess:
    """`zgw-gateway serve` as a real process, with its stdout kept for inspection."""

    config: dict[str, Any]
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def port(self) -> int:
        return int(self.config["listen"]["port"])

    @property
    def admin_port(self) -> int:
        return int(self.config["admin"]["port"])

    @property
    def url(self) -> str:
        scheme = "https" if self.config["listen"].get("tls") else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "gateway.yaml"

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def start(self, wait_ready: bool = True) -> GatewayProcess:
        self.write_config()
        self.log_path = self.workdir / f"gateway-{self.port}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--config", str(self.config_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
            )
        if wait_ready:
            self.wait_ready()
        else:
            wait_until(lambda: port_open(self.admin_port), 15)
        return self

    def wait_ready(self, timeout: float = 15) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                return httpx.get(self.admin_url + "/-/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def log_lines(self) -> list[str]:
        return self.logs().splitlines()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def metrics(self) -> str:
        return httpx.get(self.admin_url + "/metrics", timeout=5).text


def rss(pid: int) -> int:
    """Resident memory of a process, in bytes."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def metric_value(exposition: str, name: str, default: float | None = None, **labels: str) -> float:
    """The sum of samples of `name` whose labels include `labels`.

    A metric name the exposition does not have, or a label it does not carry, is an error: a renamed metric
    must fail the test, not read 0. A series that does not exist yet (no sample with these label values) is
    an error too, unless the test passes `default` deliberately: prometheus_client makes a labelled series
    only when it is first counted, so "none yet" is a legitimate answer for such a series."""
    matching = _series(exposition, name, labels)
    if not matching:
        assert default is not None, f"no series {name}{labels} in the exposition"
        return default
    return sum(matching)


def metric_absent(exposition: str, name: str, **labels: str) -> bool:
    """True when the metric `name` exists but has no series with these label values (none counted yet)."""
    return not _series(exposition, name, labels)


_SUFFIXES = ("", "_total", "_count", "_sum", "_bucket", "_created")


def _series(exposition: str, name: str, labels: dict[str, str]) -> list[float]:
    from prometheus_client.parser import text_string_to_metric_families

    found = False
    samples = []
    for family in text_string_to_metric_families(exposition):
        # A family with no series yet still has its HELP and TYPE lines: it exists, with no samples.
        found = found or name in {family.name + suffix for suffix in _SUFFIXES}
        samples += [sample for sample in family.samples if sample.name == name]
    assert found, f"no metric {name} in the exposition"
    known = {k for sample in samples for k in sample.labels}
    unknown = set(labels) - known
    assert not samples or not unknown, f"{name} has no label(s) {sorted(unknown)}; it has {sorted(known)}"
    return [s.value for s in samples if all(s.labels.get(k) == v for k, v in labels.items())]


@contextlib.contextmanager
def sandbox_process(clients: dict[str, str], page_size: int = 100, host: str = "127.0.0.1") -> Iterator[str]:
    """The sandbox upstream as a process; yields its base URL."""
    port = free_port()
    args = [sys.executable, "-m", "zgw_sandbox", "--host", host, "--port", str(port), "--page-size", str(page_size)]
    env = {**os.environ, "SANDBOX_CLIENTS": ",".join(f"{k}={v}" for k, v in clients.items())}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: port_open(port, host), 15)
        yield f"http://{host}:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
