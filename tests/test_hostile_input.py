"""No record can stop a run: every reader, fed mutated real records, finishes, accounts for every
record, and hands on only documents that every later step (the cleaning chain, Beam's coder, the
Arrow writer) can take."""

from __future__ import annotations

import gzip
import json
import zlib

import brotli
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from apache_beam.coders import registry
from fastwarc.warc import ArchiveIterator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gristmill.config import GristmillConfig, ReadConfig, load_config
from gristmill.documents import open_corpus, to_table
from gristmill.pipelines.clean import Cleaner
from gristmill.pipelines.corpus import run_corpus
from gristmill.pipelines.extract import decode_content, parse_http_response
from gristmill.pipelines.readers import FileStats, read_file, repair_text

from .conftest import DEMO_CONFIG, SAMPLE

CODER = registry.get_coder(object)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _real_jsonl(n: int = 30) -> list[str]:
    with gzip.open(SAMPLE / "dolma-cc-main-2019-30.jsonl.gz", "rt", encoding="utf-8") as f:
        return [next(f) for _ in range(n)]


def _real_http_blocks(n: int = 6) -> list[bytes]:
    blocks = []
    with open(SAMPLE / "wget-2024-04-25.warc.gz", "rb") as f:
        for rec in ArchiveIterator(f, parse_http=False, auto_decode="none"):
            if rec.headers.get("WARC-Type") == "response":
                blocks.append(rec.reader.read())
                if len(blocks) == n:
                    break
    return blocks


JSONL = _real_jsonl()
HTTP = _real_http_blocks()
CLEANER = Cleaner(GristmillConfig())


def _check(path, name: str) -> list[dict]:
    """The invariants of one read: no exception escapes, the documents counted are the documents
    yielded, and each document passes the cleaning chain, Beam's coder and the Arrow writer."""
    out = list(read_file(str(path), name, ReadConfig(max_doc_bytes=200_000)))
    stats, docs = out[-1], out[:-1]
    assert isinstance(stats, FileStats) and not any(isinstance(d, FileStats) for d in docs)
    assert stats.documents == len(docs)
    cleaned = []
    for doc in docs:
        assert isinstance(doc["id"], str) and doc["id"]
        assert doc["reason"] is None or isinstance(doc["reason"], str)
        CODER.encode(doc)  # a lone surrogate here would stop the whole run
        cleaned.append(CLEANER.process({**doc, "signals": dict(doc["signals"])}))
    for doc in cleaned:
        CODER.encode(doc)
    to_table([d for d in cleaned if not d["reason"]])
    to_table([d for d in cleaned if d["reason"]], rejected=True)
    assert len({d["id"] for d in docs}) == len(docs)  # ids unique within a file
    return docs


# --- JSON Lines ---------------------------------------------------------------------------------------

BAD_VALUES = st.one_of(
    st.none(), st.integers(), st.floats(allow_nan=True), st.booleans(), st.text(max_size=20),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.just("\ud800"), st.just("a\udfffb"), st.just("\U0001F600"),
)


