"""How many instructions does the gateway's own work take per proxied GET? A count, not a timing, so a busy
machine does not move it (issue 23 reported 338k per GET).

    uv run --group bench python bench/instructions.py [--requests 1000] [--base 200] [--warmup 200] [--interpreted]

Runs bench/micro.py's in-memory gateway - the whole ASGI application on the bench's config (API key, token
cache, header hygiene, metrics, the JSON access line written to /dev/null), its pools answering from memory,
no sockets, no server - under `valgrind --tool=callgrind` twice, at once, in the image's environment with
PYTHONHASHSEED=0: `--warmup` GETs and then `--requests` GETs, and `--warmup` GETs and then `--base`.
Instructions per GET = (the first's total - the second's) / (requests - base): interpreter start-up, imports,
loading the config, the first token and the warm-up are in both and cancel out. `perf stat -e instructions:u`
would count the same at full speed, but this virtual machine has no hardware counters ("<not supported>").
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from procs import IMAGE_ENV, select_build  # noqa: E402

COLLECTED = re.compile(r"^==\d+== Collected : (\d+)$", re.MULTILINE)
TIMEOUT = 1800  # seconds per valgrind run: callgrind runs Python about 50x slower


def gets(warmup: int, requests: int) -> None:
    """The child: `warmup` GETs, then `requests` more; what valgrind counts."""
    import uvloop
    from micro import in_memory_gateway

    async def run() -> None:
        async with in_memory_gateway() as get:
            for _ in range(warmup + requests):
                await get()

    uvloop.run(run())


def callgrind(warmup: int, requests: int) -> subprocess.Popen[str]:
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", **IMAGE_ENV, "PYTHONHASHSEED": "0"}
    argv = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, str(Path(__file__)), "--child", str(warmup), str(requests),
    ]  # fmt: skip
    out, err = subprocess.DEVNULL, subprocess.PIPE
    return subprocess.Popen(argv, env=env, cwd=BENCH.parent, stdout=out, stderr=err, text=True)


def collected(proc: subprocess.Popen[str]) -> int:
    try:
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    found = COLLECTED.search(err)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"valgrind exited with {proc.returncode}:\n{err[-2000:]}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--base", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--interpreted", action="store_true", help="the source tree, not the compiled build")
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        gets(*args.child)
        return 0
    if args.requests <= args.base:
        parser.error("--requests must be more than --base")
    print(f"build: {select_build(args.interpreted)}")
    procs = [callgrind(args.warmup, n) for n in (args.requests, args.base)]
    high, low = (collected(proc) for proc in procs)
    per_get = (high - low) / (args.requests - args.base)
    print(f"instructions: {args.warmup} + {args.requests} GETs {high:,}, {args.warmup} + {args.base} GETs {low:,}")
    print(f"instructions per GET (the gateway's own work): {per_get:,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
