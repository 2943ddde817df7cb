"""Readers: crawl files in, documents out, every record accounted for.

One function per format (WARC/WET, JSONL, Parquet). Each yields document dicts (some already marked
dropped, with the reason, e.g. a non-HTML WARC payload) and finally one :class:`FileStats` with the
file's size, SHA-256 and record counts. A file that breaks part-way (corrupt gzip, truncated
record) yields what it could read plus one quarantine record naming the error and byte offset: the
run goes on and the manifest says what happened.

Files are opened through Beam's ``FileSystems``, so ``gs://``, ``s3://`` and ``hdfs://`` inputs work
wherever the matching Beam extra is installed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from gristmill.config import JsonlConfig, ReadConfig
from gristmill.documents import dropped, field_at, new_document
from gristmill.errors import ExitCode, GristmillError
from gristmill.io import filesystems

_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def repair_text(s: str | None) -> str | None:
    """Lone UTF-16 surrogates (JSON escapes such as "\\ud800", common in scraped JSON) become U+FFFD,
    as invalid UTF-8 does: a string holding one cannot be encoded, so no later step (nor Beam's
    coder) could handle it. Surrogate pairs become the character they encode."""
    if s is None or s.isascii() or not _SURROGATE_RE.search(s):
        return s
    return s.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class InputError(GristmillError):
    """An input file that cannot be read at all. The message names the file and the problem."""

    exit_code = ExitCode.INPUT


@dataclass
class FileStats:
    path: str
    source: str
    format: str
    size: int = 0
    sha256: str = ""
    documents: int = 0  # records that are documents (each counted as read)
    renamed_ids: int = 0  # ids repeated within the file, made unique
    skipped_records: dict[str, int] = field(default_factory=dict)  # WARC request/metadata/... records
    error: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


def detect_format(path: str) -> tuple[str, str | None]:
    """(format, compression) from the file name."""
    name = path.lower()
    compression = None
    for ext, comp in ((".gz", "gzip"), (".zst", "zstd"), (".zstd", "zstd")):
        if name.endswith(ext):
            compression, name = comp, name[: -len(ext)]
            break
    if name.endswith((".warc", ".wet", ".arc")):
        return "warc", compression
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl", compression
    if name.endswith(".parquet"):
        if compression:
            raise InputError(f"{path}: a compressed Parquet file is not supported; Parquet compresses its own pages")
        return "parquet", None
    raise InputError(
        f"{path}: unknown input format; expected .warc[.gz], .wet[.gz], .jsonl[.gz|.zst] or .parquet"
    )


def _open_raw(path: str):
    # CompressionTypes.UNCOMPRESSED: we decompress ourselves, to see (and report) corruption
    return filesystems().open(path, compression_type="uncompressed")


class _HashingReader(io.RawIOBase):
    """Counts and hashes the raw bytes as the parser pulls them, so each file is read once."""

    def __init__(self, raw):
        self.raw = raw
        self.sha = hashlib.sha256()
        self.nbytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        data = self.raw.read(len(buf))
        if not data:
            return 0
        n = len(data)
        buf[:n] = data
        self.sha.update(data)
        self.nbytes += n
        return n

    def drain(self) -> None:
        while True:
            data = self.raw.read(1 << 20)
            if not data:
                return
            self.sha.update(data)
            self.nbytes += len(data)


def _decompressed(raw: io.RawIOBase, compression: str | None):
    buffered = io.BufferedReader(raw, buffer_size=1 << 20)
    if compression == "gzip":
        return gzip.GzipFile(fileobj=buffered, mode="rb")
    if compression == "zstd":
        import zstandard

        # BufferedReader adds the readline() that line iteration needs
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(buffered, read_across_frames=True))
    return buffered


# ---------------------------------------------------------------------------------------------
# Up-front probe: is the file what its name says?
# ---------------------------------------------------------------------------------------------


def _not_a_regular_file(path: str) -> str | None:
    """What a local path is when it is not a regular file (a FIFO, a socket, a device), else None."""
    import stat

    if "://" in path:
        return None
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # the probe reports it
    for test, name in ((stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return None


def probe(path: str, cfg: ReadConfig) -> tuple[int, str | None]:
    """(size in bytes, problem or None), from at most ``cfg.probe_bytes`` of the file's start.

    Catches the errors that make a whole file unreadable (not gzip, not a WARC, not Parquet, not
    JSON Lines) before the pipeline starts; damage further in is handled while reading.
    """
    kind = _not_a_regular_file(path)
    if kind:  # opening a FIFO blocks until a writer comes; a device never ends
        return 0, f"not a regular file but a {kind}: gristmill reads files (copy the data into a file first)"
    try:
        fmt, compression = detect_format(path)
        size = filesystems().match([path])[0].metadata_list[0].size_in_bytes
    except InputError as e:
        return 0, str(e).split(": ", 1)[-1]
    except Exception as e:  # noqa: BLE001 - any filesystem error is reported with the path
        return 0, f"cannot stat: {e}"
    if size == 0:
        return 0, None  # an empty file holds no documents; reported, not fatal
    try:
        with _open_raw(path) as f:
            head = f.read(cfg.probe_bytes)
            if fmt == "parquet":
                if head[:4] != b"PAR1":
                    return size, "not a Parquet file (no PAR1 magic)"
                return size, None
            if compression == "gzip":
                if head[:2] != b"\x1f\x8b":
                    return size, "not gzip-compressed (no gzip magic) although the name ends in .gz"
                try:
                    head = zlib.decompressobj(wbits=31).decompress(head, cfg.probe_bytes)
                except zlib.error as e:
                    return size, f"gzip data corrupt at the start: {e}"
            elif compression == "zstd":
                if head[:4] != b"\x28\xb5\x2f\xfd":
                    return size, "not zstd-compressed (no zstd magic) although the name ends in .zst"
                import zstandard

                try:
                    head = zstandard.ZstdDecompressor().decompressobj().decompress(head)[: cfg.probe_bytes]
                except zstandard.ZstdError as e:
                    return size, f"zstd data corrupt at the start: {e}"
    except Exception as e:  # noqa: BLE001
        return size, f"cannot read: {e}"
    head = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if fmt == "warc" and head and not head.startswith((b"WARC/", b"filedesc://")):
        return size, "not a WARC file (does not start with a 'WARC/1.x' record header)"
    if fmt == "jsonl" and head and not head.startswith(b"{"):
        return size, "not JSON Lines (the first record does not start with '{')"
    return size, None


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def read_file(path: str, source: str, cfg: ReadConfig) -> Iterator[dict | FileStats]:
    """Yield the documents of one input file, then its :class:`FileStats`."""
    fmt, compression = detect_format(path)
    stats = FileStats(path=path, source=source, format=fmt)
    with _open_raw(path) as raw_file:
        raw = _HashingReader(raw_file)
        try:
            if _is_empty(path):
                pass  # zero-length: no documents; the manifest lists it with documents = 0
            else:
                if fmt == "parquet" or compression is None:
                    # Random access (Parquet; FastWARC seeks on uncompressed input): hash the file in
                    # one pass, then parse it from a second, seekable handle.
                    raw.drain()
                    stream = _open_raw(path)
                else:
                    stream = _decompressed(raw, compression)
                with stream:
                    parse = {"warc": _read_warc, "jsonl": _read_jsonl, "parquet": _read_parquet}[fmt]
                    seen: set[str] = set()
                    for doc in parse(stream, source, cfg, stats):
                        if doc["id"] in seen:
                            _make_unique(doc, seen, stats)
                        seen.add(doc["id"])
                        stats.documents += 1
                        yield doc
        except BaseException as e:  # noqa: BLE001 - FastWARC reports some damage as a Rust panic
            if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError)):
                raise
            # Damage part-way: keep what was read, quarantine the rest of the file as one record.
            problem = f"{type(e).__name__}: {e}"
            stats.error = f"stopped after {stats.documents} documents: {problem}"
            stats.documents += 1
            yield dropped(
                new_document(f"{source}#unreadable", "", source), "read:corrupt_file", stats.error
            )
        finally:
            raw.drain()
    stats.size = raw.nbytes
    stats.sha256 = raw.sha.hexdigest()
    yield stats


def _make_unique(doc: dict, seen: set[str], stats: FileStats) -> None:
    """A repeated id gets its record number in the file appended (``#7``; ``#7.1`` ... in the rare
    case that is taken too): the first occurrence keeps the id, the same input gives the same ids."""
    base = f"{doc['id']}#{stats.documents}"
    new, k = base, 0
    while new in seen:
        k += 1
        new = f"{base}.{k}"
    doc["original_id"] = doc.get("original_id") or doc["id"]
    doc["id"] = new
    stats.renamed_ids += 1


def _is_empty(path: str) -> bool:
    return filesystems().match([path])[0].metadata_list[0].size_in_bytes == 0


def _first(record: dict, names) -> str | None:
    for name in names:
        v = field_at(record, name)
        if v not in (None, ""):
            return repair_text(v if isinstance(v, str) else _as_text(v))
    return None


def _as_text(value) -> str:
    """A non-string field value as text: JSON (``42``, ``1.5``, ``true``, ``{"a": 1}``)."""
    return repair_text(json.dumps(value, ensure_ascii=False, sort_keys=True, default=str))


def document_id(value, source: str, index: int) -> str:
    """The id of a JSONL/Parquet record (the rule, documented in docs/corpus.md): a string as it is
    (lone surrogates repaired); a number, boolean, object or array as its JSON text (``42`` →
    ``"42"``); missing, null or empty → ``<source>#<record index>``."""
    if value is None or value == "":
        return f"{source}#{index}"
    return repair_text(value) if isinstance(value, str) else _as_text(value)


