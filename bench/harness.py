"""How does the gateway compare with no proxy and with nginx doing the same job minus minting?

Started by ``bench/run`` (see bench/README.md). CPU layout on the 2-core machine: both proxies, nginx and
the gateway, on CPU 1, measured one at a time (the other idles), so each one's figures are what one core
buys; the upstream stub, wrk, the Python load generator and the harness share CPU 0. Prints a table, then one
JSON line, also written to bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conns import measure_conns
from load import LOAD_CPU, PAGE, PROXY_CPU, Target, loadgen, wrk
from procs import (
    BENCH,
    GATEWAY_ENTRY,
    STATIC_TOKEN,
    Processes,
    RssSampler,
    Scraper,
    access_lines,
    background_cpu,
    free_port,
    gateway_conf,
    http_get,
    image_env,
    log_tail,
    nginx_conf,
    raise_nofile,
    select_build,
    stop_on_signals,
    wait_http,
    wait_port,
)
from streams import measure, scenarios
from summary import print_table, summarize

MB = 1024 * 1024


@dataclass
class Bench:
    args: argparse.Namespace
    workdir: Path
    procs: Processes
    paths: dict[str, Target] = field(default_factory=dict)
    nginx: subprocess.Popen[bytes] | None = None
    gateway: subprocess.Popen[bytes] | None = None
    gateway_env: dict[str, str] = field(default_factory=dict)
    gateway_config: Path | None = None
    admin_port: int = 0
    result: dict[str, Any] = field(default_factory=dict)

    def start_upstream(self) -> None:
        port = free_port()
        proc = self.procs.start("upstream", [sys.executable, str(BENCH / "upstream.py"), "--port", str(port)], LOAD_CPU)
        wait_port(port, proc)
        self.paths["direct"] = Target(
            "direct", port, {"Authorization": f"Bearer {STATIC_TOKEN}", "Accept-Crs": "EPSG:4326"}
        )

    def start_nginx(self) -> None:
        port = free_port()
        conf = nginx_conf(self.workdir, port, self.paths["direct"].port)
        argv = [
            "nginx",
            "-p",
            str(self.workdir / "nginx"),
            "-c",
            str(conf),
            "-e",
            str(self.workdir / "nginx/error.log"),
        ]
        self.nginx = self.procs.start("nginx", argv, PROXY_CPU)
        wait_port(port, self.nginx)
        self.paths["nginx"] = Target("nginx", port, {})

    def start_gateway(self) -> None:
        if self.gateway_config is None:
            port, self.admin_port = free_port(), free_port()
            self.gateway_config = gateway_conf(self.workdir, port, self.admin_port, self.paths["direct"].port)
            key = secrets.token_urlsafe(24)
            self.gateway_env = {"BENCH_API_KEY": key, "BENCH_SECRET": secrets.token_urlsafe(32)}
            self.paths["gateway"] = Target("gateway", port, {"X-API-Key": key})
        env = image_env(self.gateway_config, self.admin_port, self.gateway_env)
        self.gateway = self.procs.start("gateway", [str(GATEWAY_ENTRY), "serve"], PROXY_CPU, env, inherit_env=False)
        try:
            wait_http(self.admin_port, "/-/ready", self.gateway, timeout=60)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{log_tail(self.workdir, 'gateway')}") from exc

    def restart_gateway(self) -> None:
        if self.gateway is not None:
            self.procs.stop(self.gateway)
        self.start_gateway()

    def check_paths(self) -> None:
        """Every path answers the page with 200 before anything is measured (proves the injected headers)."""
        for p in self.paths.values():
            status, body = http_get(p.port, PAGE, p.headers)
            if status != 200 or b'"results"' not in body:
                raise RuntimeError(f"{p.name}: GET {PAGE} answered {status}: {body[:200]!r}")

    def gateway_rss(self) -> RssSampler:
        if self.gateway is None:
            raise RuntimeError("the gateway is not running")
        return RssSampler(self.gateway.pid)

    def throughput(self) -> None:
        rounds, duration = self.args.rounds, self.args.duration
        for p in self.paths.values():
            wrk(p, PAGE, max(1, duration // 3))  # warm-up: connections, caches, the first token
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in self.paths}
        steady: list[int] = []
        for r in range(rounds):
            for name, p in self.paths.items():
                if name == "gateway":
                    with self.gateway_rss() as rss:
                        run = wrk(p, PAGE, duration)
                    steady.extend(rss.samples[len(rss.samples) // 5 :])  # skip the ramp-up
                else:
                    run = wrk(p, PAGE, duration)
                runs[name].append(run)
                print(f"  round {r + 1}/{rounds} {name:8} {run['rps']:10.0f} req/s  errors {run['errors']}")
        self.result["throughput"] = {
            name: {
                "rps_median": statistics.median(x["rps"] for x in rs),
                "rps_runs": [round(x["rps"]) for x in rs],
                "p50_ms": statistics.median(x["p50_ms"] for x in rs),
                "p99_ms": statistics.median(x["p99_ms"] for x in rs),
                "errors": sum(x["errors"] for x in rs),
            }
            for name, rs in runs.items()
        }
        if steady:
            self.result["steady_rss_mb"] = {
                "median": statistics.median(steady) / MB,
                "max": max(steady) / MB,
            }

    def conns(self) -> None:
        """1,000 concurrent keep-alive callers against 50, and the memory of idle ones: bench/conns.py."""
        proxies = {
            name: (self.paths[name], proc.pid)
            for name, proc in (("nginx", self.nginx), ("gateway", self.gateway))
            if proc is not None
        }
        self.result["conns"] = measure_conns(proxies, self.paths["direct"].port, self.args.rounds, self.args.duration)

    def rewrite(self) -> None:
        """The same page through a second gateway with rewrite_urls on, rounds interleaved with the first."""
        plain = self.paths["gateway"]
        port, admin = free_port(), free_port()
        conf = gateway_conf(self.workdir, port, admin, self.paths["direct"].port, rewrite=True)
        env = image_env(conf, admin, self.gateway_env)
        proc = self.procs.start("gateway-rewrite", [str(GATEWAY_ENTRY), "serve"], PROXY_CPU, env, inherit_env=False)
        try:
            wait_http(admin, "/-/ready", proc, timeout=60)
            rewriting = Target("gateway-rewrite", port, plain.headers)
            status, body = http_get(port, PAGE, plain.headers)
            if status != 200 or f"127.0.0.1:{port}/zaken/api/v1/".encode() not in body:
                raise RuntimeError(f"gateway-rewrite: the page was not rewritten ({status}): {body[:200]!r}")
            wrk(rewriting, PAGE, max(1, self.args.duration // 3))
            runs: dict[str, list[float]] = {"plain": [], "rewriting": []}
            for r in range(self.args.rounds):
                for name, target in (("plain", plain), ("rewriting", rewriting)):
                    rps = wrk(target, PAGE, self.args.duration)["rps"]
                    runs[name].append(rps)
                    print(f"  round {r + 1}/{self.args.rounds} {name:10} {rps:10.0f} req/s")
        finally:
            self.procs.stop(proc)
        medians = {name: statistics.median(v) for name, v in runs.items()}
        self.result["rewrite"] = {"rps_median": medians, "rps_runs": runs}

    def latency(self) -> None:
        """Interleaved rounds like the throughput phase (a drifting machine moves every path alike); per path
        the median of the rounds' p50 and p99. For the gateway, its access lines of each round split the
        time: inside the app (upstream wait and its own work) and outside it (server hand-over, loopback)."""
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in self.paths}
        for r in range(self.args.rounds):
            for name, p in self.paths.items():
                offset = log_size(self.workdir / "gateway.log") if name == "gateway" else 0
                run = loadgen(
                    "rate",
                    p.url(PAGE),
                    p.header_args(),
                    ["--rate", str(self.args.rate), "--duration", str(self.args.latency_duration)],
                    timeout=self.args.latency_duration + 60,
                )
                if name == "gateway":
                    run["inside"] = inside_split(self.workdir / "gateway.log", offset, run)
                rounds[name].append(run)
                split = run.get("inside")
                extra = (
                    f"  inside: upstream {split['upstream_ms']:.2f} + own {split['own_ms']:.2f} ms,"
                    f" outside {split['outside_ms']:.2f} ms"
                    if split
                    else ""
                )
                print(f"  round {r + 1}/{self.args.rounds} {name:8} p50 {run['p50_ms']:6.2f} ms  p99 "
                      f"{run['p99_ms']:6.2f} ms  statuses {run['statuses']}{extra}")  # fmt: skip
        out: dict[str, Any] = {}
        for name, runs in rounds.items():
            out[name] = {
                "p50_ms": statistics.median(x["p50_ms"] for x in runs),
                "p99_ms": statistics.median(x["p99_ms"] for x in runs),
                "rounds": runs,
            }
            splits = [x["inside"] for x in runs if x.get("inside")]
            if splits:
                out[name]["inside"] = {k: statistics.median(s[k] for s in splits) for k in splits[0]}
        self.result["latency"] = out

    def stream(self) -> None:
        out: dict[str, Any] = {}
        for scenario, mode, size, count in scenarios(self.args):
            out[scenario] = {}
            for name in ("direct", "nginx", "gateway"):
                p = self.paths.get(name)
                if p is None:
                    continue
                rss = self.gateway_rss if name == "gateway" else None
                r = measure(mode, p.url(""), p.header_args(), size, count, LOAD_CPU, rss)
                out[scenario][name] = r
                growth = f"  RSS growth {r['rss_mb']['growth']:.1f} MB" if "rss_mb" in r else ""
                speed = f"{r['seconds']:6.2f} s {r['mib_per_s']:8.0f} MiB/s"
                print(f"  {scenario:13} {name:8} {speed}  ok={r['ok']}{growth}")
        self.result["stream"] = out

    def burst(self) -> None:
        self.restart_gateway()
        before = tokens_minted(self.admin_port)
        p = self.paths["gateway"]
        r = loadgen("burst", p.url(PAGE), p.header_args(), ["-n", str(self.args.burst)], timeout=120)
        after = tokens_minted(self.admin_port)
        r["tokens_minted"] = after
        r["tokens_minted_during_burst"] = None if after is None or before is None else after - before
        print(f"  burst of {r['requests']} in {r['seconds']:.2f} s: {r['statuses']}, tokens minted {after}")
        self.result["burst"] = r


def log_size(log: Path) -> int:
    try:
        return log.stat().st_size
    except OSError:
        return 0


def inside_split(log: Path, offset: int, run: dict[str, Any]) -> dict[str, float] | None:
    """Medians over the access lines written since `offset` (one latency round, warm-up included): the
    app's time per request (`duration`: arrival in the app to the answer's last byte handed to the
    server), the upstream's part of it, and the rest of the caller's p50, spent outside the app. Waits
    (at most 10 s) until the round's counted requests have their lines: the access writer buffers them."""
    lines: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while len(lines) < run["requests"] and time.monotonic() < deadline:
        with log.open("rb") as f:
            f.seek(offset)
            lines = [json.loads(line) for line in f if b'"logger":"zgw_gateway.access"' in line]
        time.sleep(0.05)
    if not lines:
        return None
    app = statistics.median(x["duration"] * 1000 for x in lines)
    return {
        "app_ms": app,
        "upstream_ms": statistics.median(x["upstream_duration"] * 1000 for x in lines),
        "own_ms": statistics.median((x["duration"] - x["upstream_duration"]) * 1000 for x in lines),
        "outside_ms": run["p50_ms"] - app,
    }