@st.composite
def mutated_jsonl_line(draw):
    line = draw(st.sampled_from(JSONL)).rstrip("\n")
    how = draw(st.sampled_from(["field", "escape", "truncate", "flip", "huge_number", "nest", "same_id", "as_is"]))
    if how == "field":
        record = json.loads(line)
        record[draw(st.sampled_from(["id", "text", "url", "metadata", "created"]))] = draw(BAD_VALUES)
        return json.dumps(record, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    if how == "escape":
        bad = draw(st.sampled_from(['\\ud800', '\\udfff', '\\ud83d\\ude00', '\\u12', '\\x41', '\\', '\\uZZZZ']))
        at = line.index('"text": "') + 9 if '"text": "' in line else 1
        return (line[:at] + bad + line[at:]).encode()
    if how == "truncate":
        return line.encode()[: draw(st.integers(0, len(line)))]
    if how == "flip":
        data = bytearray(line.encode())
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    if how == "huge_number":
        return b'{"id": 1' + b"0" * 5000 + b', "text": "x"}'
    if how == "nest":
        return b"[" * 50_000 + b"]" * 50_000
    if how == "same_id":
        return b'{"id": "dup", "text": "the same id again"}'
    return line.encode()


@SETTINGS
@given(lines=st.lists(mutated_jsonl_line(), min_size=1, max_size=12), compress=st.booleans())
def test_jsonl_reader_survives_mutated_records(tmp_path, lines, compress):
    data = b"\n".join(lines) + b"\n"
    path = tmp_path / ("m.jsonl.gz" if compress else "m.jsonl")
    path.write_bytes(gzip.compress(data) if compress else data)
    docs = _check(path, path.name)
    # one document (maybe dropped) per non-blank line (a flipped byte may have made a new line)
    assert len(docs) == sum(1 for line in data.split(b"\n") if line.strip())


# --- WARC -----------------------------------------------------------------------------------------------


def _warc_record(headers: dict[str, str], block: bytes) -> bytes:
    head = "WARC/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode("utf-8", "surrogateescape") + b"\r\n" + block + b"\r\n\r\n"


ENCODINGS = {
    "gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress,
    "zstd": zstandard.ZstdCompressor().compress, "identity": lambda b: b,
}


@st.composite
def mutated_warc_record(draw, index: int = 0):
    block = draw(st.sampled_from(HTTP))
    head, _, body = block.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    encoding = draw(st.sampled_from([*ENCODINGS, "bogus", "gzip, br"]))
    if encoding in ENCODINGS:
        body = ENCODINGS[encoding](body)
    elif encoding == "gzip, br":
        body = brotli.compress(gzip.compress(body))
    lines = [ln for ln in lines if not ln.lower().startswith((b"content-encoding", b"transfer-encoding"))]
    lines.append(b"Content-Encoding: " + encoding.encode())
    how = draw(st.sampled_from(["body_flip", "body_truncate", "status", "header_garbage", "chunked", "as_is"]))
    if how == "body_flip" and body:
        b = bytearray(body)
        for _ in range(draw(st.integers(1, 6))):
            b[draw(st.integers(0, len(b) - 1))] ^= draw(st.integers(1, 255))
        body = bytes(b)
    elif how == "body_truncate":
        body = body[: draw(st.integers(0, len(body)))]
    elif how == "status":
        lines[0] = draw(st.sampled_from([b"HTTP/1.1 abc", b"HTTP/1.1", b"GARBAGE", b"HTTP/1.1 404 Not Found", b""]))
    elif how == "header_garbage":
        lines.insert(draw(st.integers(1, len(lines))), draw(st.binary(max_size=60)).replace(b"\r\n\r\n", b""))
    elif how == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        body = draw(st.sampled_from([b"zz\r\n" + body, f"{len(body) + 50:x}\r\n".encode() + body, b""]))
    block = b"\r\n".join(lines) + b"\r\n\r\n" + body
    headers = {
        "WARC-Type": draw(st.sampled_from(["response", "response", "resource", "conversion", "request", "metadata"])),
        "WARC-Record-ID": draw(st.sampled_from([f"<urn:uuid:{index:08d}-0000-0000-0000-000000000000>", "", "<>",
                                                "dup"])),
        "WARC-Target-URI": draw(st.sampled_from(["http://example.org/", "", "not a url \udcff", "<http://[bad>"])),
        "WARC-Date": draw(st.sampled_from(["2024-04-25T16:24:44Z", "yesterday", ""])),
        "Content-Type": draw(st.sampled_from(["application/http; msgtype=response", "text/html", "image/png", ""])),
    }
    length = len(block) + draw(st.sampled_from([0, 0, 0, 7, -7]))  # a wrong Content-Length now and then
    headers["Content-Length"] = str(max(length, 0))
    return _warc_record(headers, block)


@SETTINGS
@given(data=st.data(), compress=st.booleans())
def test_warc_reader_survives_mutated_records(tmp_path, data, compress):
    records = [data.draw(mutated_warc_record(i)) for i in range(data.draw(st.integers(1, 5)))]
    raw = b"".join(gzip.compress(r) for r in records) if compress else b"".join(records)
    path = tmp_path / ("m.warc.gz" if compress else "m.warc")
    path.write_bytes(raw)
    _check(path, path.name)


# --- Parquet --------------------------------------------------------------------------------------------


@SETTINGS
@given(ids=st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), min_size=1, max_size=8),
       texts=st.lists(st.one_of(st.none(), st.text(max_size=200)), min_size=8, max_size=8),
       text_as_binary=st.booleans())
