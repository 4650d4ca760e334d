"""What the gateway holds while it runs: a snapshot of one config, and the state that outlives reloads.

A request takes the current `Snapshot` once, so it sees one consistent config from start to end. A reload
builds a new snapshot; what must not start over with it lives in `Runtime` and carries over: secret
values and their versions, cached tokens of credentials that did not change, circuit breakers and rate
limiters whose settings did not change, in-flight counts, and the connection pools of unchanged
components. Requests still running on the old snapshot keep its routes and pools; a replaced pool closes
its connections as they come back.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable

from gateway.config.loading import Config, ConfigError
from gateway.config.secrets import SecretStore
from gateway.config.sections import CallerConfig, RateLimit
from gateway.dataplane import headers
from gateway.dataplane.breaker import CircuitBreaker
from gateway.dataplane.callers import CallerDirectory, RateLimiter
from gateway.dataplane.metrics import Metrics
from gateway.dataplane.notifications import Receiver, receivers
from gateway.dataplane.rewrite import UrlRewriter
from gateway.dataplane.routing import Route, RouteTable
from gateway.dataplane.tokens import TokenCache
from gateway.dataplane.tracing import Tracer
from gateway.http1.pool import Pool, ssl_context

log = logging.getLogger("zgw_gateway")


class Snapshot:
    """Everything derived from one config: routes (with their pools), callers, the rewriter, header policy."""

    def __init__(
        self,
        config: Config,
        routes: RouteTable,
        callers: CallerDirectory,
        key_problems: list[str],
        receivers: dict[str, Receiver],
    ):
        self.config = config
        self.routes = routes
        self.callers = callers
        self.key_problems = key_problems
        self.receivers = receivers
        pairs = [(c.upstream, config.public_url + c.prefix) for c in config.components.values() if c.rewrite_urls]
        self.rewriter = UrlRewriter(pairs) if pairs else None
        ident = config.identity
        self.user_id_header = ident.user_id_header.lower().encode()
        self.user_rep_header = ident.user_representation_header.lower().encode()
        self.dropped_headers = headers.ALWAYS_DROPPED | {
            ident.api_key_header.lower().encode(),
            ident.cert_subject_header.lower().encode(),
            self.user_id_header,
            self.user_rep_header,
        }
        self.log_headers = [h.encode() for h in config.log.headers]
        # What every request reads, as plain attributes rather than pydantic reads (issue 23).
        limits = config.limits
        self.max_header_bytes, self.max_in_flight = limits.max_header_bytes, limits.max_in_flight
        self.body_read_timeout = limits.body_read_timeout
        self.access_log, self.retry_enabled = config.log.access, config.retry.enabled
        # RFC 9110 11.6.1: a 401 names the schemes that work. The API key goes as the Basic password (any
        # user name) or in its own header; "ApiKey" is not a registered scheme, its `header` names that one.
        self.challenges = (
            (b"www-authenticate", b'Basic realm="zgw-gateway"'),
            (b"www-authenticate", b'ApiKey realm="zgw-gateway", header="%s"' % ident.api_key_header.encode()),
        )


class Runtime:
    """The state that outlives a reload, and the current snapshot (`apply` makes a new one current)."""

    def __init__(
        self, config: Config, metrics: Metrics, clock: Callable[[], float], environ: dict[str, str] | None
    ) -> None:
        self.metrics = metrics
        self.clock = clock
        self.secrets = SecretStore([], environ)
        self.tokens = TokenCache(config.token, clock)
        self.tracer = Tracer(config.tracing)  # applies at start only (tracing.py)
        self.breakers: dict[str, CircuitBreaker] = {}
        self.limiters: dict[str, tuple[RateLimit, RateLimiter]] = {}
        self.pools: dict[str, Pool] = {}
        self.in_flight: dict[str, int] = {}
        self.total_in_flight = 0
        self.snapshot: Snapshot
        self.apply(config)

    def apply(self, config: Config) -> Snapshot:
        """Make `config` current, carrying over what it did not change. ConfigError when it cannot be served
        (e.g. a TLS file that does not load); the running snapshot then stays."""
        routes = RouteTable(config)
        found = receivers(config)
        pools = self._pools(routes)
        for route in routes.routes:
            route.pool = pools[route.name]
            route.in_flight_gauge = self.metrics.in_flight(route.name)
        self.secrets.update(config.secret_refs())
        callers = CallerDirectory(config, self.secrets, self._limiter)
        old = getattr(self, "snapshot", None)
        self.snapshot = Snapshot(config, routes, callers, callers.reload_keys(), found)
        for name, pool in self.pools.items():
            if pools.get(name) is not pool:
                pool.close()
        self.pools = pools
        self._carry_tokens(old.config if old else None, config)
        self._carry_breakers(config)
        live = {c.name for c in config.callers}
        self.limiters = {name: pair for name, pair in self.limiters.items() if name in live}
        for name in config.components:
            self.in_flight.setdefault(name, 0)
        self.metrics.prepare([c.name for c in config.callers], list(config.components))
        self.metrics.prepare_notifications({name: sorted(r.kanalen) for name, r in found.items()})
        for name in config.components:
            breaker = self.breakers.get(name)
            self.metrics.circuit_state(name).set(breaker.state if breaker else 0)
            self.metrics.in_flight(name).set(self.in_flight[name])
        return self.snapshot

    def _pools(self, routes: RouteTable) -> dict[str, Pool]:
        pools = {}
        errors = []
        for route in routes.routes:
            name, comp = route.name, route.component
            kept = self.pools.get(name)
            if kept is not None and kept.settings == comp:
                pools[name] = kept
                continue
            try:
                context = ssl_context(comp)
            except (OSError, ssl.SSLError) as exc:
                errors.append(f"components.{name}.tls: cannot load ({type(exc).__name__}: {exc.strerror or exc})")
                continue
            pools[name] = Pool(route.upstream_hostname, route.upstream_port, context, comp, self._counter(name), name)
        if errors:
            raise ConfigError(errors)
        return pools

    def _counter(self, component: str) -> Callable[[str], None]:
        closed = self.metrics.connections_closed
        return lambda reason: closed(component, reason).inc()

    def _carry_tokens(self, old: Config | None, new: Config) -> None:
        if old is None:
            return
        if old.token != new.token:
            self.tokens = TokenCache(new.token, self.clock)
            return
        # Tokens of a client_id whose secret reference changed or that no caller uses any more go.
        self.tokens.evict_clients({client_id for client_id, ref in _credentials(old) - _credentials(new)})

    def _carry_breakers(self, config: Config) -> None:
        settings = config.circuit_breaker
        breakers = {}
        for name in config.components if settings.enabled else ():
            kept = self.breakers.get(name)
            if kept is not None and (kept.threshold, kept.open_seconds) == (
                settings.failure_threshold,
                settings.open_seconds,
            ):
                breakers[name] = kept
            else:
                breakers[name] = CircuitBreaker(
                    settings.failure_threshold, settings.open_seconds, self.clock, self.metrics.circuit_state(name).set
                )
        self.breakers = breakers

    def _limiter(self, caller: CallerConfig) -> RateLimiter | None:
        if caller.rate_limit is None:
            self.limiters.pop(caller.name, None)
            return None
        kept = self.limiters.get(caller.name)
        if kept is not None and kept[0] == caller.rate_limit:
            return kept[1]
        limiter = RateLimiter(caller.rate_limit.rate, caller.rate_limit.burst, self.clock)
        self.limiters[caller.name] = (caller.rate_limit, limiter)
        return limiter

    def problems(self) -> list[str]:
        return self.secrets.problems() + self.snapshot.key_problems

    # A pair of calls rather than a context manager: this runs on every request, and a generator-based
    # context manager costs as much as the counting itself (bench/micro.py --only app).
    def take_off(self, route: Route) -> bool:
        """Count one more request in flight to `route`'s component if there is room, to it and in all; False
        when there is none. Check and count are one step, so concurrent requests cannot all pass the check
        before any of them counts. `land` when it is over, always."""
        if self.total_in_flight >= self.snapshot.max_in_flight or self.in_flight[route.name] >= route.max_in_flight:
            return False
        count = self.in_flight[route.name] = self.in_flight[route.name] + 1
        self.total_in_flight += 1
        route.in_flight_gauge.set(count)
        return True

    def land(self, route: Route) -> None:
        # The route's own gauge, set from the count: when a reload removed the component while this request
        # was in flight, its series is gone and stays gone (the gauge is no longer exported); when a reload
        # brought it back, the next request on it sets the new series from the count.
        count = self.in_flight[route.name] = self.in_flight[route.name] - 1
        self.total_in_flight -= 1
        route.in_flight_gauge.set(count)

    def close(self) -> None:
        """At shutdown, once no request is in flight: close the pools, export the spans still queued."""
        for pool in self.pools.values():
            pool.close()
        self.tracer.shutdown()


def _credentials(config: Config) -> set[tuple[str, object]]:
    pairs: set[tuple[str, object]] = set()
    for caller in config.callers:
        pairs.add((caller.client_id, caller.secret))
        pairs.update((c.client_id, c.secret) for c in caller.credentials.values())
    return pairs