def tokens_minted(admin_port: int) -> float | None:
    """Sum of zgw_gateway_tokens_minted_total over all label sets, or None when not exported."""
    status, body = http_get(admin_port, "/metrics")
    if status != 200:
        return None
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in body.decode().splitlines()
        if line.startswith("zgw_gateway_tokens_minted_total")
    ]
    return sum(values) if values else None


def gateway_run(workdir: Path, scraper: Scraper) -> dict[str, Any]:
    """How the gateway ran: the image's entry point and environment, its log and its metrics as it served."""
    served = [
        line.split(" ")[1]
        for line in scraper.last.decode().splitlines()
        if line.startswith("zgw_gateway_requests_total{")
    ]
    return {
        "argv": [str(GATEWAY_ENTRY), "serve"],
        "environment": sorted(image_env(Path("-"), 0, {"BENCH_API_KEY": "", "BENCH_SECRET": ""})),
        "stdout_lines": access_lines(workdir / "gateway.log"),
        "metrics_scrapes": scraper.scrapes,
        "metrics_scrape_failures": scraper.failures,
        "requests_total_last_scrape": sum(float(v) for v in served),
    }


def gateway_available() -> bool:
    try:
        done = subprocess.run([str(GATEWAY_ENTRY), "serve", "--help"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


PHASES = ["throughput", "conns", "rewrite", "latency", "stream", "burst"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round, 3 s runs, 64 MiB streams")
    parser.add_argument("--only", choices=PHASES, action="append")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--rate", type=float, default=500, help="requests/s of the latency run")
    parser.add_argument("--latency-duration", type=float, default=10)
    parser.add_argument("--stream-mib", type=int, default=1024, help="size of the single download and upload")
    parser.add_argument("--streams", type=int, default=4, help="concurrent uploads and downloads")
    parser.add_argument("--concurrent-mib", type=int, default=256, help="size of each concurrent transfer")
    parser.add_argument("--scrape", type=float, default=5, help="seconds between two scrapes of /metrics")
    parser.add_argument("--burst", type=int, default=1000, help="concurrent first requests")
    parser.add_argument("--no-gateway", action="store_true", help="measure direct and nginx only")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir with configs and logs")
    parser.add_argument("--interpreted", action="store_true", help="the gateway from source, not compiled")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.latency_duration, args.stream_mib, args.concurrent_mib = 1, 3, 3, 64, 16
    args.phases = args.only or PHASES
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    stop_on_signals()
    workdir = Path(tempfile.mkdtemp(prefix="zgw-bench-"))
    gateway = not args.no_gateway and gateway_available()
    if not gateway:
        print("gateway: not measured (`zgw-gateway serve` unavailable or --no-gateway)")
    result: dict[str, Any] = {"args": {k: v for k, v in vars(args).items() if k != "only"}, "nofile": raise_nofile()}
    result["build"] = select_build(args.interpreted) if gateway else None
    print(f"gateway build: {result['build']}")
    result["background_cpu_pct"] = {"before": background_cpu()}
    if result["background_cpu_pct"]["before"] > 10:
        print(f"warning: the machine is {result['background_cpu_pct']['before']:.0f}% busy before the run")
    try:
        with Processes(workdir) as procs:
            bench = Bench(args, workdir, procs, result=result)
            bench.start_upstream()
            bench.start_nginx()
            if gateway:
                bench.start_gateway()
            bench.check_paths()
            scraper = Scraper(bench.admin_port, args.scrape) if gateway else None
            with scraper or contextlib.nullcontext():
                for phase in args.phases:
                    if phase in ("burst", "rewrite") and not gateway:
                        continue
                    print(f"{phase}:")
                    getattr(bench, phase)()
            if scraper is not None:
                result["gateway_run"] = gateway_run(workdir, scraper)
    finally:
        if args.keep:
            print(f"configs and logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    result["background_cpu_pct"]["after"] = background_cpu()
    summary = summarize(result)
    print_table(result, summary)
    final = {"summary": summary, **result}
    line = json.dumps(final, separators=(",", ":"))
    out = BENCH / "results" / "latest.json"
    with contextlib.suppress(OSError):
        out.write_text(json.dumps(final, indent=2) + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
