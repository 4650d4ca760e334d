"""Which processes does a benchmark run start, on which CPU, and how are they stopped and watched?

Every process is started in its own session, pinned with ``taskset``, with its output in a log file
(a pipe nobody drains would stall it), and stopped by its process group id when the run ends, fails
or is interrupted. ``RssSampler`` follows a process tree's resident memory every 50 ms.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
STATIC_TOKEN = "bench-static-token"  # the stub checks presence only; direct and nginx send this
# Descriptors a proxy, wrk and the upstream may each need: 1,000 callers (the conns phase, issue 23), as many
# upstream connections for nginx, the listeners, with room.
NOFILE = 8192


def raise_nofile(want: int = NOFILE) -> int:
    """Raise this process's soft RLIMIT_NOFILE to `want` (up to the hard limit) before it starts anything: every
    process it starts inherits it (the gateway's environment is replaced, its limits are not). Returns the
    soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        soft = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 5) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_http(
    port: int,
    path: str,
    proc: subprocess.Popen[bytes],
    timeout: float = 30,
    headers: dict[str, str] | None = None,
) -> None:
    """Wait until GET path answers 200; fail early when the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before it was ready")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if http_get(port, path, headers, timeout=1)[0] == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"127.0.0.1:{port}{path} not ready within {timeout:.0f} s")


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before it listened")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


class Processes:
    """The processes of one run; leaving the ``with`` block stops every one still running."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: list[subprocess.Popen[bytes]] = []

    def start(
        self, name: str, argv: list[str], cpu: int, env: dict[str, str] | None = None, inherit_env: bool = True
    ) -> subprocess.Popen[bytes]:
        """Start `argv` pinned to `cpu`, its stdout and stderr in <workdir>/<name>.log. `env` adds to this
        process's environment, or is the whole environment when `inherit_env` is False."""
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            ["taskset", "-c", str(cpu), *argv],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})} if inherit_env else dict(env or {}),
            start_new_session=True,
        )
        log.close()
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=grace)
        # Children that outlived their leader (a server's workers) share its process group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc in self.running:
            self.running.remove(proc)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        # A Ctrl-C reaches this process twice (from the terminal and forwarded by `uv run`): the second
        # must not cut the clean-up short.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for proc in reversed(list(self.running)):
                self.stop(proc)
        finally:
            signal.signal(signal.SIGINT, previous)


def stop_on_signals() -> None:
    """Ctrl-C or SIGTERM unwinds the ``with Processes`` block once; repeats (``uv run`` forwards the
    terminal's SIGINT, so it arrives twice) are ignored so they cannot cut the clean-up short."""

    def interrupt(signum: int, frame: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def background_cpu(seconds: float = 1.0) -> float:
    """Percent of all CPUs busy over ``seconds``: other work on the machine skews every figure."""

    def times() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields), idle

    total0, idle0 = times()
    time.sleep(seconds)
    total1, idle1 = times()
    return 100.0 * (1 - (idle1 - idle0) / max(1, total1 - total0))


def log_tail(workdir: Path, name: str, lines: int = 20) -> str:
    path = workdir / f"{name}.log"
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def tree_pids(root: int) -> list[int]:
    """root and its descendants, leaving out a ``uv`` launcher (not part of what is measured)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return [pid for pid in found if comm(pid) != "uv"]


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


class RssSampler:
    """Samples the resident memory of a process tree every ``interval`` seconds in a thread."""

    def __init__(self, root: int, interval: float = 0.05) -> None:
        self.root = root
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        pids = tree_pids(self.root)
        refreshed = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - refreshed > 1:
                pids, refreshed = tree_pids(self.root), time.monotonic()
            self.samples.append(rss_bytes(pids))
            self._stop.wait(self.interval)

    def now(self) -> int:
        return rss_bytes(tree_pids(self.root))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def peak(self) -> int:
        return max(self.samples, default=0)


def nginx_conf(workdir: Path, port: int, upstream_port: int) -> Path:
    """A reference proxy doing the gateway's job minus minting: static token, CRS headers, streaming. It keeps
    up to 100 idle upstream connections, as many as the gateway's pool holds (`max_connections`' default)."""
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (workdir / "nginx" / sub).mkdir(parents=True, exist_ok=True)
    common = f"""
            proxy_pass http://upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer {STATIC_TOKEN}";"""
    text = f"""
daemon off;
worker_processes 1;
worker_rlimit_nofile {NOFILE};
pid {workdir}/nginx/nginx.pid;
error_log {workdir}/nginx/error.log warn;
events {{ worker_connections {NOFILE}; }}
http {{
    access_log {workdir}/nginx/access.log;
    client_body_temp_path {workdir}/nginx/body;
    proxy_temp_path {workdir}/nginx/proxy;
    fastcgi_temp_path {workdir}/nginx/fastcgi;
    uwsgi_temp_path {workdir}/nginx/uwsgi;
    scgi_temp_path {workdir}/nginx/scgi;
    client_max_body_size 0;
    upstream upstream {{
        server 127.0.0.1:{upstream_port};
        keepalive 100;
    }}
    server {{
        listen 127.0.0.1:{port};
        location /zaken/api/v1/ {{{common}
            proxy_set_header Accept-Crs "EPSG:4326";
            proxy_set_header Content-Crs "EPSG:4326";
        }}
        location /documenten/api/v1/ {{{common}
            proxy_request_buffering off;
            proxy_buffering off;
        }}
    }}
}}
"""
    path = workdir / "nginx" / "nginx.conf"
    path.write_text(text)
    return path


