"""The corpus contract: the document record, the shard schemas, and the corpus directory.

Written by :mod:`gristmill.pipelines`, read by :mod:`gristmill.tokenizer` and by users: both sides of
the format live here, in the core, so that no stage imports another to read it.

A document is a plain dict (cheap to pickle between Beam workers). Columns of a corpus shard:

==================  =========  =====================================================================
column              type       meaning
==================  =========  =====================================================================
id                  string     stable id, unique in the file it comes from: WARC-Record-ID, the
                               JSONL/Parquet id field (a number or other JSON value as its JSON
                               text), or ``<source>#<record index>`` when the record has none; an
                               id repeated within a file gets ``#<record number>`` appended
original_id         string     the input's id when ``id`` differs from it (converted or made
                               unique; JSON text for a non-string), else null
text                string     cleaned text (UTF-8, NFC, ``\\n`` line ends)
url                 string     page URL (null when unknown)
source              string     input file, relative to the common directory of all inputs
crawl_date          string     WARC-Date or the record's date field (ISO 8601 as given)
lang                string     fastText label (``en``, ``de``, ``zho_Hans`` with GlotLID ...)
lang_score          float32    fastText probability of ``lang``
n_chars             int32      characters in ``text``
cluster_id          string     near-dedup cluster: the id of its smallest member (the one kept)
cluster_size        int32      documents in the cluster before near-dedup (1: no near duplicate)
<signals>           see below  quality signals; null when the filter did not run on this document
==================  =========  =====================================================================

Rejected shards carry the same columns plus ``reason`` (``stage:rule``) and ``detail``.

A corpus directory: ``lang=xx/part-NNNNN.arrow`` (``.parquet`` with ``write.format: parquet``;
each shard sorted by id), dropped documents under ``_rejected/reason=<stage>/`` (Parquet:
``_rejected/stage=<stage>/``), the LSH index for refreshes under ``_index/``, a ``README.md``
dataset card, and
``manifest.json``, which lists every shard: read shards through it (:func:`open_corpus`), never by
globbing, so a stale file of an interrupted run is never read.
"""

from __future__ import annotations

import hashlib
import pickle

import pyarrow as pa

from gristmill import io

SCHEMA_VERSION = "4"  # 2: original_id; 3: quality_score; 4: FineWeb quality signals

#: quality signals written as columns, in this order; filters emit a subset of them
SIGNAL_FIELDS: dict[str, pa.DataType] = {
    "n_words": pa.int32(),
    "mean_word_length": pa.float32(),
    "alpha_words_frac": pa.float32(),
    "stop_words": pa.int32(),
    "dup_line_frac": pa.float32(),
    "dup_para_frac": pa.float32(),
    "c4_lines_removed_frac": pa.float32(),
    "line_punct_frac": pa.float32(),
    "short_line_frac": pa.float32(),
    "dup_line_char_frac": pa.float32(),
    "newlines_per_word": pa.float32(),
    "pii_emails": pa.int32(),
    "pii_ips": pa.int32(),
    "control_chars_removed": pa.int32(),
    "quality_score": pa.float32(),
}

BASE_FIELDS: list[pa.Field] = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("original_id", pa.string()),
    pa.field("text", pa.string(), nullable=False),
    pa.field("url", pa.string()),
    pa.field("source", pa.string(), nullable=False),
    pa.field("crawl_date", pa.string()),
    pa.field("lang", pa.string()),
    pa.field("lang_score", pa.float32()),
    pa.field("n_chars", pa.int32()),
    pa.field("cluster_id", pa.string()),
    pa.field("cluster_size", pa.int32()),
]

CORPUS_SCHEMA = pa.schema(
    BASE_FIELDS + [pa.field(k, t) for k, t in SIGNAL_FIELDS.items()],
    metadata={"gristmill.schema_version": SCHEMA_VERSION},
)
REJECTED_SCHEMA = pa.schema(
    list(CORPUS_SCHEMA) + [pa.field("reason", pa.string(), nullable=False), pa.field("detail", pa.string())],
    metadata={"gristmill.schema_version": SCHEMA_VERSION},
)


