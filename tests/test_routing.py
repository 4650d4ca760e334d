"""Matching request paths to components and building upstream URLs (gateway.dataplane.routing)."""

from __future__ import annotations

import posixpath
from dataclasses import replace
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.loading import parse
from gateway.dataplane import routing
from gateway.dataplane.routing import _RESOURCE_NAME, KNOWN_RESOURCES, RouteTable, is_safe_path

UUID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"


def table(components: dict[str, Any] | None = None) -> RouteTable:
    config = parse(
        {
            "public_url": "http://gw.intern:8000",
            "components": components
            or {
                "zaken": {
                    "prefix": "/zaken/api/v1",
                    "upstream": "https://oz.example.nl/zaken/api/v1",
                    "crs": "EPSG:4326",
                },
                "catalogi": {"prefix": "/catalogi/api/v1", "upstream": "https://oz.example.nl:8443/catalogi/api/v1/"},
                "notificaties": {"prefix": "/api/v1", "upstream": "http://on.example.nl/api/v1"},
                "root": {"prefix": "/legacy", "upstream": "http://old.example.nl"},
            },
        }
    )
    return RouteTable(config)


TABLE = table()
BY_NAME = {route.name: route for route in TABLE.routes}


@pytest.mark.parametrize(
    "path",
    [
        b"/zaken/api/v1/zaken/" + UUID.encode() + b"/audittrail",
        b"/zaken/api/v1/",
        b"/zaken/api/v1",
        b"/",
        b"/documenten/api/v1/enkelvoudiginformatieobjecten/" + UUID.encode() + b"/download",
        b"/zaken/api/v1/zaken/_zoek",
        b"/catalogi/api/v1/zaaktype-informatieobjecttypen",
        b"/zaken/api/v1/zaken/a%20b",
        b"/zaken/api/v1/x%C3%A9y",
        b"/zaken/api/v1/...",
        b"/zaken/api/v1/a.b/c..d",
        b"/x/~user/a-b_c!$&'()*+,=:@",
    ],
)
def test_normal_paths_are_safe(path: bytes) -> None:
    assert is_safe_path(path)


@pytest.mark.parametrize(
    "path",
    [
        b"",
        b"zaken/api/v1",
        b"/zaken/api/v1/zaken%2F..%2Fx",
        b"/zaken/api/v1/zaken%2fx",
        b"/zaken/api/v1/%2e%2e/secret",
        b"/zaken/api/v1/%2E%2E/secret",
        b"/zaken/api/v1/%2e/x",
        b"/zaken/api/v1/../../admin",
        b"/zaken/api/v1/..",
        b"/zaken/api/v1/./zaken",
        b"/zaken/api/v1/.",
        b"/zaken/api/v1//zaken",
        b"//evil.example/zaken",
        b"/zaken/api/v1/zaken;jsessionid=1",
        b"/zaken/api/v1/zaken\x00",
        b"/zaken/api/v1/zaken%00",
        b"/zaken/api/v1/zaken%0a",
        b"/zaken/api/v1/zaken%7f",
        b"/zaken/api/v1\\..\\admin",
        b"/zaken/api/v1/%5C..%5Cadmin",
        b"/zaken/api/v1/%5c",
        b"/zaken/api/v1/caf\xc3\xa9",
        b"/zaken/api/v1/\xff",
        b"/zaken/api/v1/a b",
        b"/zaken/api/v1/a?b",
        b"/zaken/api/v1/a#b",
        b"/zaken/api/v1/%",
        b"/zaken/api/v1/%zz",
        b"/zaken/api/v1/%4",
    ],
)
def test_tricky_paths_are_refused(path: bytes) -> None:
    assert not is_safe_path(path)


