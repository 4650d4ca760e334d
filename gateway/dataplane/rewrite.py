"""Which URLs in a body, header or query string point at an upstream, and what they become behind the gateway.

ZGW servers build absolute URLs from the host they see (docs/zgw.md, "Absolute URLs"). For components with
``rewrite_urls: true`` the gateway swaps each upstream base for its public base (``public_url`` + component
prefix) in JSON responses and ``Location``/``Content-Location``, and back in JSON request bodies and query
strings. One ``UrlRewriter`` covers every configured pair at once, so a zaak on host A that points at a
zaaktype on host B comes out with both URLs public.

Rules, the same in every direction:

- A base matches only when followed by the end of the string, ``/``, ``?`` or ``#``: ``…/api/v10`` is not
  under ``…/api/v1``. Where bases nest (``/api`` and ``/api/v1``, or one public host with several prefixes)
  the longest base wins, as in routing.
- Bodies are rewritten on the raw JSON text with one compiled ``re`` instead of parse, walk and dump: several
  times faster, works incrementally (``StreamRewriter``) on bodies of any size, and keeps every byte that is
  not part of a matched base exactly as the server sent it. This is sound because a base contains no ``"``
  or ``\\``, so every match lies inside a JSON string, and a base starts with ``h``, which cannot continue
  an escape sequence, so matches align with the decoded text (tests/test_rewrite.py checks this against
  parse-walk-replace with hypothesis). Keys are strings too and are rewritten like values; any occurrence
  inside a string counts, also a link inside free text.
- Slashes may be escaped in JSON (``\\/`` as PHP and some Java encoders write, or ``\\u002F``), in the base
  and in the boundary after it; the replacement keeps the escape style of the match (mixed styles come out as
  plain ``/``). Other ``\\uXXXX`` escapes of base characters are not recognised; no encoder emits them
  for URL characters.
- Scheme and host of a configured base are lower-cased and a default port dropped, because servers build
  URLs from the ``Host`` header the HTTP client sends, which is normalised the same way. Matching is then
  exact: ``HTTPS://OpenZaak…`` in a body is left alone.
- Query strings: only parameter values are rewritten, percent-encoded or not; every byte outside a
  replaced URL stays as it was.

Bodies must be UTF-8 JSON (RFC 8259) without ``Content-Encoding``; the caller decides that
(``is_json_content_type``) and drops ``Content-Length`` because lengths change.

A whole body costs about twice its size in memory while rewritten, a stream next to nothing: large bodies
stream (``REWRITE_BUFFER_LIMIT``). What a rewrite costs: bench/README.md, "Figures the code's comments refer to".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote_to_bytes

from gateway.config.urls import base_mappings

# JSON bodies up to this size, both ways, are rewritten whole, keeping an exact Content-Length; larger ones
# stream (a whole body costs about twice its size in memory while rewritten).
REWRITE_BUFFER_LIMIT = 1024 * 1024

# How one "/" of a base may appear in raw JSON text; mixed styles within one URL are accepted.
_JSON_SLASH = rb"(?:/|\\(?:/|u002[fF]))"
_JSON_SLASH_STYLES = (b"/", b"\\/", b"\\u002F", b"\\u002f")
# After a base in raw JSON text: the closing quote of the string, a path, query or fragment separator
# (plain or escaped), or the end of the input.
_JSON_BOUNDARY = rb'(?="|/|\?|#|\\/|\\u00(?:2[fF]|3[fF]|23)|\Z)'
_JSON_BOUNDARY_MAX = len(rb"\u002F")
# "&" cannot occur inside a value but ends one when the whole query string is searched.
_QUERY_BOUNDARY = rb"(?=/|\?|#|&|%2[fF]|%3[fF]|%23|\Z)"
_HEADER_BOUNDARY = r"(?=[/?#]|\Z)"


def is_json_content_type(content_type: str | None) -> bool:
    """True for ``application/json`` and ``application/*+json`` (parameters such as charset ignored)."""
    if not content_type:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    kind, slash, subtype = media_type.partition("/")
    return bool(slash) and kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def _longest_first(mapping: dict[str, str]) -> list[tuple[bytes, bytes]]:
    items = [(s.encode("ascii"), t.encode("ascii")) for s, t in mapping.items()]
    return sorted(items, key=lambda item: len(item[0]), reverse=True)


_END = -1  # trie key marking that a source ends at this node


def _trie_pattern(sources: list[bytes], token: Callable[[int], bytes]) -> bytes:
    """One alternation of all sources, factored as a trie: ``re`` then scans for the common literal start
    (``https:``) and never re-reads a shared host, and where one base continues another (``/api`` and
    ``/api/v1``) it tries the longer one first, falling back when the boundary after it fails."""
    trie: dict[int, Any] = {}
    for source in sources:
        node = trie
        for byte in source:
            node = node.setdefault(byte, {})
        node[_END] = {}
    return _trie_node(trie, token)


def _trie_node(node: dict[int, Any], token: Callable[[int], bytes]) -> bytes:
    branches = [token(byte) + _trie_node(child, token) for byte, child in node.items() if byte != _END]
    if not branches:
        return b""
    body = branches[0] if len(branches) == 1 else b"(?:" + b"|".join(branches) + b")"
    if _END in node:
        return b"(?:" + body + b")?"
    return body


def _json_token(byte: int) -> bytes:
    return _JSON_SLASH if byte == ord("/") else re.escape(bytes((byte,)))


class _Targets(dict[bytes, bytes]):
    """Matched raw text -> replacement; uniform slash styles are precomputed, mixed ones come out plain."""

    def __init__(self, items: list[tuple[bytes, bytes]]) -> None:
        super().__init__()
        self._plain = dict(items)
        for source, target in items:
            for style in _JSON_SLASH_STYLES:
                self[source.replace(b"/", style)] = target.replace(b"/", style)

    def __missing__(self, text: bytes) -> bytes:
        return self._plain[text.replace(b"\\/", b"/").replace(b"\\u002F", b"/").replace(b"\\u002f", b"/")]


class _JsonDirection:
    """One direction of body rewriting: the compiled pattern and the replacement for each match."""

    def __init__(self, mapping: dict[str, str]) -> None:
        items = _longest_first(mapping)
        self.targets = _Targets(items)
        self.pattern: re.Pattern[bytes] | None = None
        self.window = 0
        if not items:
            return
        # One capturing group, so that split() hands back the matches at the odd indices.
        self.pattern = re.compile(b"(" + _trie_pattern([s for s, _ in items], _json_token) + b")" + _JSON_BOUNDARY)
        # Longest raw match plus boundary: what a stream must hold back so no match is cut in two.
        self.window = max(len(s) + 5 * s.count(b"/") for s, _ in items) + _JSON_BOUNDARY_MAX

    def sub(self, data: bytes) -> bytes:
        if self.pattern is None:
            return data
        # split + one C-level map is faster than sub() with a Python callback per match (bench/README.md).
        parts = self.pattern.split(data)
        if len(parts) == 1:
            return data
        parts[1::2] = map(self.targets.__getitem__, parts[1::2])
        return b"".join(parts)


class StreamRewriter:
    """Rewrites a body that arrives in chunks; the output equals the whole-body rewrite for any chunking.

    ``feed`` holds back at most the longest possible match (a base with every slash escaped, plus its
    boundary), so memory stays at about two chunks however large the body.
    """

    def __init__(self, direction: _JsonDirection) -> None:
        self._direction = direction
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        pattern = self._direction.pattern
        if pattern is None:
            return chunk
        data = self._held + chunk if self._held else chunk
        # A match starting before `settled` has all the bytes it can depend on, so it is final; a match
        # starting later might grow or fail with the next chunk.
        settled = len(data) - self._direction.window + 1
        if settled <= 0:
            self._held = data
            return b""
        targets = self._direction.targets
        out: list[bytes] = []
        done = 0
        for match in pattern.finditer(data):
            start = match.start()
            if start >= settled:
                break
            out.append(data[done:start])
            out.append(targets[match[0]])
            done = match.end()
        cut = max(done, settled)
        out.append(data[done:cut])
        self._held = data[cut:]
        return b"".join(out)

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        return self._direction.sub(held)


class UrlRewriter:
    """Swaps upstream bases and public bases; built once from the configured (upstream, public) pairs."""

    def __init__(self, pairs: Sequence[tuple[str, str]]) -> None:
        to_public, to_upstream = base_mappings(pairs)
        self._public = _JsonDirection(to_public)
        self._upstream = _JsonDirection(to_upstream)
        self._header = self._compile_header(to_public)
        self._query, self._query_targets = self._compile_query(to_upstream)

    def to_public(self, data: bytes) -> bytes:
        """A whole JSON body from upstream, with upstream bases replaced by public ones."""
        return self._public.sub(data)

    def to_upstream(self, data: bytes) -> bytes:
        """A whole JSON body from a caller, with public bases replaced by upstream ones."""
        return self._upstream.sub(data)

    def stream_to_public(self) -> StreamRewriter:
        return StreamRewriter(self._public)

    def stream_to_upstream(self) -> StreamRewriter:
        return StreamRewriter(self._upstream)

    def header_to_public(self, value: str) -> str:
        """A ``Location`` or ``Content-Location`` value from upstream."""
        if self._header is None:
            return value
        pattern, targets = self._header
        return pattern.sub(lambda match: targets[match.group()], value)

    def query_to_upstream(self, query: bytes) -> bytes:
        """A raw query string from a caller; only values holding a URL under a public base change."""
        if self._query is None or self._query.search(query) is None:
            return query
        pattern = self._query
        params = query.split(b"&")
        for index, param in enumerate(params):
            name, equals, value = param.partition(b"=")
            if pattern.search(value) is not None:
                params[index] = name + equals + pattern.sub(self._replace_query_url, value)
        return b"&".join(params)

    @staticmethod
    def _compile_header(
        mapping: dict[str, str],
    ) -> tuple[re.Pattern[str], dict[str, str]] | None:
        if not mapping:
            return None
        sources = sorted(mapping, key=len, reverse=True)
        pattern = re.compile("(?:" + "|".join(map(re.escape, sources)) + ")" + _HEADER_BOUNDARY)
        return pattern, dict(mapping)

    @staticmethod
    def _compile_query(mapping: dict[str, str]) -> tuple[re.Pattern[bytes] | None, dict[bytes, bytes]]:
        if not mapping:
            return None, {}
        items = _longest_first(mapping)
        alternatives = b"|".join(b"".join(map(_query_char, source)) for source, _ in items)
        return re.compile(b"(?:" + alternatives + b")" + _QUERY_BOUNDARY), dict(items)

    def _replace_query_url(self, match: re.Match[bytes]) -> bytes:
        text = match.group()
        target = self._query_targets[unquote_to_bytes(text)]
        if b"%" not in text:
            return target
        # Encode in the target the characters the caller encoded, with the caller's hex case.
        escapes = re.findall(rb"%([0-9A-Fa-f]{2})", text)
        encoded = {int(escape, 16) for escape in escapes}
        template = b"%%%02x" if any(escape != escape.upper() for escape in escapes) else b"%%%02X"
        return b"".join(template % byte if byte in encoded else bytes((byte,)) for byte in target)


def _query_char(byte: int) -> bytes:
    """Pattern for one base character in a query value: itself or its percent-encoding in either case."""
    escape = b"".join(b"[%c%c]" % (c, c ^ 0x20) if c > ord("9") else bytes((c,)) for c in b"%02X" % byte)
    return b"(?:" + re.escape(bytes((byte,))) + b"|%" + escape + b")"