# How the image runs the gateway (Dockerfile): the console script of its venv, `serve` with the config from
# ZGW_GATEWAY_CONFIG, this environment (the base image adds LANG), stdout as the container log.
GATEWAY_ENTRY = Path(sys.executable).parent / "zgw-gateway"  # the project's venv: the harness runs in it
IMAGE_ENV = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "LANG": "C.UTF-8", "HOME": "/nonexistent"}


def select_build(interpreted: bool) -> str:
    """Which gateway every process started with IMAGE_ENV runs: the compiled build the image runs (issue 23;
    scripts/compile, its directory first on PYTHONPATH), or with `interpreted` the source tree. Returns the
    build's name, for the output and the results."""
    IMAGE_ENV.pop("PYTHONPATH", None)
    if interpreted:
        return "interpreted"
    built = subprocess.run([str(ROOT / "scripts" / "compile")], capture_output=True, text=True, check=False)
    if built.returncode != 0:
        raise SystemExit(f"{built.stderr}\nscripts/compile failed; --interpreted measures the source tree")
    IMAGE_ENV["PYTHONPATH"] = built.stdout.strip().splitlines()[-1]
    return "compiled"


def image_env(config: Path, admin_port: int, secrets: dict[str, str]) -> dict[str, str]:
    """The gateway's whole environment, as in the container: nothing inherited from the harness."""
    return {
        "PATH": f"{GATEWAY_ENTRY.parent}:/usr/local/bin:/usr/bin:/bin",
        **IMAGE_ENV,
        "ZGW_GATEWAY_CONFIG": str(config),
        "ZGW_GATEWAY_ADMIN_PORT": str(admin_port),
        **secrets,
    }


class Scraper:
    """Scrapes the gateway's /metrics every `interval` seconds in a thread, as Prometheus would."""

    def __init__(self, port: int, interval: float) -> None:
        self.port = port
        self.interval = interval
        self.scrapes = 0
        self.failures = 0
        self.last = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                status, body = http_get(self.port, "/metrics", timeout=5)
            except (OSError, http.client.HTTPException):
                status, body = 0, b""
            if status == 200:
                self.scrapes += 1
                self.last = body
            else:
                self.failures += 1

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def access_lines(log: Path) -> dict[str, int]:
    """JSON access lines in the gateway's stdout log, and the other lines (startup, shutdown, warnings)."""
    access = other = 0
    with contextlib.suppress(OSError), log.open("rb") as f:
        for line in f:
            if b'"logger":"zgw_gateway.access"' in line:
                access += 1
            elif line.strip():
                other += 1
    return {"access": access, "other": other}


def gateway_conf(workdir: Path, port: int, admin_port: int, upstream_port: int, rewrite: bool = False) -> Path:
    up = f"http://127.0.0.1:{upstream_port}"
    extra = ", rewrite_urls: true" if rewrite else ""
    text = f"""
listen: {{host: 127.0.0.1, port: {port}}}
admin: {{host: 127.0.0.1, port: {admin_port}}}
public_url: http://127.0.0.1:{port}
token: {{lifetime: 300, clock_skew: 30}}
shutdown: {{drain_seconds: 0}}
log: {{level: info, format: json, access: true}}
components:
  zaken: {{prefix: /zaken/api/v1, upstream: {up}/zaken/api/v1, crs: EPSG:4326{extra}}}
  documenten: {{prefix: /documenten/api/v1, upstream: {up}/documenten/api/v1{extra}}}
callers:
  - name: bench
    api_keys: [{{env: BENCH_API_KEY}}]
    client_id: bench-client
    secret: {{env: BENCH_SECRET}}
    components: [zaken, documenten]
"""
    path = workdir / ("gateway-rewrite.yaml" if rewrite else "gateway.yaml")
    path.write_text(text)
    return path
