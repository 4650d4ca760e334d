"""Property-based fuzzing: whatever paths, headers or config documents arrive, the gateway never answers
500 and never crashes (docs/security.md, Leaks and abuse)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import API_KEY, GATEWAY_ENV, base_config
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from servers import GatewayProcess, ThreadServer
from test_security import Recorder, raw_request

from gateway.config.loading import ConfigError, parse

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None
)
PREFIXES = ["/zaken/api/v1", "/catalogi/api/v1", "/documenten/api/v1", "", "/zaken", "/other"]
SEGMENT_PIECES = [
    "zaken", "..", ".", "", "%2e", "%2E%2e", "%2f", "%2F", "%5c", "\\", ";", ";x=1", "%00", "%25", "%",
    "%zz", "~", "é", "%c3%a9", "a b", "?", "#", "*", "@", ":", "&", "=", "+", "$", "'", "(", ")",
    "0", "7c8e1f2a-3b4c-4d5e-8f90-a1b2c3d4e5f6",
]  # fmt: skip


@pytest.fixture(scope="module")
def fuzz_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, Recorder]]:
    rec = Recorder()
    with ThreadServer(rec) as up:
        workdir: Path = tmp_path_factory.mktemp("fuzz")
        config = base_config(up.url, limits={"max_header_bytes": 8192, "header_read_timeout": 3})
        config["log"] = {"access": False}
        gw = GatewayProcess(config, workdir, env=GATEWAY_ENV)
        gw.start()
        try:
            yield gw, rec
        finally:
            gw.stop()


paths = st.builds(
    lambda prefix, parts, query: prefix + "/" + "/".join(parts) + (("?" + query) if query else ""),
    st.sampled_from(PREFIXES),
    st.lists(st.one_of(st.sampled_from(SEGMENT_PIECES), st.text(min_size=0, max_size=8)), max_size=6),
    st.one_of(st.none(), st.text(max_size=20)),
)
KNOWN_HEADERS = [
    "X-API-Key", "Authorization", "Content-Length", "Transfer-Encoding", "Connection", "Upgrade",
    "X-Forwarded-For", "X-Request-ID", "traceparent", "X-ZGW-User-Id", "X-ZGW-User-Representation",
    "Accept-Crs", "Content-Crs", "Host", "Expect", "TE", "Cookie", "X_API_Key",
]  # fmt: skip
header_names = st.one_of(
    st.sampled_from(KNOWN_HEADERS),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20),
)
header_values = st.one_of(
    st.sampled_from(["", API_KEY, "chunked", "100-continue", "close", "h2c", "-1", "1e9", "Basic Og==", "Bearer x"]),
    st.text(max_size=40),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
)
methods = st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "FOO"])


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


@FUZZ
@given(method=methods, path=paths, headers=st.lists(st.tuples(header_names, header_values), max_size=6))
def test_requests_never_get_a_500_and_never_crash_the_gateway(
    fuzz_gateway: tuple[GatewayProcess, Recorder], method: str, path: str, headers: list[tuple[str, str]]
) -> None:
    gw, _ = fuzz_gateway
    lines = [f"{method} ".encode() + _encode(path) + b" HTTP/1.1", b"Host: gw", b"Connection: close"]
    if not any(name.lower() == "x-api-key" for name, _ in headers):
        lines.append(f"X-API-Key: {API_KEY}".encode())
    lines += [_encode(name) + b": " + _encode(value) for name, value in headers]
    reply = raw_request(gw.port, b"\r\n".join(lines) + b"\r\n\r\n", timeout=4)
    # The server may close without a word on garbage; if it answers, it is never a 5xx of its own making.
    assert reply.status is None or reply.status < 500, (reply.status, reply.body[:300])
    assert gw.proc is not None and gw.proc.poll() is None


KEYS = [
    "listen", "admin", "public_url", "trusted_proxies", "token", "identity", "limits", "retry",
    "circuit_breaker", "log", "shutdown", "secrets", "components", "callers", "prefix", "upstream", "crs",
    "timeouts", "connect", "read", "total", "pool", "max_body_bytes", "name", "api_keys", "env", "file",
    "sha256", "networks", "client_id", "secret", "user", "methods", "rate_limit", "rate", "burst", "port",
    "host", "lifetime", "clock_skew", "tls", "cert_file", "key_file", "zaken", "headers", "level",
]  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.sampled_from(["http://127.0.0.1:1/x", "/zaken/api/v1", "10.0.0.0/8", "EPSG:4326", "GET", "::1/128"]),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children, max_size=5),
    ),
    max_leaves=30,
)


BASE = base_config("http://127.0.0.1:1")
SECTIONS = ["listen", "admin", "token", "identity", "limits", "retry", "circuit_breaker", "log", "shutdown"]


def _overlaid(section: str, overlay: Any) -> dict[str, Any]:
    """A valid config with one section's keys replaced by fuzzed ones: many of these are accepted."""
    document = copy.deepcopy(BASE)
    if isinstance(overlay, dict):
        document[section] = {**document.get(section, {}), **overlay}
    else:
        document[section] = overlay
    return document


overlaid = st.builds(_overlaid, st.sampled_from(SECTIONS), st.dictionaries(st.sampled_from(KEYS), scalars, max_size=3))


@settings(max_examples=400, deadline=None, database=None)
@given(document=st.one_of(documents, overlaid))
@example(document=BASE)  # at least one accepted: the round trip below always runs
def test_any_config_document_is_accepted_or_refused_with_named_keys(document: Any) -> None:
    try:
        config = parse(document)
    except ConfigError as exc:
        assert exc.errors
        assert all(isinstance(e, str) and ": " in e for e in exc.errors)
    else:
        # What was accepted is the whole of it: its dump loads back into the same config (no key dropped,
        # no value changed by a second pass through the validators).
        assert parse(config.model_dump(mode="json")) == config


@settings(max_examples=200, deadline=None, database=None)
@given(
    section=st.sampled_from(["limits", "token", "circuit_breaker", "shutdown", "secrets", "retry", "log"]),
    value=documents,
)
def test_a_valid_config_with_one_section_replaced_never_breaks_validation(section: str, value: Any) -> None:
    document = base_config("http://127.0.0.1:9")
    document[section] = value
    try:
        parse(document)
    except ConfigError as exc:
        assert any(e.startswith(section) or e.startswith("(top level)") for e in exc.errors), exc.errors