def new_document(
    doc_id: str,
    text: str,
    source: str,
    url: str | None = None,
    crawl_date: str | None = None,
) -> dict:
    return {
        "id": doc_id,
        "text": text,
        "url": url,
        "source": source,
        "crawl_date": crawl_date,
        "lang": None,
        "lang_score": None,
        "signals": {},
        "reason": None,
        "detail": None,
    }


def field_at(record, dotted: str):
    """The value at a dotted path of a JSON record (``meta.url``: ``record["meta"]["url"]``), or None
    where the path leads nowhere. Input records (``read.jsonl.*_field``) and evaluation records
    (``decontaminate.fields``) name their fields this way."""
    node = record
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def dropped(doc: dict, reason: str, detail: str | None = None) -> dict:
    doc["reason"] = reason
    if detail is not None:
        doc["detail"] = detail
    return doc


def pack_document(doc: dict) -> bytes:
    """A document as one byte string (a pickle): how documents wait on disk between steps of a run
    (near-dedup spill files, a run's per-file work). Never a published format. Not compressed one
    by one: the files that hold them compress whole record batches with LZ4 (``io.WORK_COMPRESSION``),
    ~4× cheaper to write and ~2.5× cheaper to read back than zlib per document."""
    return pickle.dumps(doc, protocol=pickle.HIGHEST_PROTOCOL)


def unpack_document(data: bytes) -> dict:
    return pickle.loads(data)


def sort_key(doc: dict) -> tuple[str, str]:
    """Order of documents everywhere it matters: by id, then source (the same file given under two
    names yields equal ids)."""
    return (doc["id"], doc["source"])


#: the LSH index written next to the shards (one row per kept document): what a refresh needs to
#: deduplicate a new crawl against this corpus without reading its text again
INDEX_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("text_hash", pa.string(), nullable=False),  # exact-dedup key (blake2b-128 hex)
        pa.field("band_keys", pa.list_(pa.uint64())),  # null: shorter than one shingle
        pa.field("signature", pa.list_(pa.uint32())),  # for verifying candidates against this corpus
    ],
    metadata={"gristmill.schema_version": SCHEMA_VERSION},
)


def to_index_table(docs: list[dict]) -> pa.Table:
    sigs = [d.get("_sig") for d in docs]
    return pa.table(
        [
            pa.array([d["id"] for d in docs], pa.string()),
            pa.array([d["source"] for d in docs], pa.string()),
            pa.array([d["text_hash"] for d in docs], pa.string()),
            pa.array([None if s is None else d["_band_keys"] for s, d in zip(sigs, docs)], pa.list_(pa.uint64())),
            pa.array([None if s is None else s for s in sigs], pa.list_(pa.uint32())),
        ],
        schema=INDEX_SCHEMA,
    )


def to_table(docs: list[dict], rejected: bool = False) -> pa.Table:
    schema = REJECTED_SCHEMA if rejected else CORPUS_SCHEMA
    cols: dict[str, list] = {f.name: [] for f in schema}
    for d in docs:
        sig = d.get("signals") or {}
        cols["id"].append(d["id"])
        cols["original_id"].append(d.get("original_id"))
        cols["text"].append(d["text"])
        cols["url"].append(d.get("url"))
        cols["source"].append(d["source"])
        cols["crawl_date"].append(d.get("crawl_date"))
        cols["lang"].append(d.get("lang"))
        cols["lang_score"].append(d.get("lang_score"))
        cols["n_chars"].append(len(d["text"]))
        cols["cluster_id"].append(d.get("cluster_id"))
        cols["cluster_size"].append(d.get("cluster_size"))
        for k in SIGNAL_FIELDS:
            cols[k].append(sig.get(k))
        if rejected:
            cols["reason"].append(d["reason"])
            cols["detail"].append(d.get("detail"))
    return pa.table([pa.array(cols[f.name], type=f.type) for f in schema], schema=schema)


