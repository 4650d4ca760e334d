"""CPU per request of the upstream pool's line: acquire and release on `gateway.http1.pool.Pool` with connections
that are never opened (stand-ins), 50 callers (fewer than `max_connections`, nobody waits) against 1,000
(900 wait their turn), in one process on uvloop, the collector off so its passes do not land on one side.

    uv run python bench/waiting.py [--rounds 3] [--turns 200]

What waiting costs the gateway per request beyond the request itself (bench/README.md, "Many callers").
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time

import uvloop

from gateway.config.sections import Component
from gateway.http1.pool import Pool


class StandIn:
    """What the pool asks of a connection it takes, hands on and takes back: always quiet, always reusable."""

    closed = False

    def __init__(self) -> None:
        self.idle_since = time.monotonic()

    def quiet(self) -> bool:
        return True

    def end(self, now: float) -> str:
        self.idle_since = now
        return ""

    def close(self) -> None:
        self.closed = True


async def per_turn(callers: int, turns: int) -> float:
    """Microseconds of CPU per acquire + release, each caller holding its connection for one loop step."""
    pool = Pool("127.0.0.1", 1, None, Component(prefix="/z", upstream="http://127.0.0.1/z"))

    async def connect(timeout: float) -> StandIn:
        return StandIn()

    pool._connect = connect  # type: ignore[assignment,method-assign]

    async def caller() -> None:
        for _ in range(turns):
            conn = await pool._acquire(time.monotonic() + 30)
            await asyncio.sleep(0)
            pool.release(conn)

    start = time.process_time()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return (time.process_time() - start) / (callers * turns) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--turns", type=int, default=200)
    args = parser.parse_args()
    gc.disable()
    runs: dict[int, list[float]] = {50: [], 1000: []}
    for _ in range(args.rounds):
        for callers in runs:
            runs[callers].append(uvloop.run(per_turn(callers, args.turns)))
    for callers, figures in runs.items():
        shown = ", ".join(f"{x:.2f}" for x in figures)
        print(f"{callers:5} callers: {statistics.median(figures):.2f} us per acquire + release (rounds: {shown})")


if __name__ == "__main__":
    main()
