"""The pool's own rules (gateway.http1.pool): who gets a turn that ends, and when reuse is withheld.

A hostile upstream (tests/hostile.py) in the test's event loop; the pool's clock is injected, so the
cool-down after stray bytes ends without sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from hostile import HostileUpstream, Request, answer
from test_upstream import exchange, head, markers, ours, settings, until, well_behaved

from gateway.http1.pool import DISTRUST_SECONDS, Pool, Response, UpstreamError

STRAY = b'{"stray": true}'


async def one_held(up: HostileUpstream, marker: str = "held", connections: int = 1) -> tuple[Pool, Response]:
    """A pool of one turn, held by a request whose answer was read: whoever asks next waits in line."""
    pool = Pool("127.0.0.1", up.port, None, settings(up.port, max_connections=connections))
    assert pool.take_turn()
    held = await pool.request("GET", head(marker), None, False, time.monotonic() + 5)
    await held.read(100)
    return pool, held


async def in_turn(pool: Pool, marker: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """One exchange within a turn, as the app makes it: a turn now or in line, ended however it goes."""
    if not pool.take_turn():
        await pool.wait_turn()
    try:
        return await exchange(pool, marker)
    finally:
        pool.end_turn()


def done(held: Response, pool: Pool) -> None:
    """The held request is over: its connection goes back, then its turn ends."""
    held.release()
    pool.end_turn()


def test_after_stray_bytes_the_component_gets_fresh_connections_until_the_cool_down_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 20: an unasked answer that arrives after the next request went out cannot be told from that
    request's answer; once an upstream has been caught at it, its connections carry one request each, so it
    cannot happen again during the cool-down."""
    hostile = [True]
    now = [1000.0]
    closed: list[str] = []

    async def script(request: Request) -> None:
        stray = answer(request, body=STRAY) if hostile[0] and len(request.conn.requests) > 1 else b""
        request.write(stray + answer(request))  # an unasked answer lands just ahead of the real one

    async def main() -> HostileUpstream:
        async with HostileUpstream(script) as up:
            pool = Pool("127.0.0.1", up.port, None, settings(up.port), closed.append, "zaken", lambda: now[0])
            assert (await exchange(pool, "m0"))[2] == ours("m0")
            assert (await exchange(pool, "m1"))[2] == STRAY  # the one wrong answer no HTTP/1.1 client avoids
            await until(lambda: closed == ["stray_bytes"])  # the real answer came beyond it: caught
            for i in range(2, 6):
                assert (await exchange(pool, f"m{i}"))[2] == ours(f"m{i}")
            assert closed == ["stray_bytes"] + ["distrusted"] * 4
            now[0] += DISTRUST_SECONDS
            hostile[0] = False
            for i in range(6, 8):
                assert (await exchange(pool, f"m{i}"))[2] == ours(f"m{i}")
            pool.close()
            return up

    with caplog.at_level(logging.WARNING, logger="zgw_gateway"):
        up = asyncio.run(main())
    assert markers(up) == [["m0", "m1"], ["m2"], ["m3"], ["m4"], ["m5"], ["m6", "m7"]]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and getattr(warnings[0], "component", None) == "zaken"


def test_a_stray_on_an_idle_connection_closes_the_other_idle_ones_too() -> None:
    """Whatever waits idle when an upstream is caught may hold a stray of its own: it goes too."""
    closed: list[str] = []
    stray = asyncio.Event()

    async def script(request: Request) -> None:
        await request.body()
        request.write(answer(request))
        if request.marker == "a":
            await stray.wait()
            request.write(answer(request, body=STRAY))

    async def main() -> None:
        async with HostileUpstream(script) as up:
            pool = Pool("127.0.0.1", up.port, None, settings(up.port), closed.append)
            await asyncio.gather(exchange(pool, "a"), exchange(pool, "b"))
            assert len(pool.idle) == 2
            stray.set()
            await until(lambda: not pool.idle)
            assert sorted(closed) == ["distrusted", "stray_bytes"]
            assert (await exchange(pool, "c"))[2] == ours("c")
            pool.close()

    asyncio.run(main())


def test_a_turn_that_ends_goes_to_the_oldest_waiter_not_to_a_newcomer() -> None:
    async def main() -> HostileUpstream:
        async with HostileUpstream(well_behaved) as up:
            pool, held = await one_held(up)
            waiters = []
            for name in ("w1", "w2", "w3"):
                waiters.append(asyncio.create_task(in_turn(pool, name)))
                count = len(waiters)
                await until(lambda: len(pool._waiters) == count)  # in line in this order
            done(held, pool)
            # The newcomer asks before any waiter has run again: the turn is handed over, still counted.
            assert not pool.take_turn()
            assert [r[2] for r in await asyncio.gather(*waiters)] == [ours(m) for m in ("w1", "w2", "w3")]
            assert (await in_turn(pool, "new"))[2] == ours("new")
            assert pool.turns == 0 and pool.in_use == 0
            pool.close()
            return up

    assert markers(asyncio.run(main())) == [["held", "w1", "w2", "w3", "new"]]