# ---------------------------------------------------------------------------------------------
# The corpus directory
# ---------------------------------------------------------------------------------------------


def shard_name(partition_dir: str, index: int, file_format: str = "arrow") -> str:
    return f"{partition_dir}/part-{index:05d}.{file_format}"


def write_shard(output: str, partition_dir: str, index: int, docs: list[dict], kind: str, arrow_format: str,
                file_format: str = "arrow", row_group_bytes: int = 32 * 2**20) -> dict:
    """Sort by id, write one shard (kind: corpus, rejected or index) atomically, return its
    manifest entry. ``file_format``: ``arrow`` (IPC, ``arrow_format``) or ``parquet`` (row groups
    of at most ``row_group_bytes`` of text)."""
    docs = sorted(docs, key=sort_key)
    table = to_index_table(docs) if kind == "index" else to_table(docs, rejected=kind == "rejected")
    if kind == "index":
        # read by refreshes only, with pyarrow directly: always the random-access Arrow file format
        file_format, data = "arrow", io.table_bytes(table, "file")
    elif file_format == "parquet":
        data = io.parquet_bytes(table, [len(d["text"].encode("utf-8")) for d in docs], row_group_bytes)
    else:
        data = io.table_bytes(table, arrow_format)
    rel = shard_name(partition_dir.rstrip("/"), index, file_format)
    io.write_bytes_atomic(io.join(output, rel), data)
    return {"path": rel, "rows": len(docs), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def read_manifest(output: str) -> dict:
    path = io.join(output, "manifest.json")
    if not io.exists(path):
        raise FileNotFoundError(f"{output} is not a gristmill corpus: no manifest.json (run `gristmill corpus` first)")
    return io.read_json(path)


def open_corpus(output: str, rejected: bool = False):
    """A ``pyarrow.dataset.Dataset`` over the shards the manifest lists (never a stale file).

    ``rejected=True`` opens the dropped documents instead (columns ``reason`` and ``detail`` added).
    Stream-format shards (``write.arrow_format: stream``) are for ``datasets.Dataset.from_file``;
    pyarrow.dataset reads only the file format. Parquet shards (``write.format: parquet``) open too.
    """
    import pyarrow.dataset as ds

    manifest = io.read_json(io.join(output, "manifest.json"))
    write = manifest["config"]["write"]
    parquet = write.get("format", "arrow") == "parquet"  # absent: written before Parquet existed
    if not parquet and write["arrow_format"] != "file":
        raise ValueError(f"{output}: shards are Arrow stream files; open them with datasets.Dataset.from_file")
    entries = manifest["rejected_shards" if rejected else "shards"]
    return ds.dataset(
        [io.join(output, s["path"]) for s in entries],
        schema=REJECTED_SCHEMA if rejected else CORPUS_SCHEMA,
        format="parquet" if parquet else "arrow",
    )


def check_corpus_shards(corpus: str, manifest: dict, columns: tuple[str, ...] = ("id", "text", "lang")) -> None:
    """Every shard the manifest lists exists and has the columns a consumer needs (checked from the
    files' schemas, which costs a footer read each) — or a ValueError naming the shard."""
    for entry in manifest["shards"]:
        path = io.join(corpus, entry["path"])
        if not io.exists(path):
            raise ValueError(f"corpus shard {path} listed in the manifest is missing")
        try:
            names = set(io.ipc_schema(path).names)
        except (pa.ArrowInvalid, OSError) as e:
            kind = "a Parquet" if io.is_parquet(path) else "an Arrow IPC"
            raise ValueError(f"corpus shard {path} is not {kind} file: {e}") from None
        missing = [c for c in columns if c not in names]
        if missing:
            raise ValueError(f"corpus shard {path} has an unexpected schema: no column(s) {missing} "
                             f"(has {sorted(names)})")


def shard_size_bound(corpus: str, entry: dict) -> int:
    """An upper bound of the text bytes of a shard the manifest lists: an Arrow shard's size (its
    buffers are not compressed); for a Parquet shard, whose compressed file is smaller than its
    text, the size of its data before compression (a footer read)."""
    if not io.is_parquet(entry["path"]):
        return entry["bytes"]
    return io.parquet_uncompressed_bytes(io.join(corpus, entry["path"]))


def iter_shard_rows(path: str, columns: list[str]):
    """The rows of one shard as tuples of ``columns``, batch by batch."""
    for batch in io.iter_batches(path, columns):
        yield from zip(*(batch.column(c).to_pylist() for c in columns))


def verify_corpus(corpus: str) -> list[str]:
    """Re-check a corpus directory against its manifest: every shard present with its checksum and
    row count, and the counts balanced (read = kept + Σ dropped). Returns the problems found."""
    manifest = read_manifest(corpus)
    if manifest.get("kind") != "corpus":
        return [f"{corpus}/manifest.json is not a corpus manifest (kind {manifest.get('kind')!r})"]
    problems = []
    rows: dict[str, int] = {}
    for key in ("shards", "rejected_shards", "index_shards"):
        rows[key] = 0
        for entry in manifest.get(key, []):
            problems += _verify_file(corpus, entry["path"], entry["sha256"])
            path = io.join(corpus, entry["path"])
            if io.exists(path):
                try:
                    n = io.read_table(path).num_rows
                except (pa.ArrowInvalid, OSError) as e:
                    problems.append(f"{entry['path']}: not a readable {'Parquet' if io.is_parquet(path) else 'Arrow'} "
                                    f"file ({e})")
                    continue
                rows[key] += n
                if n != entry["rows"]:
                    problems.append(f"{entry['path']}: {n} rows, the manifest says {entry['rows']}")
    c = manifest["counts"]
    dropped_total = sum(c["dropped"].values())
    if c["read"] != c["kept"] + dropped_total:
        problems.append(f"counts do not balance: read {c['read']} != kept {c['kept']} + dropped {dropped_total}")
    if rows["shards"] != c["kept"]:
        problems.append(f"the corpus shards hold {rows['shards']} documents, the manifest keeps {c['kept']}")
    if manifest["config"]["write"]["write_rejected"] and rows["rejected_shards"] != dropped_total:
        problems.append(f"the rejected shards hold {rows['rejected_shards']} documents, "
                        f"the manifest drops {dropped_total}")
    if sum(f["documents"] for f in manifest["inputs"]) != c["read"]:
        problems.append("the inputs' document counts do not add up to counts.read")
    listed = {e["path"] for key in ("shards", "rejected_shards", "index_shards") for e in manifest.get(key, [])}
    return problems + unlisted_files(corpus, listed)


#: files gristmill writes into an output besides those its manifest lists (the lock: gristmill.locks)
OWN_FILES = frozenset({"manifest.json", "run.json", "README.md", "report.html", "versions.json", io.OUTPUT_MARKER,
                       ".gristmill-lock"})


def unlisted_files(root: str, listed: set[str]) -> list[str]:
    """Problems for the files under ``root`` that are neither ``listed`` in its manifest nor one of
    gristmill's own (:data:`OWN_FILES`): an extra shard that a reader globbing the directory
    (pyarrow.dataset, ``load_dataset``) would read, a temporary a stopped writer left."""
    return [f"{rel}: not listed in the manifest (an extra or leftover file: readers of the directory would see it; "
            "remove it, or run the command again)"
            for rel in io.list_tree(root) if rel not in listed and rel not in OWN_FILES]


def _verify_file(root: str, rel: str, sha256: str) -> list[str]:
    path = io.join(root, rel)
    if not io.exists(path):
        return [f"{rel}: missing"]
    if hashlib.sha256(io.read_bytes(path)).hexdigest() != sha256:
        return [f"{rel}: checksum differs from the manifest's (the file was changed or damaged)"]
    return []
