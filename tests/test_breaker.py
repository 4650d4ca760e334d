"""The per-component circuit breaker (gateway.dataplane.breaker), driven by a fake clock."""

from __future__ import annotations

from servers import ManualClock

from gateway.dataplane.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


def breaker(threshold: int = 3, open_seconds: float = 10.0) -> tuple[CircuitBreaker, ManualClock, list[int]]:
    clock = ManualClock(5000.0)
    states: list[int] = []
    return CircuitBreaker(threshold, open_seconds, clock, on_state=states.append), clock, states


def trip(b: CircuitBreaker) -> None:
    for _ in range(b.threshold):
        assert b.allow()
        b.record(False)


def test_it_opens_after_threshold_consecutive_failures() -> None:
    b, _, states = breaker(threshold=3)
    for _ in range(2):
        assert b.allow()
        b.record(False)
    assert b.state == CLOSED
    assert b.allow()
    b.record(False)
    assert b.state == OPEN
    assert states == [OPEN]


def test_a_success_resets_the_failure_count() -> None:
    b, _, _ = breaker(threshold=3)
    for ok in (False, False, True, False, False):
        assert b.allow()
        b.record(ok)
    assert b.state == CLOSED


def test_open_refuses_until_open_seconds_have_passed() -> None:
    b, clock, _ = breaker(open_seconds=10)
    trip(b)
    assert not b.allow()
    assert b.retry_after() == 10
    clock.now += 9.5
    assert not b.allow()
    assert b.retry_after() == 0.5
    clock.now += 0.5
    assert b.allow()
    assert b.state == HALF_OPEN


def test_half_open_lets_exactly_one_probe_through() -> None:
    b, clock, _ = breaker()
    trip(b)
    clock.now += 10
    assert b.allow()
    assert [b.allow() for _ in range(5)] == [False] * 5


def test_a_successful_probe_closes_the_circuit() -> None:
    b, clock, states = breaker()
    trip(b)
    clock.now += 10
    assert b.allow()
    b.record(True)
    assert b.state == CLOSED
    assert states == [OPEN, HALF_OPEN, CLOSED]
    assert all(b.allow() for _ in range(5))
    # The failure count starts again from zero.
    for _ in range(b.threshold - 1):
        b.record(False)
    assert b.state == CLOSED


def test_a_failed_probe_opens_the_circuit_again_for_a_full_period() -> None:
    b, clock, states = breaker(open_seconds=10)
    trip(b)
    clock.now += 12
    assert b.allow()
    clock.now += 3
    b.record(False)
    assert b.state == OPEN
    assert states == [OPEN, HALF_OPEN, OPEN]
    clock.now += 9.9
    assert not b.allow()
    clock.now += 0.1
    assert b.allow()


def test_a_lost_probe_does_not_wedge_the_circuit() -> None:
    b, clock, _ = breaker(open_seconds=10)
    trip(b)
    clock.now += 10
    assert b.allow()  # this probe's result never comes back
    clock.now += 9
    assert not b.allow()
    clock.now += 1
    assert b.allow()  # a new probe after another open period
    assert not b.allow()
    b.record(True)
    assert b.state == CLOSED


def test_a_threshold_of_one_opens_on_the_first_failure() -> None:
    b, _, _ = breaker(threshold=1)
    assert b.allow()
    b.record(False)
    assert b.state == OPEN
    assert not b.allow()
