"""How fast do document bodies move through each path, and what do they cost the gateway in memory?

The `stream` phase of bench/run: per path (direct, nginx, gateway) one large download and one large upload
(`--stream-mib`, 1 GiB by default), then `--streams` (4) concurrent uploads and downloads of
`--concurrent-mib` (256 MiB) each. Each transfer is one `bench/loadgen.py` process on the load CPU,
streaming from or into a reused 1 MiB buffer; concurrent ones start together, and their MiB/s is the
total over the time from the first start to the last end (process start-up excluded). For the gateway,
its resident memory (the process tree, sampled every 50 ms) before, at peak and after each transfer: the
*growth* is peak minus before.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from procs import BENCH, RssSampler

DOWNLOAD = "/documenten/api/v1/enkelvoudiginformatieobjecten/0c47fe5e-4fe1-4781-8583-168e0730c9b6/download"
UPLOAD = "/documenten/api/v1/bestandsdelen/7d0e4b2c-2b7a-4c59-8b8a-0a8b5f3f6a10"
MB = 1024 * 1024
TIMEOUT = 600
START_DELAY = 2.0  # seconds for the loadgen processes to start (imports included) before the transfers begin


def transfers(
    mode: str, url: str, headers: list[str], size: int, count: int, cpu: int
) -> tuple[float, list[dict[str, Any]]]:
    """`count` concurrent transfers of `size` bytes; (seconds from the first start to the last end, results).

    The processes start their transfers together at a common time on the machine's monotonic clock, once
    each had time to start its interpreter, so process start-up is never part of the figure."""
    path = UPLOAD if mode == "upload" else DOWNLOAD
    argv = ["taskset", "-c", str(cpu), sys.executable, str(BENCH / "loadgen.py"), mode, url + path, *headers]
    at = ["--size", str(size), "--start-at", str(time.monotonic() + START_DELAY)]
    procs = [
        subprocess.Popen([*argv, *at], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(count)
    ]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=TIMEOUT)
            if proc.returncode != 0:
                raise RuntimeError(f"loadgen {mode} {url} failed:\n{err[-2000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return max(r["ended"] for r in results) - min(r["started"] for r in results), results


def measure(
    mode: str,
    url: str,
    headers: list[str],
    size: int,
    count: int,
    cpu: int,
    rss: Callable[[], RssSampler] | None,
) -> dict[str, Any]:
    """One transfer scenario on one path: MiB/s over all transfers, whether each was complete, RSS growth."""
    if rss is None:
        seconds, results = transfers(mode, url, headers, size, count, cpu)
        memory = None
    else:
        with rss() as sampler:
            time.sleep(0.2)
            before = sampler.now()
            seconds, results = transfers(mode, url, headers, size, count, cpu)
            time.sleep(0.5)
            after = sampler.now()
        memory = {
            "before": before / MB,
            "peak": sampler.peak / MB,
            "after": after / MB,
            "growth": (sampler.peak - before) / MB,
        }
    ok = all(r["status"] == 200 and (r["bytes"] if mode == "download" else r["received"]) == size for r in results)
    out: dict[str, Any] = {
        "transfers": count,
        "size_mib": size / MB,
        "seconds": seconds,
        "mib_per_s": count * size / MB / seconds,
        "ok": ok,
        "each_seconds": [round(r["seconds"], 3) for r in results],
    }
    if memory is not None:
        out["rss_mb"] = memory
    return out


def scenarios(args: Any) -> list[tuple[str, str, int, int]]:
    """(name, mode, size in bytes, concurrent transfers) of one stream phase."""
    big, part, n = args.stream_mib * MB, args.concurrent_mib * MB, args.streams
    return [
        ("download", "download", big, 1),
        ("upload", "upload", big, 1),
        (f"download {n}x", "download", part, n),
        (f"upload {n}x", "upload", part, n),
    ]