def _record_to_doc(record, index: int, source: str, jcfg: JsonlConfig, max_bytes: int) -> dict:
    if not isinstance(record, dict):
        return dropped(new_document(f"{source}#{index}", "", source), "read:not_an_object")
    raw_id = field_at(record, jcfg.id_field)
    doc_id = document_id(raw_id, source, index)
    url = _first(record, (jcfg.url_field, *jcfg.url_fallbacks))
    date = _first(record, (jcfg.date_field, *jcfg.date_fallbacks))
    text = field_at(record, jcfg.text_field)
    doc = new_document(doc_id, "", source, url, date)
    if raw_id not in (None, "") and raw_id != doc_id:
        # a string changed only by repairing surrogates is kept as escaped JSON text
        doc["original_id"] = json.dumps(raw_id) if isinstance(raw_id, str) else _as_text(raw_id)
    if text is None:
        return dropped(doc, "read:no_text_field", f"field {jcfg.text_field!r} missing")
    if isinstance(text, bytes | bytearray):  # a Parquet binary column (written without a UTF-8 annotation)
        text = bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        return dropped(doc, "read:no_text_field", f"field {jcfg.text_field!r} is {type(text).__name__}")
    if len(text) > max_bytes:  # characters ≤ bytes: a cheap, safe bound before encoding
        return dropped(doc, "read:too_large", f"{len(text)} characters")
    doc["text"] = repair_text(text)
    return doc