def test_parquet_reader_survives_odd_columns(tmp_path, ids, texts, text_as_binary):
    n = len(ids)
    text_col = [t.encode("utf-8", "replace") if text_as_binary and t is not None else repair_text(t) for t in texts[:n]]
    table = pa.table({"id": pa.array(ids, pa.int64()),
                      "text": pa.array(text_col, pa.binary() if text_as_binary else pa.string())})
    path = tmp_path / "m.parquet"
    pq.write_table(table, path)
    docs = _check(path, path.name)
    assert len(docs) == n
    for d, t in zip(docs, text_col):  # a binary column is read as UTF-8 text; a missing text is counted
        assert (d["reason"] == "read:no_text_field") == (t is None)
        if text_as_binary and t is not None:
            assert d["text"] == repair_text(t.decode("utf-8", "replace"))


def test_deeply_nested_html_is_dropped_as_too_complex_before_parsing(tmp_path):
    """50,000 nested <div>s in 550 KB: 31-77 s of parsing, growing with the square of the depth; dropped
    (counted) at once, and a page nested within read.max_html_depth is still read."""
    from gristmill.pipelines.extract import html_depth_over

    def page(depth: int) -> bytes:
        text = b"A mill by the river. " * 30
        return b"<html><body>" + b"<div>" * depth + text + b"</div>" * depth + b"</body></html>"

    def response(n: int) -> bytes:
        block = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + page(n)
        return _warc_record({"WARC-Type": "response", "WARC-Record-ID": f"<urn:uuid:{n:08d}>",
                             "WARC-Target-URI": f"http://x/{n}", "Content-Type": "application/http; msgtype=response",
                             "Content-Length": str(len(block))}, block)

    path = tmp_path / "deep.warc"
    path.write_bytes(response(50_000) + response(200))
    out = list(read_file(str(path), path.name, ReadConfig()))
    docs = out[:-1]
    assert [d["reason"] for d in docs] == ["read:too_complex", None]
    assert "nested more than 3,000 elements deep" in docs[0]["detail"]
    assert "A mill by the river." in docs[1]["text"]
    # an upper bound that never under-counts what a parser nests, and ordinary pages cost one count()
    assert html_depth_over("<div>" * 11 + "</div>" * 11, 10) == 11
    assert html_depth_over("<p>" * 50 + "<br>" * 50, 10) is None  # auto-closed and void elements do not nest
    assert html_depth_over("<div>x</div>" * 5000, 10) is None


# --- HTTP bodies ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "deflate", "br", "zstd", "identity", ""])
def test_http_bodies_are_decoded(encoding):
    body = b"<html><body><p>" + b"A mill by the river. " * 50 + b"</p></body></html>"
    coded = ENCODINGS.get(encoding.removeprefix("x-"), lambda b: b)(body)
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: " + encoding.encode()
    block = head + b"\r\n\r\n" + coded
    assert parse_http_response(block)[3] == body


