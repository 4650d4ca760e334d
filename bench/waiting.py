"""CPU per request of the upstream pool's line: a turn taken (at once, or in line) and ended on
`gateway.http1.pool.Pool`, 50 callers (fewer than `max_connections`, nobody waits) against 1,000 (900 wait
their turn), in one process on uvloop, the collector off so its passes do not land on one side.

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


async def per_turn(callers: int, turns: int) -> float:
    """Microseconds of CPU per turn, each caller holding its turn for one loop step."""
    pool = Pool("127.0.0.1", 1, None, Component(prefix="/z", upstream="http://127.0.0.1/z"))

    async def caller() -> None:
        for _ in range(turns):
            if not pool.take_turn():
                await pool.wait_turn()
            await asyncio.sleep(0)
            pool.end_turn()

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
        print(f"{callers:5} callers: {statistics.median(figures):.2f} us per turn (rounds: {shown})")


if __name__ == "__main__":
    main()