def _record_or_error(record, index: int, source: str, cfg: ReadConfig) -> dict:
    try:
        return _record_to_doc(record, index, source, cfg.jsonl, cfg.max_doc_bytes)
    except Exception as e:  # noqa: BLE001 - one odd record never costs the rest of the file
        doc = new_document(f"{source}#{index}", "", source)
        return dropped(doc, "read:bad_record", f"record {index}: {type(e).__name__}: {e}"[:300])


def _read_jsonl(stream, source: str, cfg: ReadConfig, stats: FileStats) -> Iterator[dict]:
    for index, line in enumerate(stream):
        if index == 0:  # a byte-order mark (editors on Windows write one) is not part of the first record
            line = line.removeprefix(b"\xef\xbb\xbf")
        if not line.strip():
            continue
        if len(line) > cfg.max_doc_bytes * 2:
            yield dropped(new_document(f"{source}#{index}", "", source), "read:too_large", f"{len(line)} bytes")
            continue
        try:
            # invalid UTF-8 becomes U+FFFD rather than costing the whole record
            record = json.loads(line.decode("utf-8", errors="replace"))
        except (ValueError, RecursionError) as e:  # bad JSON, a number over 4,300 digits, deep nesting
            yield dropped(new_document(f"{source}#{index}", "", source), "read:invalid_json", str(e)[:200])
            continue
        yield _record_or_error(record, index, source, cfg)


