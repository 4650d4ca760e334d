"""Upstream <-> public URL rewriting in bodies, headers and query strings (gateway.dataplane.rewrite)."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.dataplane.rewrite import UrlRewriter, is_json_content_type

ZAKEN = "https://openzaak.example.nl/zaken/api/v1"
DOCUMENTEN = "https://openzaak.example.nl/documenten/api/v1"
CATALOGI = "https://catalogus.example.org/catalogi/api/v1"
GW = "http://gw.intern:8000"
PAIRS = [
    (ZAKEN, GW + "/zaken/api/v1"),
    (DOCUMENTEN, GW + "/documenten/api/v1"),
    (CATALOGI, GW + "/catalogi/api/v1"),
]
TO_PUBLIC = dict(PAIRS)
TO_UPSTREAM = {public: upstream for upstream, public in PAIRS}
FOREIGN = "https://andere-gemeente.example.com/zaken/api/v1"

# The longest raw form of a base is every "/" written as \u002F (5 bytes more each), plus a 6-byte boundary.
MAX_HELD = max(len(b) + 5 * b.count("/") for pair in PAIRS for b in pair) + 6

rewriter = UrlRewriter(PAIRS)


def reference(text: str, mapping: dict[str, str]) -> str:
    """What rewriting means for one decoded string, written as plainly as possible."""
    sources = sorted(mapping, key=len, reverse=True)
    out: list[str] = []
    i = 0
    while i < len(text):
        for source in sources:
            end = i + len(source)
            if text.startswith(source, i) and (end == len(text) or text[end] in "/?#"):
                out.append(mapping[source])
                i = end
                break
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def walk(value: Any, mapping: dict[str, str]) -> Any:
    """Parse-walk-replace: the slow, obviously right rewrite of a decoded document."""
    if isinstance(value, str):
        return reference(value, mapping)
    if isinstance(value, list):
        return [walk(item, mapping) for item in value]
    if isinstance(value, dict):
        return {walk(key, mapping): walk(item, mapping) for key, item in value.items()}
    return value


def escape_slashes(text: str, style: str) -> str:
    # "/" only occurs inside strings in JSON text, so this keeps the document equivalent.
    return text.replace("/", style)


BASES = [ZAKEN, DOCUMENTEN, CATALOGI, *TO_UPSTREAM, FOREIGN]
SUFFIXES = [
    "",
    "/",
    "/zaken/1c8e36be-338c-4c07-ac5e-1adf55bec04a",
    "?page=2",
    "#top",
    "/enkelvoudiginformatieobjecten/x/download?versie=1",
    "0",
    "0/zaken",
    ".evil.com/x",
    ":8443/x",
    '"',
    "\\",
    "\\/x",
]
urls = st.builds(str.__add__, st.sampled_from(BASES), st.sampled_from(SUFFIXES))
strings = st.one_of(
    st.text(max_size=8),
    urls,
    st.builds(lambda a, u, b: a + u + b, st.text(max_size=4), urls, st.text(max_size=4)),
    st.builds(lambda a, b: a + " " + b, urls, urls),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    strings,
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(strings, children, max_size=4)),
    max_leaves=12,
)


@st.composite
def encoded(draw: st.DrawFn, value: Any) -> bytes:
    """``value`` as JSON text the way some server could have written it."""
    text = json.dumps(value, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 2])))
    style = draw(st.sampled_from(["plain", "\\/", "\\u002F", "\\u002f", "mixed"]))
    if style == "mixed":
        pieces = text.split("/")
        styles = draw(
            st.lists(
                st.sampled_from(["/", "\\/", "\\u002F", "\\u002f"]),
                min_size=len(pieces) - 1,
                max_size=len(pieces) - 1,
            )
        )
        text = pieces[0] + "".join(s + p for s, p in zip(styles, pieces[1:], strict=True))
    elif style != "plain":
        text = escape_slashes(text, style)
    return text.encode()


@st.composite
def documents_encoded(draw: st.DrawFn) -> tuple[Any, bytes]:
    value = draw(documents)
    return value, draw(encoded(value))


@settings(max_examples=400, deadline=None)
@given(documents_encoded())
def test_to_public_equals_parse_walk_replace(case: tuple[Any, bytes]) -> None:
    value, doc = case
    assert json.loads(rewriter.to_public(doc)) == walk(value, TO_PUBLIC)


@settings(max_examples=400, deadline=None)
@given(documents_encoded())
def test_to_upstream_equals_parse_walk_replace(case: tuple[Any, bytes]) -> None:
    value, doc = case
    assert json.loads(rewriter.to_upstream(doc)) == walk(value, TO_UPSTREAM)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_round_trip_restores_upstream_documents_byte_for_byte(data: st.DataObject) -> None:
    value = data.draw(documents)
    text = json.dumps(value)
    style = data.draw(st.sampled_from(["/", "\\/", "\\u002F", "\\u002f"]))
    doc = escape_slashes(text, style).encode()
    assume(rewriter.to_upstream(doc) == doc)  # only upstream (and foreign) URLs
    assert rewriter.to_upstream(rewriter.to_public(doc)) == doc


def test_round_trip_changes_the_document_in_between() -> None:
    doc = json.dumps({"url": ZAKEN + "/zaken/1", "zaaktype": CATALOGI + "/zaaktypen/2"}).encode()
    public = rewriter.to_public(doc)
    assert ZAKEN.encode() not in public
    assert rewriter.to_upstream(public) == doc


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_streaming_equals_whole_body_for_any_chunking(data: st.DataObject) -> None:
    doc = data.draw(documents_encoded())[1]
    doc = doc * data.draw(st.integers(1, 3))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(doc)), max_size=12)))
    chunks = [doc[a:b] for a, b in zip([0, *cuts], [*cuts, len(doc)], strict=True)]
    for whole, stream in (
        (rewriter.to_public, rewriter.stream_to_public()),
        (rewriter.to_upstream, rewriter.stream_to_upstream()),
    ):
        out = b"".join(stream.feed(chunk) for chunk in chunks) + stream.flush()
        assert out == whole(doc)


@pytest.mark.parametrize("style", ["/", "\\/", "\\u002F", "\\u002f"])
def test_streaming_every_split_point(style: str) -> None:
    urls = [ZAKEN, ZAKEN + "/zaken/1", ZAKEN + "?page=2", ZAKEN + "#x", ZAKEN + "0", CATALOGI + "/zt"]
    doc = escape_slashes(json.dumps({"a": urls, CATALOGI: [DOCUMENTEN]}), style).encode()
    doc = doc.replace(b"?", b"\\u003F").replace(b"#", b"\\u0023")
    expected = rewriter.to_public(doc)
    assert expected.count(b"gw.intern:8000") == 7
    for cut in range(len(doc) + 1):
        stream = rewriter.stream_to_public()
        assert stream.feed(doc[:cut]) + stream.feed(doc[cut:]) + stream.flush() == expected, cut
    for size in range(1, MAX_HELD + 2):
        stream = rewriter.stream_to_public()
        out = b"".join(stream.feed(doc[i : i + size]) for i in range(0, len(doc), size))
        assert out + stream.flush() == expected, size


def test_streaming_one_byte_at_a_time() -> None:
    doc = json.dumps({"a": [ZAKEN, ZAKEN + "/x", ZAKEN + "0", CATALOGI + "?q"]}).encode().replace(b"/", b"\\/")
    stream = rewriter.stream_to_public()
    out = b"".join(stream.feed(doc[i : i + 1]) for i in range(len(doc))) + stream.flush()
    assert out == rewriter.to_public(doc)
    assert out.count(GW.encode().replace(b"/", b"\\/")) == 3


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_streaming_holds_back_at_most_one_match(data: st.DataObject) -> None:
    # Bases of equal length: output length then equals consumed input length.
    upstream, public = "https://oz.example.nl/zaken/api/v1", "http://gw.intern:8000/zaken/api/v1"
    assert len(upstream) == len(public)
    same_length = UrlRewriter([(upstream, public)])
    doc = escape_slashes(
        json.dumps([upstream + s for s in data.draw(st.lists(st.sampled_from(SUFFIXES), max_size=20))]),
        data.draw(st.sampled_from(["/", "\\/", "\\u002F"])),
    ).encode()
    stream = same_length.stream_to_public()
    fed = emitted = 0
    size = data.draw(st.integers(1, 200))
    for start in range(0, len(doc), size):
        chunk = doc[start : start + size]
        fed += len(chunk)
        emitted += len(stream.feed(chunk))
        assert fed - emitted <= len(upstream) + 5 * upstream.count("/") + 6
    assert emitted + len(stream.flush()) == fed


def test_escaped_slashes_are_rewritten_in_the_same_style() -> None:
    doc = b'{"url":"https:\\/\\/openzaak.example.nl\\/zaken\\/api\\/v1\\/zaken\\/1"}'
    assert rewriter.to_public(doc) == b'{"url":"http:\\/\\/gw.intern:8000\\/zaken\\/api\\/v1\\/zaken\\/1"}'
    doc = b'["https:\\u002F\\u002Fopenzaak.example.nl\\u002Fzaken\\u002Fapi\\u002Fv1"]'
    assert rewriter.to_public(doc) == b'["http:\\u002F\\u002Fgw.intern:8000\\u002Fzaken\\u002Fapi\\u002Fv1"]'


def test_mixed_escapes_come_out_plain() -> None:
    doc = b'["https:\\/\\/openzaak.example.nl/zaken\\u002fapi/v1\\/zaken"]'
    assert rewriter.to_public(doc) == b'["http://gw.intern:8000/zaken/api/v1\\/zaken"]'


def test_escaped_boundary_after_the_base() -> None:
    doc = (
        b'["https://openzaak.example.nl/zaken/api/v1\\u002Fzaken", "https://openzaak.example.nl/zaken/api/v1\\u003Fx"]'
    )
    assert rewriter.to_public(doc) == (
        b'["http://gw.intern:8000/zaken/api/v1\\u002Fzaken", "http://gw.intern:8000/zaken/api/v1\\u003Fx"]'
    )


def test_arrays_nested_objects_and_two_hosts() -> None:
    doc = {
        "count": 1,
        "next": ZAKEN + "/zaken?page=2",
        "results": [
            {
                "url": ZAKEN + "/zaken/1",
                "zaaktype": CATALOGI + "/zaaktypen/7",
                "eigenschappen": [[ZAKEN + "/zaken/1/zaakeigenschappen/3"]],
                "kenmerken": [{"bron": {"link": DOCUMENTEN + "/enkelvoudiginformatieobjecten/9/download"}}],
            }
        ],
    }
    out = json.loads(rewriter.to_public(json.dumps(doc).encode()))
    assert out == {
        "count": 1,
        "next": GW + "/zaken/api/v1/zaken?page=2",
        "results": [
            {
                "url": GW + "/zaken/api/v1/zaken/1",
                "zaaktype": GW + "/catalogi/api/v1/zaaktypen/7",
                "eigenschappen": [[GW + "/zaken/api/v1/zaken/1/zaakeigenschappen/3"]],
                "kenmerken": [{"bron": {"link": GW + "/documenten/api/v1/enkelvoudiginformatieobjecten/9/download"}}],
            }
        ],
    }


@pytest.mark.parametrize(
    "url",
    [
        ZAKEN.replace("/v1", "/v10") + "/zaken/1",
        ZAKEN + "0",
        ZAKEN + "-beta/zaken",
        "https://openzaak.example.nl.evil.com/zaken/api/v1/zaken",
        "https://openzaak.example.nl:8443/zaken/api/v1/zaken",
        "http://openzaak.example.nl/zaken/api/v1/zaken",
        "https://openzaak.example.nl/zaken/api/",
        "https://openzaak.example.nl/catalogi/api/v1/zaaktypen",
        FOREIGN + "/zaken/1",
    ],
)
def test_look_alikes_and_foreign_urls_are_left_alone(url: str) -> None:
    doc = json.dumps({"url": url, "in text": f"zie {url}."}).encode()
    assert rewriter.to_public(doc) == doc
    assert rewriter.to_public(doc.replace(b"/", b"\\/")) == doc.replace(b"/", b"\\/")
    assert rewriter.header_to_public(url) == url


def test_keys_are_strings_too() -> None:
    doc = json.dumps({ZAKEN + "/zaken/1": True}).encode()
    assert json.loads(rewriter.to_public(doc)) == {GW + "/zaken/api/v1/zaken/1": True}


def test_links_inside_free_text_are_rewritten() -> None:
    doc = json.dumps({"toelichting": f"zie {ZAKEN}/zaken/1 en {FOREIGN}/zaken/2"}).encode()
    out = json.loads(rewriter.to_public(doc))
    assert out == {"toelichting": f"zie {GW}/zaken/api/v1/zaken/1 en {FOREIGN}/zaken/2"}


def test_the_other_direction() -> None:
    body = {"zaak": GW + "/zaken/api/v1/zaken/1", "informatieobject": GW + "/documenten/api/v1/eio/2"}
    out = json.loads(rewriter.to_upstream(json.dumps(body).encode()))
    assert out == {"zaak": ZAKEN + "/zaken/1", "informatieobject": DOCUMENTEN + "/eio/2"}


def test_nested_public_bases_resolve_to_the_longest() -> None:
    nested = UrlRewriter(
        [
            ("https://a.example.nl/api", "http://gw/api"),
            ("https://b.example.nl/api/v1", "http://gw/api/v1"),
            ("https://c.example.nl/x/api/v1", "http://gw/api/v1/c"),
        ]
    )
    doc = json.dumps(
        [
            "http://gw/api/v1/zaken",
            "http://gw/api/v10",
            "http://gw/api",
            "http://gw/api/v1/c/1",
            "http://gw/api/v1/cc",
        ]
    ).encode()
    assert json.loads(nested.to_upstream(doc)) == [
        "https://b.example.nl/api/v1/zaken",
        "https://a.example.nl/api/v10",
        "https://a.example.nl/api",
        "https://c.example.nl/x/api/v1/1",
        "https://b.example.nl/api/v1/cc",
    ]
    escaped = doc.replace(b"/", b"\\/")
    assert json.loads(nested.to_upstream(escaped)) == json.loads(nested.to_upstream(doc))
    assert nested.query_to_upstream(b"u=http%3A%2F%2Fgw%2Fapi%2Fv1%2Fc%2F1") == (
        b"u=https%3A%2F%2Fc.example.nl%2Fx%2Fapi%2Fv1%2F1"
    )


def test_public_base_equal_to_an_upstream_base_is_rewritten_once() -> None:
    swap = UrlRewriter([("http://a/x", "http://b/x"), ("http://b/x", "http://c/x")])
    assert swap.to_public(b'["http://a/x/1","http://b/x/2"]') == b'["http://b/x/1","http://c/x/2"]'


def test_bases_are_normalised_like_a_server_emits_them() -> None:
    normalised = UrlRewriter([("HTTPS://OpenZaak.Example.nl:443/zaken/api/v1/", "http://GW.intern:80/zaken/api/v1")])
    doc = b'"https://openzaak.example.nl/zaken/api/v1/zaken/1"'
    assert normalised.to_public(doc) == b'"http://gw.intern/zaken/api/v1/zaken/1"'


@pytest.mark.parametrize(
    "pairs",
    [
        [("ftp://openzaak.example.nl/zaken", GW)],
        [("https:///zaken", GW)],
        [(ZAKEN + "?x=1", GW)],
        [('https://openzaak.example.nl/"', GW)],
        [("https://user@openzaak.example.nl/zaken", GW)],
        [("https://openzaak.example.nl:99999/zaken", GW)],
        [(ZAKEN, GW + "/a"), (ZAKEN, GW + "/b")],
        [(ZAKEN, GW + "/a"), (CATALOGI, GW + "/a")],
    ],
)
def test_unusable_or_ambiguous_bases_are_refused(pairs: list[tuple[str, str]]) -> None:
    with pytest.raises(ValueError, match="base"):
        UrlRewriter(pairs)


def test_no_pairs_rewrites_nothing() -> None:
    empty = UrlRewriter([])
    doc = json.dumps([ZAKEN, GW]).encode()
    stream = empty.stream_to_public()
    assert empty.to_public(doc) == doc
    assert empty.to_upstream(doc) == doc
    assert stream.feed(doc) + stream.flush() == doc
    assert empty.header_to_public(ZAKEN) == ZAKEN
    assert empty.query_to_upstream(b"zaak=" + GW.encode()) == b"zaak=" + GW.encode()


def test_duplicate_identical_pairs_are_accepted() -> None:
    assert (
        UrlRewriter([*PAIRS, *PAIRS]).to_public(b'"' + ZAKEN.encode() + b'"') == b'"' + GW.encode() + b'/zaken/api/v1"'
    )


def test_location_headers() -> None:
    assert rewriter.header_to_public(ZAKEN + "/zaken/1") == GW + "/zaken/api/v1/zaken/1"
    assert rewriter.header_to_public(CATALOGI) == GW + "/catalogi/api/v1"
    assert rewriter.header_to_public(DOCUMENTEN + "?x=1#y") == GW + "/documenten/api/v1?x=1#y"
    assert rewriter.header_to_public("/zaken/api/v1/zaken/1") == "/zaken/api/v1/zaken/1"


def test_query_encoded_and_unencoded_values() -> None:
    query = (
        b"zaak=http%3A%2F%2Fgw.intern%3A8000%2Fzaken%2Fapi%2Fv1%2Fzaken%2F1"
        b"&zaaktype=http://gw.intern:8000/catalogi/api/v1/zaaktypen/2"
    )
    assert rewriter.query_to_upstream(query) == (
        b"zaak=https%3A%2F%2Fopenzaak.example.nl%2Fzaken%2Fapi%2Fv1%2Fzaken%2F1"
        b"&zaaktype=https://catalogus.example.org/catalogi/api/v1/zaaktypen/2"
    )


def test_query_keeps_lower_case_escapes_and_partial_encoding() -> None:
    query = b"zaak=http%3a%2f%2fgw.intern%3a8000%2fzaken%2fapi%2fv1%2fzaken%2f1"
    assert rewriter.query_to_upstream(query) == (
        b"zaak=https%3a%2f%2fopenzaak.example.nl%2fzaken%2fapi%2fv1%2fzaken%2f1"
    )
    # Only ":" encoded: the upstream base gets only its ":" encoded.
    query = b"zaak=http%3A//gw.intern%3A8000/zaken/api/v1/zaken/1"
    assert rewriter.query_to_upstream(query) == b"zaak=https%3A//openzaak.example.nl/zaken/api/v1/zaken/1"


def test_query_repeated_params_and_untouched_bytes() -> None:
    query = (
        b"status=a+b%20c&zaak=http%3A%2F%2Fgw.intern%3A8000%2Fzaken%2Fapi%2Fv1%2Fzaken%2F1&&flag"
        b"&zaak=http://gw.intern:8000/zaken/api/v1/zaken/2?x=%2F&x=a=b"
        b"&foreign=https%3A%2F%2Fandere-gemeente.example.com%2Fzaken%2Fapi%2Fv1"
        b"&lookalike=http%3A%2F%2Fgw.intern%3A8000%2Fzaken%2Fapi%2Fv10"
        b"&http://gw.intern:8000/zaken/api/v1/as-a-key=1"
    )
    assert rewriter.query_to_upstream(query) == (
        b"status=a+b%20c&zaak=https%3A%2F%2Fopenzaak.example.nl%2Fzaken%2Fapi%2Fv1%2Fzaken%2F1&&flag"
        b"&zaak=https://openzaak.example.nl/zaken/api/v1/zaken/2?x=%2F&x=a=b"
        b"&foreign=https%3A%2F%2Fandere-gemeente.example.com%2Fzaken%2Fapi%2Fv1"
        b"&lookalike=http%3A%2F%2Fgw.intern%3A8000%2Fzaken%2Fapi%2Fv10"
        b"&http://gw.intern:8000/zaken/api/v1/as-a-key=1"
    )


@pytest.mark.parametrize(
    "query",
    [b"", b"page=2", b"a=1&a=2&b", b"zaak=http%3A%2F%2Fgw.intern%3A8000%2Fzaken%2Fapi%2Fv10", b"%zz=%"],
)
def test_query_without_public_urls_is_returned_as_is(query: bytes) -> None:
    assert rewriter.query_to_upstream(query) is query


def test_query_value_ending_in_the_bare_base() -> None:
    assert rewriter.query_to_upstream(b"a=http://gw.intern:8000/zaken/api/v1&b=2") == (
        b"a=https://openzaak.example.nl/zaken/api/v1&b=2"
    )


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/Problem+JSON", True),
        ("application/hal+json;charset=UTF-8", True),
        (" application/vnd.api+json ", True),
        ("application/octet-stream", False),
        ("text/json", False),
        ("application/jsonl", False),
        ("multipart/form-data; boundary=x+json", False),
        ("", False),
        (None, False),
    ],
)
def test_is_json_content_type(content_type: str | None, expected: bool) -> None:
    assert is_json_content_type(content_type) is expected


def zgw_page() -> bytes:
    def zaak(i: int) -> dict[str, Any]:
        uuid = f"{i:08d}-aaaa-4bbb-8ccc-000000000000"
        return {
            "url": f"{ZAKEN}/zaken/{uuid}",
            "uuid": uuid,
            "identificatie": f"ZAAK-2024-{i:07d}",
            "bronorganisatie": "002220647",
            "omschrijving": "Aanvraag omgevingsvergunning",
            "zaaktype": f"{CATALOGI}/zaaktypen/1c6b1f2e-0000-4000-8000-000000000001",
            "registratiedatum": "2024-05-01",
            "status": f"{ZAKEN}/statussen/{i:08d}-0000-4000-8000-000000000002",
            "resultaat": None,
            "eigenschappen": [f"{ZAKEN}/zaken/{uuid}/zaakeigenschappen/e1"],
        }

    page = {"count": 120, "next": f"{ZAKEN}/zaken?page=2", "previous": None, "results": [zaak(1), zaak(2)]}
    return json.dumps(page, separators=(",", ":")).encode()


def test_speed_small_page(benchmark: Any) -> None:
    page = zgw_page()
    assert 900 < len(page) < 1400
    out = benchmark(rewriter.to_public, page)
    assert out.count(GW.encode()) == 9
    assert rewriter.to_upstream(out) == page


def large_document(size: int, block: bytes) -> Iterator[bytes]:
    """A Documenten API body with ``size`` bytes of base64 ``inhoud``, produced one ``block`` at a time."""
    head = {"url": DOCUMENTEN + "/enkelvoudiginformatieobjecten/1", "bronorganisatie": "002220647"}
    yield json.dumps(head)[:-1].encode()
    yield b',"inhoud":"'
    for _ in range(size // len(block)):
        yield block
    yield b'","informatieobjecttype":"' + CATALOGI.replace("/", "\\/").encode() + b'\\/iot\\/1"}'


def test_speed_large_body_whole_and_streaming() -> None:
    size, chunk = 50 * 1024 * 1024, 64 * 1024
    block = base64.b64encode(random.Random(0).randbytes(chunk // 4 * 3))

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        start = time.perf_counter()
        stream = rewriter.stream_to_public()
        digest, length = hashlib.sha256(), 0
        for piece in large_document(size, block):
            out = stream.feed(piece)
            digest.update(out)
            length += len(out)
        out = stream.flush()
        digest.update(out)
        length += len(out)
        streaming_seconds = time.perf_counter() - start
        streaming_peak = tracemalloc.get_traced_memory()[1] - before
        del out

        doc = b"".join(large_document(size, block))
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        start = time.perf_counter()
        whole = rewriter.to_public(doc)
        whole_seconds = time.perf_counter() - start
        whole_peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()

    assert length == len(whole)
    assert digest.digest() == hashlib.sha256(whole).digest()
    assert whole.count(GW.encode()) == 1
    assert whole.count(GW.replace("/", "\\/").encode()) == 1
    assert streaming_peak < 6 * chunk, streaming_peak
    print(
        f"\n50 MB body: whole {whole_seconds:.3f} s, peak {whole_peak / 2**20:.1f} MiB;"
        f" streaming {streaming_seconds:.3f} s, peak {streaming_peak / 2**20:.2f} MiB"
    )
