"""Arrow shard files and the output directory: atomic writes, deterministic bytes.

Everything goes through Beam's ``FileSystems`` so the output can be local, ``gs://`` or ``s3://``.
A file is written to a temporary name next to its final one and renamed into place, so a reader
never sees half a shard and a crashed run leaves only temporaries, which the next run removes.
"""

from __future__ import annotations

import hashlib
import json
import uuid

import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from pipelines.documents import sort_key, to_index_table, to_table

TMP_MARK = ".tmp-"
OUTPUT_MARKER = ".gristmill-output"


def join(*parts: str) -> str:
    return FileSystems.join(*parts)


def write_bytes_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}{TMP_MARK}{uuid.uuid4().hex}"
    parent = path.rsplit("/", 1)[0]
    if parent and not FileSystems.exists(parent):
        try:
            FileSystems.mkdirs(parent)
        except IOError:
            # several workers writing into one new directory race here: whoever loses finds it made
            if not FileSystems.exists(parent):
                raise
    with FileSystems.create(tmp, mime_type="application/octet-stream", compression_type="uncompressed") as f:
        f.write(data)
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])


def write_json_atomic(path: str, obj) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n").encode())


def read_json(path: str):
    with FileSystems.open(path, compression_type="uncompressed") as f:
        return json.loads(f.read())


def table_bytes(table: pa.Table, arrow_format: str) -> bytes:
    sink = pa.BufferOutputStream()
    opener = pa.ipc.new_file if arrow_format == "file" else pa.ipc.new_stream
    # one record batch per shard-chunk of 10k rows: large enough for fast scans, small enough that
    # a reader can stream a shard without holding it whole
    with opener(sink, table.schema) as w:
        w.write_table(table, max_chunksize=10_000)
    return sink.getvalue().to_pybytes()


def shard_name(partition_dir: str, index: int) -> str:
    return f"{partition_dir}/part-{index:05d}.arrow"


def write_shard(output: str, partition_dir: str, index: int, docs: list[dict], kind: str, arrow_format: str) -> dict:
    """Sort by id, write one Arrow shard (kind: corpus, rejected or index) atomically, return its
    manifest entry."""
    docs = sorted(docs, key=sort_key)
    table = to_index_table(docs) if kind == "index" else to_table(docs, rejected=kind == "rejected")
    # the index is read by refreshes with pyarrow directly: always the random-access file format
    data = table_bytes(table, "file" if kind == "index" else arrow_format)
    rel = shard_name(partition_dir.rstrip("/"), index)
    write_bytes_atomic(join(output, rel), data)
    return {"path": rel, "rows": len(docs), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def shard_count(n_docs: int, n_bytes: int, max_docs: int, max_bytes: int) -> int:
    return max(1, -(-n_docs // max_docs), -(-n_bytes // max_bytes))


def shard_index(doc_id: str, source: str, n_shards: int) -> int:
    """Stable (not Python's salted hash) assignment of a document to one of n shards."""
    if n_shards == 1:
        return 0
    h = hashlib.blake2b(f"{doc_id}\x00{source}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") % n_shards


def list_files(output: str, prefix: str) -> list[str]:
    """Relative paths of files under ``output/prefix`` (recursive)."""
    base = join(output, prefix)
    try:
        found = FileSystems.match([base + "**"])[0].metadata_list
    except Exception:  # noqa: BLE001 - nothing there yet
        return []
    root = output.rstrip("/") + "/"
    return sorted(m.path[len(root):] if m.path.startswith(root) else m.path for m in found)


def open_corpus(output: str, rejected: bool = False):
    """A ``pyarrow.dataset.Dataset`` over the shards the manifest lists (never a stale file).

    ``rejected=True`` opens the dropped documents instead (columns ``reason`` and ``detail`` added).
    Stream-format shards (``write.arrow_format: stream``) are for ``datasets.Dataset.from_file``;
    pyarrow.dataset reads only the file format.
    """
    import pyarrow.dataset as ds

    from pipelines.documents import CORPUS_SCHEMA, REJECTED_SCHEMA

    manifest = read_json(join(output, "manifest.json"))
    if manifest["config"]["write"]["arrow_format"] != "file":
        raise ValueError(f"{output}: shards are Arrow stream files; open them with datasets.Dataset.from_file")
    entries = manifest["rejected_shards" if rejected else "shards"]
    return ds.dataset(
        [join(output, s["path"]) for s in entries],
        schema=REJECTED_SCHEMA if rejected else CORPUS_SCHEMA,
        format="arrow",
    )


def read_manifest(output: str) -> dict:
    path = join(output, "manifest.json")
    if not FileSystems.exists(path):
        raise FileNotFoundError(f"{output} is not a gristmill corpus: no manifest.json (run `gristmill corpus` first)")
    return read_json(path)


def iter_batches(path: str, columns: list[str] | None = None):
    """Record batches of one shard, file or stream format, read incrementally (memory-mapped when
    local), with ``columns`` selected."""
    local = "://" not in path
    source = pa.memory_map(path) if local else pa.BufferReader(FileSystems.open(path, compression_type="uncompressed").read())
    with source:
        magic = source.read(6)
        source.seek(0)
        if magic == b"ARROW1":
            reader = pa.ipc.open_file(source)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        else:
            batches = pa.ipc.open_stream(source)
        for batch in batches:
            yield batch.select(columns) if columns else batch


def json_bytes(obj) -> bytes:
    """Canonical JSON bytes (sorted keys): what manifests are hashed as."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()


def shard_schema(path: str) -> pa.Schema:
    local = "://" not in path
    source = pa.memory_map(path) if local else pa.BufferReader(FileSystems.open(path, compression_type="uncompressed").read())
    with source:
        magic = source.read(6)
        source.seek(0)
        return pa.ipc.open_file(source).schema if magic == b"ARROW1" else pa.ipc.open_stream(source).schema


def check_corpus_shards(corpus: str, manifest: dict, columns: tuple[str, ...] = ("id", "text", "lang")) -> None:
    """Every shard the manifest lists exists and has the columns a consumer needs (checked from the
    files' schemas, which costs a footer read each) — or a ValueError naming the shard."""
    for entry in manifest["shards"]:
        path = join(corpus, entry["path"])
        if not FileSystems.exists(path):
            raise ValueError(f"corpus shard {path} listed in the manifest is missing")
        try:
            names = set(shard_schema(path).names)
        except (pa.ArrowInvalid, OSError) as e:
            raise ValueError(f"corpus shard {path} is not an Arrow IPC file: {e}") from None
        missing = [c for c in columns if c not in names]
        if missing:
            raise ValueError(f"corpus shard {path} has an unexpected schema: no column(s) {missing} (has {sorted(names)})")
