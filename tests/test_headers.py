"""Which header fields cross the gateway (gateway.dataplane.headers): table-driven, both directions."""

from __future__ import annotations

import pytest

from gateway.dataplane.headers import ALWAYS_DROPPED, first, is_identity_encoded, to_caller, to_upstream, values

H = list[tuple[bytes, bytes]]


@pytest.mark.parametrize(
    ("raw", "passed"),
    [
        ([(b"accept", b"application/json"), (b"x-audit-toelichting", b"waarom")],
         [(b"accept", b"application/json"), (b"x-audit-toelichting", b"waarom")]),
        ([(b"authorization", b"Bearer mine"), (b"cookie", b"a=b"), (b"host", b"gw"), (b"x-forwarded-for", b"1.2.3.4")],
         []),
        ([(b"connection", b"keep-alive, x-a"), (b"x-a", b"1"), (b"keep-alive", b"5"), (b"te", b"trailers")], []),
        ([(b"connection", b"x-a"), (b"connection", b"X-B"), (b"x-a", b"1"), (b"x-b", b"2"), (b"x-c", b"3")],
         [(b"x-c", b"3")]),
        ([(b"x_api_key", b"other"), (b"x-fine", b"yes")], [(b"x-fine", b"yes")]),
        ([(b"upgrade", b"h2c"), (b"http2-settings", b"AAA"), (b"proxy-authorization", b"Basic x")], []),
        ([(b"if-none-match", b'"abc"'), (b"expect", b"100-continue")], [(b"if-none-match", b'"abc"')]),
    ],
    ids=["end-to-end", "credentials-and-forwarded", "hop-by-hop", "two-connection-fields", "underscores",
         "upgrades", "expect"],
)  # fmt: skip
def test_what_goes_upstream(raw: H, passed: H) -> None:
    assert to_upstream(raw, ALWAYS_DROPPED | {b"x-api-key"}) == passed


@pytest.mark.parametrize("value", [b"caf\xe9", b"a\rb", b"a\nb", b"a\x00b"])
def test_a_malformed_value_refuses_the_request(value: bytes) -> None:
    assert to_upstream([(b"x-name", value)], ALWAYS_DROPPED) is None


@pytest.mark.parametrize(
    ("raw", "relayed"),
    [
        ([(b"Content-Type", b"application/json"), (b"ETag", b'"1"'), (b"Content-Crs", b"EPSG:4326")],
         [(b"content-type", b"application/json"), (b"etag", b'"1"'), (b"content-crs", b"EPSG:4326")]),
        ([(b"Connection", b"x-one"), (b"Connection", b"x-two"), (b"X-One", b"1"), (b"X-Two", b"2"), (b"X-Three", b"3")],
         [(b"x-three", b"3")]),
        ([(b"Transfer-Encoding", b"chunked"), (b"Keep-Alive", b"timeout=5"), (b"Trailer", b"Set-Cookie")], []),
    ],
    ids=["end-to-end", "two-connection-fields", "hop-by-hop"],
)  # fmt: skip
def test_what_goes_back_to_the_caller(raw: H, relayed: H) -> None:
    assert to_caller(raw) == relayed


def test_location_fields_pass_through_the_rewriter() -> None:
    raw = [(b"Location", b"http://oz/zaken/1"), (b"Content-Location", b"http://oz/x"), (b"Link", b"http://oz/y")]
    assert to_caller(raw, lambda v: v.replace("http://oz", "https://gw")) == [
        (b"location", b"https://gw/zaken/1"),
        (b"content-location", b"https://gw/x"),
        (b"link", b"http://oz/y"),
    ]


@pytest.mark.parametrize(
    ("raw", "identity"),
    [
        ([], True),
        ([(b"content-encoding", b"identity")], True),
        ([(b"Content-Encoding", b"gzip")], False),
        ([(b"content-encoding", b"identity, gzip")], False),
        ([(b"content-encoding", b"identity"), (b"content-encoding", b"br")], False),
        ([(b"content-encoding", b"")], True),
    ],
)
def test_only_identity_encoded_bodies_may_be_rewritten(raw: H, identity: bool) -> None:
    assert is_identity_encoded(raw) is identity


def test_values_and_first_read_every_field_of_a_name() -> None:
    raw = [(b"Vary", b"Accept, Origin"), (b"vary", b"Accept-Crs"), (b"X", b"1")]
    assert values(raw, b"vary") == [b"accept", b"origin", b"accept-crs"]
    assert first(raw, b"vary") == b"Accept, Origin"
    assert first(raw, b"etag") is None