def test_raw_deflate_stacked_codings_and_limits():
    body = b"x" * 10_000
    raw_deflate = zlib.compressobj(wbits=-15)
    assert decode_content(raw_deflate.compress(body) + raw_deflate.flush(), b"deflate", 1 << 20) == body
    assert decode_content(brotli.compress(gzip.compress(body)), b"gzip, br", 1 << 20) == body
    with pytest.raises(ValueError, match="unsupported Content-Encoding 'compress'"):
        decode_content(body, b"compress", 1 << 20)
    bomb = brotli.compress(b"\0" * 50_000_000)  # 50 MB from a few kB
    with pytest.raises(ValueError, match="over 1000000 bytes"):
        decode_content(bomb, b"br", 1_000_000)


def test_lone_surrogates_are_repaired_like_invalid_utf8():
    assert repair_text("a\ud800b") == "a\ufffdb" and repair_text("\ud83d\ude00") == "\U0001F600"
    assert repair_text("plain") == "plain" and repair_text(None) is None


# --- end to end -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_with_hostile_records_finishes_and_balances(tmp_path):
    """The records that used to stop a run (a lone surrogate escape, a 5,000-digit number, nesting
    deeper than Python's recursion limit, repeated and non-string ids), next to real ones."""
    lines = [line.rstrip("\n") for line in JSONL[:10]] + [
        '{"id": "s", "text": "A lone surrogate \\ud800 in otherwise ordinary text about mills and rivers."}',
        '{"id": 1' + "0" * 5000 + ', "text": "x"}', "[" * 50_000 + "]" * 50_000,
        '{"id": 7, "text": "an integer id"}', '{"id": 7, "text": "an integer id again, with other words"}',
        '{"id": null, "text": "a null id"}']
    path = tmp_path / "hostile.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = run_corpus([str(path), str(SAMPLE / "wget-2024-04-25.warc.gz")], str(tmp_path / "out"),
                        load_config(DEMO_CONFIG), progress=False)
    c = result.manifest["counts"]
    assert c["read"] == c["kept"] + sum(c["dropped"].values()) == 16 + sum(
        f["documents"] for f in result.manifest["inputs"] if f["source"].endswith(".warc.gz"))
    assert c["dropped"]["read:invalid_json"] == 2
    hostile = next(f for f in result.manifest["inputs"] if f["source"].endswith("hostile.jsonl"))
    assert hostile["error"] is None and hostile["renamed_ids"] == 1
    out = str(tmp_path / "out")
    every = open_corpus(out).to_table().to_pylist() + open_corpus(out, rejected=True).to_table().to_pylist()
    rows = {r["id"]: r for r in every if r["source"].endswith("hostile.jsonl")}
    assert rows["7"]["original_id"] == "7" and rows["7#14"]["original_id"] == "7"  # an integer id, repeated
    assert any(k.endswith("hostile.jsonl#15") for k in rows) and "\ufffd" in rows["s"]["text"]


@pytest.mark.slow
@pytest.mark.parametrize("exact_dedup", [True, False])
def test_ids_are_unique_across_files(tmp_path, exact_dedup):
    """Two files that number their records alike ("0", "1", ...): the smallest source keeps each id, the
    other file's document becomes "<id>@<source>" (its id in original_id); counted in the manifest."""
    texts = [json.loads(line)["text"] for line in JSONL]
    for name, part in (("a.jsonl", texts[:15]), ("b.jsonl", texts[15:30])):
        (tmp_path / name).write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(part)))
    overrides = ["near_dedup.enabled=false"] + ([] if exact_dedup else ["exact_dedup.enabled=false"])
    result = run_corpus([str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")], str(tmp_path / "out"),
                        load_config(DEMO_CONFIG, overrides), progress=False)
    kept = open_corpus(str(tmp_path / "out")).to_table().to_pylist()
    ids = [r["id"] for r in kept]
    assert len(set(ids)) == len(ids)
    moved = [r for r in kept if r["original_id"] is not None]
    assert moved and all(r["id"] == f"{r['original_id']}@b.jsonl" and r["source"] == "b.jsonl" for r in moved)
    assert all(any(k["id"] == r["original_id"] and k["source"] == "a.jsonl" for k in kept) for r in moved)
    assert result.manifest["ids_renamed"] == {"within_files": 0, "across_files": len(moved)}
