"""Whether an upstream gets requests right now: a circuit breaker per component.

Closed: requests pass; `failure_threshold` consecutive failures open it. Open: requests are refused at
once (503 circuit-open) for `open_seconds`, so a failing upstream is not hammered and callers are not
held for full timeouts. Half-open: one probe passes; its success closes the circuit, its failure opens it
again.
"""

from __future__ import annotations

from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = 0, 1, 2


class CircuitBreaker:
    def __init__(
        self,
        threshold: int,
        open_seconds: float,
        clock: Callable[[], float],
        on_state: Callable[[int], None] | None = None,
    ) -> None:
        self.threshold = threshold
        self.open_seconds = open_seconds
        self._clock = clock
        self._on_state = on_state
        self.state = CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self._probing = False
        self._probe_at = 0.0

    def allow(self) -> bool:
        """May a request go upstream now?"""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if self._clock() - self.opened_at < self.open_seconds:
                return False
            self._set(HALF_OPEN)
        # A probe whose result never came back (its caller vanished) must not wedge the circuit.
        now = self._clock()
        if self._probing and now - self._probe_at < self.open_seconds:
            return False
        self._probing = True
        self._probe_at = now
        return True

    def retry_after(self) -> float:
        """Seconds until the circuit lets a probe through."""
        return self.open_seconds - (self._clock() - self.opened_at)

    def record(self, ok: bool) -> None:
        """The result of a request that was allowed."""
        if self.state == HALF_OPEN:
            self._probing = False
            if ok:
                self.failures = 0
                self._set(CLOSED)
            else:
                self._open()
            return
        if ok:
            self.failures = 0
            return
        self.failures += 1
        if self.state == CLOSED and self.failures >= self.threshold:
            self._open()

    def abandon(self) -> None:
        """An allowed request ended without saying anything about the upstream: free the probe slot."""
        self._probing = False

    def _open(self) -> None:
        self.opened_at = self._clock()
        self._set(OPEN)

    def _set(self, state: int) -> None:
        if state != self.state:
            self.state = state
            if self._on_state is not None:
                self._on_state(state)
