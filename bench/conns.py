"""Does a proxy hold up with many callers? The `conns` phase of bench/run (issue 23).

For nginx and for the gateway, each alone on the proxy CPU while it is measured:

- idle memory, first (before any run opened 1,000 connections, so no freed memory is there to reuse): the
  proxy's resident memory (its process tree) with 1,000 idle keep-alive connections open, each after one GET,
  minus the same with none, per connection; and how many of them were still open when measured;
- then, after a warm-up at 1,000 connections, interleaved rounds (`--rounds`) of `wrk -t1 -c50` and
  `wrk -t1 -c1000` for `--duration` s each: req/s at 1,000 over req/s at 50 in the same round, p99, errors
  (answers other than 2xx/3xx, socket errors), and the connections the proxy opened to the upstream per
  request it served (bench/upstream.py's counter, read before and after each run); and where the CPU went:
  the proxy's CPU time per request (its process tree, /proc/<pid>/stat) and how idle the load CPU and the
  proxy CPU were (/proc/stat). A proxy that alone sets the pace keeps its CPU busy and leaves the load CPU
  idle time; its CPU per request at 50 over at 1,000 (`cpu_ratio`) is then the req/s ratio the machine
  would show without other work on it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import select
import statistics
import time
from pathlib import Path
from typing import Any

from load import LOAD_CPU, PAGE, PROXY_CPU, Target, wrk
from procs import RssSampler, http_get, tree_pids
from streams import MB

FEW, MANY = 50, 1000
SETTLE = 0.5  # seconds between opening the idle connections and reading the RSS


def upstream_opened(upstream_port: int) -> int:
    status, body = http_get(upstream_port, "/-/stats")
    if status != 200:
        raise RuntimeError(f"the upstream's /-/stats answered {status}")
    return int(json.loads(body)["opened"])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid`'s process tree (threads included), in seconds."""
    ticks = 0
    for child in tree_pids(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def idle_ticks() -> dict[int, tuple[int, int]]:
    """Per CPU: (idle + iowait ticks, all ticks) since boot."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            ticks = [int(v) for v in values]
            out[int(name[3:])] = (ticks[3] + ticks[4], sum(ticks))
    return out


def counted_run(p: Target, pid: int, upstream_port: int, duration: int, connections: int) -> dict[str, Any]:
    """One wrk run, with the upstream connections the proxy opened during it and where the CPU went."""
    before, cpu, idle = upstream_opened(upstream_port), cpu_seconds(pid), idle_ticks()
    run = wrk(p, PAGE, duration, connections)
    cpu, after = cpu_seconds(pid) - cpu, idle_ticks()
    run["upstream_opened"] = upstream_opened(upstream_port) - before
    run["opened_per_request"] = run["upstream_opened"] / max(1, run["requests"])
    run["cpu_us_per_request"] = cpu * 1e6 / max(1, run["requests"])
    for name, n in (("load", LOAD_CPU), ("proxy", PROXY_CPU)):
        spent = after[n][1] - idle[n][1]
        run[f"{name}_cpu_idle_pct"] = 100 * (after[n][0] - idle[n][0]) / max(1, spent)
    return run


def idle_connections(p: Target, count: int) -> list[http.client.HTTPConnection]:
    """`count` keep-alive connections to `p`, each left open and idle after one GET answered 200."""
    conns: list[http.client.HTTPConnection] = []
    try:
        for _ in range(count):
            conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
            conns.append(conn)
            conn.request("GET", PAGE, headers=p.headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{p.name}: GET {PAGE} answered {resp.status} on idle connection {len(conns)}")
    except BaseException:
        close_all(conns)
        raise
    return conns


def still_open(conns: list[http.client.HTTPConnection]) -> int:
    """How many the proxy has not closed: a socket its peer closed polls readable (poll has no fd limit)."""
    poller = select.poll()
    for conn in conns:
        if conn.sock is not None:
            poller.register(conn.sock, select.POLLIN)
    return sum(conn.sock is not None for conn in conns) - len(poller.poll(0))


def close_all(conns: list[http.client.HTTPConnection]) -> None:
    for conn in conns:
        conn.close()


def idle_memory(p: Target, pid: int, count: int) -> dict[str, Any]:
    """The proxy's RSS with `count` idle keep-alive callers minus with none, per caller."""
    sampler = RssSampler(pid)
    none = sampler.now()
    conns = idle_connections(p, count)
    try:
        time.sleep(SETTLE)
        held, open_now = sampler.now(), still_open(conns)
    finally:
        close_all(conns)
    return {
        "connections": count,
        "still_open": open_now,
        "rss_none_mb": none / MB,
        "rss_idle_mb": held / MB,
        "kb_per_connection": (held - none) / count / 1024,
    }


def nofile(pid: int) -> dict[int, int]:
    """The soft RLIMIT_NOFILE of `pid` and its descendants: what the proxy's processes may hold."""
    out = {}
    for child in tree_pids(pid):
        for line in Path(f"/proc/{child}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                out[child] = int(line.split()[3])
    return out


def measure_conns(
    proxies: dict[str, tuple[Target, int]], upstream_port: int, rounds: int, duration: int
) -> dict[str, Any]:
    """The phase for each proxy (name: its target and the pid of its process tree)."""
    out: dict[str, Any] = {}
    for name, (p, pid) in proxies.items():
        wrk(p, PAGE, 1, FEW)  # warm-up: the first token, the upstream pool
        out[name] = {"nofile": nofile(pid), "idle": idle_memory(p, pid, MANY), "rounds": []}
        idle = out[name]["idle"]
        limits = ", ".join(str(n) for n in sorted(set(out[name]["nofile"].values())))
        print(f"  {name:8} idle: {idle['kb_per_connection']:6.1f} KB per connection "
              f"({idle['still_open']} of {MANY} open when measured); soft RLIMIT_NOFILE {limits}")  # fmt: skip
        wrk(p, PAGE, max(1, duration // 3), MANY)
    for r in range(rounds):
        for name, (p, pid) in proxies.items():
            few = counted_run(p, pid, upstream_port, duration, FEW)
            many = counted_run(p, pid, upstream_port, duration, MANY)
            cpu_ratio = few["cpu_us_per_request"] / max(1e-9, many["cpu_us_per_request"])
            out[name]["rounds"].append(
                {"few": few, "many": many, "ratio": many["rps"] / max(1.0, few["rps"]), "cpu_ratio": cpu_ratio}
            )
            print(f"  round {r + 1}/{rounds} {name:8} {few['rps']:8.0f} req/s at {FEW}, {many['rps']:8.0f} at "
                  f"{MANY} (x{many['rps'] / max(1.0, few['rps']):.2f}), p99 {many['p99_ms']:7.1f} ms, CPU "
                  f"{few['cpu_us_per_request']:.0f} / {many['cpu_us_per_request']:.0f} us/request (x{cpu_ratio:.2f}), "
                  f"idle load CPU {few['load_cpu_idle_pct']:.0f} / {many['load_cpu_idle_pct']:.0f} %, proxy CPU "
                  f"{few['proxy_cpu_idle_pct']:.0f} / {many['proxy_cpu_idle_pct']:.0f} %, "
                  f"non-2xx {many['non_2xx']}, socket errors {many['socket_errors']}, upstream opened "
                  f"{few['upstream_opened']} + {many['upstream_opened']} for {few['requests'] + many['requests']} "
                  "requests")  # fmt: skip
    for result in out.values():
        result.update(medians(result["rounds"]))
    return out


def medians(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Over the rounds: the median ratio, req/s and p99 at 50 and at 1,000; the errors and the highest
    upstream connections opened per request of any run."""
    runs = [run for r in rounds for run in (r["few"], r["many"])]
    by_callers = {str(n): [r[k] for r in rounds] for n, k in ((FEW, "few"), (MANY, "many"))}
    return {
        "ratio_median": statistics.median(r["ratio"] for r in rounds),
        "cpu_ratio_median": statistics.median(r["cpu_ratio"] for r in rounds),
        "rps_median": {n: statistics.median(x["rps"] for x in xs) for n, xs in by_callers.items()},
        "p99_ms_median": {n: statistics.median(x["p99_ms"] for x in xs) for n, xs in by_callers.items()},
        "cpu_us_per_request_median": {
            n: statistics.median(x["cpu_us_per_request"] for x in xs) for n, xs in by_callers.items()
        },
        "load_cpu_idle_pct_median": {
            n: statistics.median(x["load_cpu_idle_pct"] for x in xs) for n, xs in by_callers.items()
        },
        "non_2xx": sum(run["non_2xx"] for run in runs),
        "socket_errors": sum(run["socket_errors"] for run in runs),
        "opened_per_request_max": max(run["opened_per_request"] for run in runs),
    }