def _read_parquet(stream, source: str, cfg: ReadConfig, stats: FileStats) -> Iterator[dict]:
    import pyarrow.parquet as pq

    index = 0
    for batch in pq.ParquetFile(stream).iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            yield _record_or_error(record, index, source, cfg)
            index += 1


_DOC_RECORD_TYPES = ("response", "conversion", "resource")


def _read_warc(stream, source: str, cfg: ReadConfig, stats: FileStats) -> Iterator[dict]:
    from fastwarc.warc import ArchiveIterator

    skipped: Counter[str] = Counter()
    for rec in ArchiveIterator(stream, parse_http=False, auto_decode="none"):
        rtype = rec.headers.get("WARC-Type", "unknown")
        if rtype not in _DOC_RECORD_TYPES:
            skipped[rtype] += 1
            continue
        record_id = repair_text((rec.record_id or "").strip("<>").removeprefix("urn:uuid:"))
        record_id = record_id or f"{source}@{rec.stream_pos}"
        url = repair_text((rec.headers.get("WARC-Target-URI") or "").strip().strip("<>")) or None
        doc = new_document(record_id, "", source, url, repair_text(rec.headers.get("WARC-Date")))
        if rec.content_length > cfg.max_doc_bytes:
            rec.reader.consume()
            yield dropped(doc, "read:too_large", f"{rec.content_length} bytes")
            continue
        block = rec.reader.read()
        if len(block) < rec.content_length:
            yield dropped(doc, "read:truncated_record", f"{len(block)} of {rec.content_length} bytes")
            continue
        try:
            yield _warc_document(doc, rtype, rec.headers.get("Content-Type", ""), block, cfg)
        except Exception as e:  # noqa: BLE001 - a record's own damage never costs the rest of the file
            error = f"{type(e).__name__}: {e}"[:300]
            yield dropped(doc, "extract:error", f"{error} (record at byte {rec.stream_pos})")
    stats.skipped_records = dict(sorted(skipped.items()))


def _warc_document(doc: dict, rtype: str, record_ctype: str, block: bytes, cfg: ReadConfig) -> dict:
    """The document of one WARC record's block: its text, or dropped with the reason."""
    from gristmill.pipelines import extract

    if rtype == "conversion":  # WET: the text is the block
        doc["text"] = block.decode("utf-8", errors="replace")
        return doc
    if rtype == "resource":
        if not extract.is_html(record_ctype, block):
            return dropped(doc, "extract:not_html", record_ctype or "no content type")
        body, charset = block, None
    else:
        try:
            status, ctype, charset, body = extract.parse_http_response(block, cfg.max_doc_bytes)
        except extract.BodyTooLarge as e:
            return dropped(doc, "read:too_large", str(e))
        except extract.UnsupportedEncoding as e:
            return dropped(doc, "extract:unsupported_encoding", str(e)[:200])
        except Exception as e:  # noqa: BLE001 - bad headers; damaged gzip, brotli or zstd bodies
            detail = str(e) if type(e) is ValueError else f"{type(e).__name__}: {e}"
            return dropped(doc, "extract:bad_http", detail[:200])
        if status != 200:
            return dropped(doc, "extract:http_status", str(status))
        if not extract.is_html(ctype, body):
            return dropped(doc, "extract:not_html", ctype or "no content type")
    try:
        text = extract.html_to_text(body, charset, cfg.extractor, cfg.max_html_depth)
    except extract.TooComplex as e:
        return dropped(doc, "read:too_complex", str(e))
    if not text.strip():
        return dropped(doc, "extract:no_text")
    doc["text"] = text
    return doc
