"""HTTP payloads and HTML → main text.

``hybrid`` (default, :mod:`gristmill.pipelines.maintext`) applies trafilatura's article-container and
boilerplate rules on Resiliparse's DOM: trafilatura's F1 at under 3× Resiliparse's time (bench/README.md).
``resiliparse`` alone extracts main content at C++ speed and lets more page furniture through;
``trafilatura`` is the slow, careful one. All run on the decoded HTML string; the charset comes from
the HTTP header, else from Resiliparse's detector (which reads <meta charset> and falls back to statistical detection).
"""

from __future__ import annotations

import re
import zlib

_CHARSET_RE = re.compile(rb"charset\s*=\s*[\"']?([A-Za-z0-9_.:-]+)", re.IGNORECASE)


def _dechunk(body: bytes) -> bytes:
    out, pos = bytearray(), 0
    while True:
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            raise ValueError("chunked body without chunk size line")
        size = int(body[pos:eol].split(b";")[0].strip() or b"0", 16)
        if size == 0:
            return bytes(out)
        start = eol + 2
        out += body[start : start + size]
        pos = start + size + 2
        if start + size > len(body):
            raise ValueError("chunked body shorter than its chunk sizes")


class UnsupportedEncoding(ValueError):
    """A Content-Encoding gristmill cannot decode."""


class BodyTooLarge(ValueError):
    """A decoded body larger than the limit (a small compressed body can expand enormously)."""


def _inflate(body: bytes, wbits: int, limit: int) -> bytes:
    d = zlib.decompressobj(wbits)
    out = d.decompress(body, limit + 1)
    if len(out) > limit:
        raise BodyTooLarge(f"decoded body over {limit} bytes")
    return out


def _unbrotli(body: bytes, limit: int) -> bytes:
    import brotli

    d = brotli.Decompressor()
    out = d.process(body, output_buffer_limit=limit + 1)
    if len(out) > limit:
        raise BodyTooLarge(f"decoded body over {limit} bytes")
    return out


def _unzstd(body: bytes, limit: int) -> bytes:
    import zstandard

    out = bytearray()
    with zstandard.ZstdDecompressor().stream_reader(body) as r:
        while chunk := r.read(1 << 20):
            out += chunk
            if len(out) > limit:
                raise BodyTooLarge(f"decoded body over {limit} bytes")
    return bytes(out)


def decode_content(body: bytes, content_encoding: bytes, limit: int) -> bytes:
    """The body with its Content-Encoding undone (codings are listed in the order they were applied,
    so the last is undone first): gzip, deflate (zlib or raw), br, zstd; identity is nothing. The
    decoded size is bounded by ``limit``."""
    codings = [c.strip() for c in content_encoding.lower().split(b",")]
    for coding in reversed([c for c in codings if c and c != b"identity"]):
        if coding in (b"gzip", b"x-gzip"):
            body = _inflate(body, 47, limit)  # 47: gzip or zlib header, detected
        elif coding == b"deflate":  # zlib-wrapped as the RFC says; raw deflate as many servers send
            try:
                body = _inflate(body, 15, limit)
            except zlib.error:
                body = _inflate(body, -15, limit)
        elif coding == b"br":
            body = _unbrotli(body, limit)
        elif coding == b"zstd":
            body = _unzstd(body, limit)
        else:
            raise UnsupportedEncoding(f"unsupported Content-Encoding {coding.decode('latin-1')[:40]!r}")
    return body


def parse_http_response(block: bytes, max_body_bytes: int = 1 << 62) -> tuple[int, str, str | None, bytes]:
    """(status, content type, charset or None, decoded body) of a raw HTTP response block."""
    head, sep, body = block.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = block.partition(b"\n\n")
        if not sep:
            raise ValueError("no end of HTTP headers")
    lines = head.split(b"\n")
    status_line = lines[0].strip().split(None, 2)
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/"):
        raise ValueError(f"not an HTTP status line: {lines[0][:80]!r}")
    try:
        status = int(status_line[1])
    except ValueError:
        raise ValueError(f"bad HTTP status: {status_line[1][:20]!r}") from None
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower()] = v.strip()
    ctype = headers.get(b"content-type", b"").decode("latin-1")
    m = _CHARSET_RE.search(headers.get(b"content-type", b""))
    charset = m.group(1).decode("ascii") if m else None
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        body = _dechunk(body)
    body = decode_content(body, headers.get(b"content-encoding", b""), max_body_bytes)
    return status, ctype, charset, body


def is_html(content_type: str, body: bytes) -> bool:
    ct = content_type.lower()
    if "html" in ct:
        return True
    if ct and not ct.startswith(("text/plain", "application/octet-stream")):
        return False  # images, PDF, JSON, JavaScript ...
    head = body[:1024].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html")) or b"<html" in head


class TooComplex(ValueError):
    """HTML nested deeper than ``read.max_html_depth``: parsing it would cost seconds to minutes."""


#: elements without an end tag, or whose end tag the parser supplies (their depth never accumulates)
_NO_DEPTH = frozenset("area base br col embed hr img input link meta param source track wbr "
                      "p li dt dd tr td th thead tbody tfoot option optgroup rb rt rtc rp colgroup "
                      "caption head body html".split())
_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)")


def html_depth_over(html: str, limit: int) -> int | None:
    """The nesting depth of ``html`` once it passes ``limit`` (an upper bound: tags in comments and
    scripts count too), else None. Linear in the page; a page with fewer tags than ``limit`` is not
    scanned at all, so ordinary pages cost one ``count``."""
    if html.count("<") <= limit:
        return None
    depth = 0
    for m in _TAG.finditer(html):
        name = m[2].lower()
        if name in _NO_DEPTH:
            continue
        if m[1]:
            depth = max(0, depth - 1)
        else:
            depth += 1
            if depth > limit:
                return depth
    return None


def _trafilatura(html: str, fast: bool = False) -> str:
    import trafilatura

    return trafilatura.extract(html, include_comments=False, include_tables=False, fast=fast) or ""


def html_to_text(body: bytes, charset: str | None, extractor: str = "hybrid", max_depth: int = 3_000) -> str:
    """The main text of an HTML body; :class:`TooComplex` when it is nested deeper than ``max_depth``."""
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    enc = charset or detect_encoding(body)
    html = bytes_to_str(body, enc)
    if html_depth_over(html, max_depth):
        raise TooComplex(f"HTML nested more than {max_depth:,} elements deep (read.max_html_depth)")
    if extractor == "trafilatura":
        return _trafilatura(html)
    if extractor == "hybrid":
        from gristmill.pipelines.maintext import extract_main_text

        text, how = extract_main_text(html)
        # hard pages (an article container that Resiliparse's main content does not agree with): the
        # careful extractor, needed on ~2% of pages only; its fast mode, as its jusText fallback costs
        # more than it gains here (~100 ms a page)
        return _trafilatura(html, fast=True) or text if how == "container" else text
    from resiliparse.extract.html2text import extract_plain_text

    return extract_plain_text(html, main_content=True, alt_texts=False, links=False, list_bullets=True)
