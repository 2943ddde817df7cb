"""Builders of damaged and hostile input files, made from the real sample crawl."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from .conftest import SAMPLE

CC_WARC = SAMPLE / "cc-main-2020-34-excerpt.warc.gz"  # 16 responses, one gzip member per record


def corrupt_gzip_mid_file(dst: Path) -> Path:
    data = bytearray(CC_WARC.read_bytes())
    mid = len(data) // 2
    for i in range(mid, mid + 200):
        data[i] ^= 0x5A
    dst.write_bytes(bytes(data))
    return dst


def truncated_gzip(dst: Path) -> Path:
    data = CC_WARC.read_bytes()
    dst.write_bytes(data[: int(len(data) * 0.85)])
    return dst


def truncated_warc_record(dst: Path) -> Path:
    """Uncompressed WARC cut in the middle of a response record's body."""
    raw = gzip.decompress(CC_WARC.read_bytes())
    # the last response record starts at the last 'WARC-Type: response'
    start = raw.rfind(b"WARC-Type: response")
    dst.write_bytes(raw[: start + 3000])
    return dst


def not_a_warc(dst: Path) -> Path:
    dst.write_bytes(gzip.compress(b"<html><body>this is an HTML page saved with the wrong name</body></html>\n" * 50))
    return dst


def not_gzip(dst: Path) -> Path:
    dst.write_bytes(b"WARC/1.0\r\nplain text pretending to be gzip\r\n")
    return dst


def zero_length(dst: Path) -> Path:
    dst.write_bytes(b"")
    return dst


def _response(writer: WARCWriter, url: str, ctype: str, body: bytes, status: str = "200 OK") -> None:
    http = StatusAndHeaders(status, [("Content-Type", ctype), ("Content-Length", str(len(body)))], protocol="HTTP/1.1")
    writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http))


PAGE = (
    "<html><head><title>Mill</title></head><body><article><h1>The old mill</h1>"
    + "".join(
        f"<p>The old mill on the river was built in {1700 + i} and it has been grinding grain for the village "
        "ever since, with a short pause during the war when the wheel was broken by the flood.</p>"
        for i in range(8)
    )
    + "</article></body></html>"
).encode()


def mixed_payload_warc(dst: Path, big_html_bytes: int = 0) -> Path:
    """A WARC with an HTML page, a PNG, a PDF, a redirect and (optionally) a huge HTML page."""
    with open(dst, "wb") as f:
        w = WARCWriter(f, gzip=True)
        _response(w, "https://mill.example/", "text/html; charset=utf-8", PAGE)
        _response(w, "https://mill.example/logo.png", "image/png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 20)
        _response(w, "https://mill.example/report.pdf", "application/pdf", b"%PDF-1.4\n" + b"0" * 4000)
        _response(w, "https://mill.example/old", "text/html", b"", status="301 Moved Permanently")
        if big_html_bytes:
            body = b"<html><body>" + b"<p>" + b"a" * (big_html_bytes - 40) + b"</p></body></html>"
            _response(w, "https://mill.example/huge", "text/html", body)
    return dst


def hostile_jsonl(dst: Path, big_doc_bytes: int = 50 * 2**20) -> Path:
    """JSONL: invalid UTF-8, NUL bytes, empty and whitespace-only texts, a 50 MB document,
    a broken line, a record without text, a non-object line."""
    good = (
        "The miller said that the water was high this year, and that the wheel turned fast. "
        "His daughter kept the books and sold flour to the bakers of three villages. "
        "In the winter the river froze and the work stopped for weeks at a time. "
        "They used those weeks to repair the gears and to sharpen the millstones. "
        "By spring the mill was ready again, and the farmers brought their grain by cart. "
        "Nobody in the valley remembers a year when the mill did not open in March."
    )
    lines = [
        json.dumps({"id": "good-1", "text": good, "url": "https://a.example/1"}).encode(),
        b'{"id": "bad-utf8", "text": "caf\xc3 au lait \xff\xfe is served here every morning. ' + good.encode() + b'"}',
        json.dumps({"id": "nul", "text": "NUL\x00bytes\x00here. " + good}).encode(),
        json.dumps({"id": "empty", "text": ""}).encode(),
        json.dumps({"id": "blank", "text": "   \n\t \n  "}).encode(),
        json.dumps({"id": "huge", "text": "x" * big_doc_bytes}).encode(),
        b'{"id": "broken", "text": "unterminated',
        json.dumps({"id": "no-text", "body": "wrong field"}).encode(),
        b"[1, 2, 3]",
        json.dumps({"id": "good-2", "text": good.replace("miller", "baker")}).encode(),
    ]
    dst.write_bytes(b"\n".join(lines) + b"\n")
    return dst