def test_longest_prefix_wins() -> None:
    assert TABLE.match(b"/zaken/api/v1/zaken").name == "zaken"  # type: ignore[union-attr]
    assert TABLE.match(b"/api/v1/kanaal").name == "notificaties"  # type: ignore[union-attr]
    nested = table(
        {
            "outer": {"prefix": "/a", "upstream": "http://outer.example/a"},
            "inner": {"prefix": "/a/b", "upstream": "http://inner.example/b"},
            "innermost": {"prefix": "/a/b/c", "upstream": "http://innermost.example/c"},
        }
    )
    assert nested.match(b"/a/x").name == "outer"  # type: ignore[union-attr]
    assert nested.match(b"/a/b").name == "inner"  # type: ignore[union-attr]
    assert nested.match(b"/a/b/").name == "inner"  # type: ignore[union-attr]
    assert nested.match(b"/a/bc").name == "outer"  # type: ignore[union-attr]
    assert nested.match(b"/a/b/c/d").name == "innermost"  # type: ignore[union-attr]
    assert nested.match(b"/a/b/cd").name == "inner"  # type: ignore[union-attr]


def test_a_prefix_matches_only_at_a_segment_boundary() -> None:
    assert TABLE.match(b"/zaken/api/v10") is None
    assert TABLE.match(b"/zaken/api/v10/zaken") is None
    assert TABLE.match(b"/zaken/api") is None
    assert TABLE.match(b"/ZAKEN/api/v1") is None
    assert TABLE.match(b"/") is None
    assert TABLE.match(b"/zaken/api/v1").name == "zaken"  # type: ignore[union-attr]


def test_upstream_target_joins_base_and_rest() -> None:
    zaken = BY_NAME["zaken"]
    assert zaken.upstream_target(b"/zaken/api/v1/zaken", b"") == b"/zaken/api/v1/zaken"
    assert zaken.upstream_target(b"/zaken/api/v1/", b"") == b"/zaken/api/v1/"
    assert zaken.upstream_target(b"/zaken/api/v1", b"") == b"/zaken/api/v1"
    assert (zaken.upstream_hostname, zaken.upstream_port) == ("oz.example.nl", 443)
    catalogi = BY_NAME["catalogi"]
    assert catalogi.upstream_host == "oz.example.nl:8443"
    assert catalogi.public_host == "gw.intern:8000"
    assert catalogi.upstream_target(b"/catalogi/api/v1/zaaktypen", b"") == b"/catalogi/api/v1/zaaktypen"
    assert (catalogi.upstream_hostname, catalogi.upstream_port) == ("oz.example.nl", 8443)
    root = BY_NAME["root"]
    assert root.upstream_path == b""
    assert root.upstream_target(b"/legacy/x", b"") == b"/x"
    assert root.upstream_target(b"/legacy", b"a=1") == b"/?a=1"  # an empty path is '/' on the wire


@pytest.mark.parametrize(
    "query",
    [
        b"status=open",
        b"rol__betrokkeneIdentificatie__natuurlijkPersoon__inpBsn=123456782&page=2",
        b"expand=zaaktype,status.statustype&expand=rollen",
        b"a=1&a=2&a=1",
        b"expand=",
        b"q=a%20b+c&x=%26%3D&empty&=v",
        b"zaaktype=https%3A%2F%2Foz.example.nl%2Fcatalogi%2Fapi%2Fv1%2Fzaaktypen%2F1",
    ],
)
def test_the_query_string_is_forwarded_byte_for_byte(query: bytes) -> None:
    target = BY_NAME["zaken"].upstream_target(b"/zaken/api/v1/zaken", query)
    assert target == b"/zaken/api/v1/zaken?" + query