def test_the_connections_never_outnumber_the_turns_and_a_closed_one_is_replaced() -> None:
    """Two turns, ten requests at once, every third answer closing its connection: each request takes an
    idle connection or opens one, so the pool never holds more than two, in use and idle together."""
    pools: list[Pool] = []
    held_at_once: list[int] = []

    async def script(request: Request) -> None:
        await request.body()
        if pools:  # after the held one
            held_at_once.append(pools[0].in_use + len(pools[0].idle))
        extra = b"Connection: close\r\n" if request.marker in ("r3", "r6", "r9") else b""
        request.write(answer(request, extra=extra))

    async def main() -> HostileUpstream:
        async with HostileUpstream(script) as up:
            pool, held = await one_held(up, connections=2)
            pools.append(pool)
            done(held, pool)
            requests = [asyncio.create_task(in_turn(pool, f"r{i}")) for i in range(10)]
            assert [r[2] for r in await asyncio.gather(*requests)] == [ours(f"r{i}") for i in range(10)]
            assert pool.turns == 0 and pool.in_use == 0
            pool.close()
            return up

    served = markers(asyncio.run(main()))
    assert sorted(m for conn in served for m in conn) == sorted(["held", *(f"r{i}" for i in range(10))])
    assert len(held_at_once) == 10 and max(held_at_once) == 2
    # Two at first, and one more for each answer that closed its connection with requests still to come.
    assert 4 <= len(served) <= 5


def test_a_waiter_that_gives_up_after_its_turn_came_passes_it_on() -> None:
    async def main() -> None:
        async with HostileUpstream(well_behaved) as up:
            pool, first = await one_held(up, "first")
            quitter = asyncio.create_task(in_turn(pool, "quits"))
            await until(lambda: len(pool._waiters) == 1)
            done(first, pool)  # handed to the quitter, which is cancelled before it runs
            quitter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await quitter
            assert pool.turns == 0 and pool.in_use == 0 and len(pool.idle) == 1
            assert (await in_turn(pool, "next"))[2] == ours("next")
            pool.close()

    asyncio.run(main())


def test_waiters_whose_time_is_up_or_who_leave_get_out_of_line_and_the_turn_goes_to_the_next() -> None:
    """The line's timer (pool.py `wait_turn`): a waiter whose time is up answers `pool` and leaves the
    line at once, one whose caller leaves (cancelled) leaves it too, and the turn that ends goes to the
    next one still waiting; a time-up that comes after the turn was handed over changes nothing."""

    async def main() -> HostileUpstream:
        async with HostileUpstream(well_behaved) as up:
            pool, held = await one_held(up)
            expires = asyncio.create_task(in_turn(pool, "expires"))
            await until(lambda: len(pool._waiters) == 1)
            leaves = asyncio.create_task(in_turn(pool, "leaves"))
            stays = asyncio.create_task(in_turn(pool, "stays"))
            await until(lambda: len(pool._waiters) == 3)
            # What its timer does when the time is up, called here rather than raced with a clock (the timer
            # firing for real: test_upstream.py's full pool)
            pool._expire(pool._waiters[0][0])
            with pytest.raises(UpstreamError) as err:
                await expires
            assert (err.value.reason, err.value.sent) == ("pool", False)
            assert len(pool._waiters) == 2 and pool.turns == 1
            leaves.cancel()
            with pytest.raises(asyncio.CancelledError):
                await leaves
            assert len(pool._waiters) == 1 and pool.turns == 1
            due = pool._waiters[0][0]
            done(held, pool)
            pool._expire(due)  # its time is up in the same loop iteration as its turn came: the turn stands
            assert (await stays)[2] == ours("stays")
            assert pool.turns == 0 and pool.in_use == 0 and not pool._waiters and len(pool.idle) == 1
            pool.close()
            return up

    assert markers(asyncio.run(main())) == [["held", "stays"]]


def test_one_timer_bounds_the_whole_line_and_is_set_again_for_the_oldest_waiter() -> None:
    """Every waiter of a pool waits as long, so the line needs one timer, for its oldest waiter: when it fires
    every waiter whose time is up leaves (in the order they came) and it is set for the oldest one left."""

    async def main() -> None:
        async with HostileUpstream(well_behaved) as up:
            pool, held = await one_held(up)
            loop = asyncio.get_running_loop()
            waiters = []
            for name in ("a", "b", "c"):
                waiters.append(asyncio.create_task(in_turn(pool, name)))
                count = len(waiters)
                await until(lambda: len(pool._waiters) == count)
            due = [when for when, _ in pool._waiters]
            assert due == sorted(due) and len(set(due)) == 3
            assert pool._timer is not None and pool._timer.when() == due[0]
            pool._expire(due[1])  # what the timer finds when it fires at the second one's time
            for task in waiters[:2]:
                with pytest.raises(UpstreamError) as err:
                    await task
                assert err.value.reason == "pool"
            pool._on_timer(loop)  # fired now: nobody else is due, so it is set for the oldest one left
            assert [when for when, _ in pool._waiters] == due[2:]
            assert pool._timer is not None and pool._timer.when() == due[2]
            done(held, pool)
            assert (await waiters[2])[2] == ours("c")
            pool._on_timer(loop)
            assert pool._timer is None  # an empty line has none, the next waiter sets one
            pool.close()

    asyncio.run(main())