@pytest.mark.parametrize(
    ("path", "resource"),
    [
        (b"/zaken/api/v1", "root"),
        (b"/zaken/api/v1/", "root"),
        (b"/zaken/api/v1/zaken", "zaken"),
        (b"/zaken/api/v1/zaken/" + UUID.encode() + b"/audittrail", "zaken"),
        (b"/zaken/api/v1/zaken/_zoek", "zaken"),
        (b"/zaken/api/v1/statussen/" + UUID.encode(), "statussen"),
        (b"/catalogi/api/v1/zaaktype-informatieobjecttypen", "zaaktype-informatieobjecttypen"),
        (b"/zaken/api/v1/" + UUID.encode(), "other"),
        (b"/zaken/api/v1/123456", "other"),
        (b"/zaken/api/v1/abcdef", "other"),
        (b"/zaken/api/v1/secret-customer-name", "other"),
        (b"/zaken/api/v1/Zaken", "other"),
        (b"/zaken/api/v1/schema", "other"),
    ],
)
def test_resource_is_a_bounded_label(path: bytes, resource: str) -> None:
    route = TABLE.match(path)
    assert route is not None
    assert route.resource(path) == resource


def test_without_a_resource_list_any_lower_case_name_is_a_resource() -> None:
    route = TABLE.match(b"/zaken/api/v1")
    assert route is not None
    route = replace(route, resources=frozenset())
    names = [b"schema", b"a_b-c/1", b"Zaken", UUID.encode(), b"123456", b"caf\xc3\xa9", b""]
    resources = [route.resource(b"/zaken/api/v1/" + name) for name in names]
    assert resources == ["schema", "a_b-c", "other", "other", "other", "other", "root"]


def test_every_known_resource_is_a_resource_name() -> None:
    """Route.resource looks a name up in KNOWN_RESOURCES without matching the pattern: every one must match it."""
    assert all(_RESOURCE_NAME.fullmatch(name) for name in KNOWN_RESOURCES)


def _normalized(path: bytes) -> bytes:
    """What a lenient upstream might make of a path: percent-decoded, backslashes as slashes, dots resolved."""
    decoded = unquote_to_bytes(path).replace(b"\\", b"/")
    return posixpath.normpath(decoded or b"/")


_pieces = st.lists(
    st.sampled_from([b"/", b".", b"..", b"%2F", b"%2f", b"%2e", b"%5C", b"\\", b";", b"%00", b"%", b"a", b"zaken"])
    | st.binary(max_size=3),
    max_size=8,
).map(b"".join)
path_bytes = st.tuples(
    st.sampled_from([b"", b"/zaken/api/v1", b"/zaken/api/v1/", b"/zaken/api/v10", b"/api/v1/", b"/legacy"]), _pieces
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(path=path_bytes)
def test_no_safe_path_escapes_its_components_upstream_base(path: bytes) -> None:
    if not is_safe_path(path):
        return
    route = TABLE.match(path)
    if route is None:
        return
    raw = route.upstream_target(path, b"")
    base = route.upstream_path
    assert raw == base or raw.startswith(base + b"/") or (base == b"" and raw.startswith(b"/"))
    normalized = _normalized(raw)
    assert normalized == (base or b"/") or normalized.startswith(base + b"/"), (path, normalized)


def test_the_property_test_would_notice_an_escape() -> None:
    # The checks above are only meaningful if these paths would have escaped had they been accepted.
    for path in (b"/zaken/api/v1/..%2F..%2Fadmin", b"/zaken/api/v1/%2e%2e/%2e%2e/admin", b"/zaken/api/v1/..\\.."):
        assert not _normalized(b"/zaken/api/v1" + path[len(b"/zaken/api/v1") :]).startswith(b"/zaken/api/v1/")
        assert not is_safe_path(path)


@settings(max_examples=500, deadline=None)
@given(path=path_bytes | st.binary(max_size=40).map(lambda tail: b"/" + tail))
def test_the_plain_character_shortcut_decides_as_the_path_pattern_does(path: bytes) -> None:
    """is_safe_path skips the pattern for paths of plain characters: it must never decide otherwise."""
    by_pattern = (
        path.startswith(b"/")
        and b"//" not in path
        and not routing._DOT_SEGMENT.search(path)
        and routing._SAFE_PATH.fullmatch(path) is not None
    )
    assert is_safe_path(path) == by_pattern
