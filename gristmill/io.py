"""Files: atomic writes, JSON, the one Arrow IPC opener and the Parquet shard writer. Shared by every stage.

Paths go through Beam's ``FileSystems`` so an output can be local, ``gs://``, ``s3://`` or
``hdfs://`` (with the matching Beam extra installed); Beam is imported on first use only, so the
trainer and the command line's ``--help`` never pay for it. A file is written under a temporary
name next to its final one and renamed into place: a reader never sees half a file, and a crashed
writer leaves only temporaries (``TMP_MARK`` in the name), which the next run removes.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import uuid
from collections.abc import Sequence
from functools import cache

import pyarrow as pa

TMP_MARK = ".tmp-"
#: a directory holding this file was written by gristmill (and may be replaced by it)
OUTPUT_MARKER = ".gristmill-output"


@cache
def filesystems():
    """Beam's ``FileSystems`` (imported on first use: ~3 s)."""
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def configure(beam_args: Sequence[str] | None) -> None:
    """Give the driver's file operations (listing inputs, markers, locks, run.json, manifests) the
    filesystem options of the run's Beam arguments (``--s3_endpoint_url``, ``--s3_access_key_id``,
    GCS project and credentials, ...), as the runner gives them to its workers. Without this an
    ``s3://`` path fails on the driver with ``Must provide one of client or options``."""
    from apache_beam.options.pipeline_options import PipelineOptions

    filesystems().set_options(PipelineOptions(list(beam_args or [])))
    _reuse_s3_clients()
    _anonymous_on_a_gcs_emulator()


_S3_CLIENTS: dict[tuple, object] = {}
_S3_CLIENTS_LOCK = threading.Lock()


def _s3_options_key(options) -> tuple:
    from apache_beam.options.pipeline_options import PipelineOptions, S3Options

    if isinstance(options, PipelineOptions):
        values = options.view_as(S3Options).get_all_options()
    else:
        values = dict(options)
    return tuple(sorted((k, repr(v)) for k, v in values.items() if k.startswith("s3_")))


@cache
def _reuse_s3_clients() -> None:
    """One S3 client per process and set of options, instead of Beam's new boto3 session and client
    for every call (every ``exists``, ``open``, ``rename``: an S3 corpus run took 3.5 min against 12 s
    on local disk). boto3 clients are thread-safe; the key holds the pid, so a forked child builds its
    own instead of sharing its parent's connections."""
    try:
        from apache_beam.io.aws import s3io
        from apache_beam.io.aws.clients.s3 import boto3_client
    except ImportError:  # apache-beam[aws] not installed: no s3:// at all
        return
    original = s3io.S3IO.__init__

    def init(self, client=None, options=None):
        if client is None and options is not None and getattr(boto3_client, "boto3", None) is not None:
            key = (os.getpid(), _s3_options_key(options))
            with _S3_CLIENTS_LOCK:
                client = _S3_CLIENTS.get(key)
                if client is None:
                    client = _S3_CLIENTS[key] = boto3_client.Client(options=options)
        original(self, client=client, options=options)

    s3io.S3IO.__init__ = init


def _anonymous_on_a_gcs_emulator() -> None:
    """With ``STORAGE_EMULATOR_HOST`` set (a GCS emulator, which takes no credentials: google-cloud-storage
    sends it every request), Beam's GCS filesystem connects anonymously at once, instead of looking for
    Google credentials with four retries and a traceback each (half a minute) before doing the same.
    Beam caches the credentials it found per process (a forked worker inherits them)."""
    if not os.environ.get("STORAGE_EMULATOR_HOST"):
        return
    try:
        from apache_beam.internal.gcp import auth
    except ImportError:  # no google-auth: Beam connects anonymously anyway
        return
    with auth._Credentials._credentials_lock:
        auth._Credentials._credentials_init, auth._Credentials._credentials = True, None


def is_remote(path: str) -> bool:
    return "://" in path


def join(*parts: str) -> str:
    return filesystems().join(*parts)


def exists(path: str) -> bool:
    return filesystems().exists(path)


def delete(paths: list[str]) -> None:
    filesystems().delete(paths)


def remove_tree(path: str) -> None:
    """Delete a file or directory tree if it exists. On an object store a "directory" is a key
    prefix that ``exists`` does not see: every object under it is listed and deleted."""
    if is_remote(path):
        found = list_files(path, "")
        if found:
            delete([join(path, f) for f in found])
    elif exists(path):
        delete([path])


def remove_temporaries(root: str) -> list[str]:
    """Delete every temporary (``TMP_MARK`` in its name) under a local output: what writers stopped
    mid-file left (a crash, a signal, a full disk). Returns their paths. On an object store gristmill
    writes no temporaries (an upload appears whole or not at all)."""
    if is_remote(root) or not os.path.isdir(root):
        return []
    found = [os.path.join(d, f) for d, _, files in os.walk(root) for f in files if TMP_MARK in f]
    for path in found:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return found


def read_bytes(path: str) -> bytes:
    with filesystems().open(path, compression_type="uncompressed") as f:
        return f.read()


def current_umask() -> int:
    """The process's umask (read from /proc where it can be, so that no other thread sees it changed)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(directory: str) -> None:
    """Give the files under ``directory`` the mode a plain ``open`` would (0644 under umask 022): some writers
    (safetensors' save_file) create theirs 0600, which colleagues on shared storage cannot read."""
    mode = 0o666 & ~current_umask()
    for root, _, files in os.walk(directory):
        for name in files:
            os.chmod(os.path.join(root, name), mode)


def temporary_name(path: str) -> str:
    """A unique temporary name next to ``path`` (a crashed writer's leftovers carry TMP_MARK)."""
    return f"{path}{TMP_MARK}{uuid.uuid4().hex}"


def ensure_parent(path: str) -> None:
    if is_remote(path):  # object stores have no directories (and each exists() is a request)
        return
    fs = filesystems()
    parent = path.rsplit("/", 1)[0]
    if parent and not fs.exists(parent):
        try:
            fs.mkdirs(parent)
        except OSError:
            # several workers writing into one new directory race here: whoever loses finds it made
            if not fs.exists(parent):
                raise


def replace(src: str, dst: str) -> None:
    """Move ``src`` to ``dst``, replacing it."""
    fs = filesystems()
    if fs.exists(dst):
        fs.delete([dst])
    fs.rename([src], [dst])


def write_bytes_atomic(path: str, data: bytes) -> None:
    if is_remote(path):  # an object appears whole when its upload completes: no temporary and copy needed
        with filesystems().create(path, mime_type="application/octet-stream", compression_type="uncompressed") as f:
            f.write(data)
        return
    tmp = temporary_name(path)
    ensure_parent(path)
    try:
        with filesystems().create(tmp, mime_type="application/octet-stream", compression_type="uncompressed") as f:
            f.write(data)
        replace(tmp, path)
    except BaseException:
        # a full disk (or a signal) mid-write: no half-written temporary left beside the file for a later run
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str, obj) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n").encode())


def read_json(path: str):
    return json.loads(read_bytes(path))


def json_bytes(obj) -> bytes:
    """Canonical JSON bytes (sorted keys): what manifests are hashed as."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()


def list_files(root: str, prefix: str) -> list[str]:
    """Relative paths of the files under ``root/prefix`` (recursive), sorted."""
    base = join(root, prefix)
    try:
        found = filesystems().match([base + "**"])[0].metadata_list
    except Exception:  # noqa: BLE001 - nothing there yet
        return []
    top = root.rstrip("/") + "/"
    return sorted(m.path[len(top):] if m.path.startswith(top) else m.path for m in found)


def list_tree(root: str) -> list[str]:
    """Every file under ``root``, hidden ones included, as paths relative to it, sorted."""
    if is_remote(root):
        return list_files(root, "")
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files)


# ---------------------------------------------------------------------------------------------
# Arrow IPC: one writer, one opener
# ---------------------------------------------------------------------------------------------


#: buffer compression of a run's temporary files (work, spill): fast to write and read back
WORK_COMPRESSION = "lz4"


def table_bytes(table: pa.Table, arrow_format: str, compression: str | None = None) -> bytes:
    """A table as Arrow IPC bytes: ``file`` (random access) or ``stream`` format; ``compression``:
    the IPC buffer codec (``lz4``/``zstd``; None for the published shards, which any Arrow reader opens)."""
    sink = pa.BufferOutputStream()
    opener = pa.ipc.new_file if arrow_format == "file" else pa.ipc.new_stream
    # record batches of at most 10k rows: large enough for fast scans, small enough that a reader
    # can stream a shard without holding it whole
    with opener(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as w:
        w.write_table(table, max_chunksize=10_000)
    return sink.getvalue().to_pybytes()


#: shards whose name ends so are Parquet; every other shard is Arrow IPC
PARQUET_SUFFIX = ".parquet"
#: Parquet columns with few distinct values, dictionary-encoded (the text would only waste the attempt)
PARQUET_DICTIONARY_COLUMNS = ("lang", "source", "reason")


def is_parquet(path: str) -> bool:
    return path.endswith(PARQUET_SUFFIX)


def row_group_bounds(sizes: list[int], max_bytes: int) -> list[tuple[int, int]]:
    """(start, stop) of consecutive row groups holding at most ``max_bytes`` (the sum of ``sizes``)
    each, every group at least one row: a function of the rows alone, so the same rows always give
    the same row groups."""
    bounds, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        if i > start and total + size > max_bytes:
            bounds.append((start, i))
            start, total = i, 0
        total += size
    if start < len(sizes) or not sizes:
        bounds.append((start, len(sizes)))
    return bounds


def parquet_bytes(table: pa.Table, row_group_sizes: list[int], max_group_bytes: int) -> bytes:
    """A table as Parquet bytes (zstd), row groups cut by :func:`row_group_bounds` of
    ``row_group_sizes`` (one size per row); the Arrow schema, with its metadata, is kept in the file."""
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    dictionary = [c for c in PARQUET_DICTIONARY_COLUMNS if c in table.column_names]
    with pq.ParquetWriter(sink, table.schema, compression="zstd", use_dictionary=dictionary) as w:
        for start, stop in row_group_bounds(row_group_sizes, max_group_bytes):
            w.write_table(table.slice(start, stop - start), row_group_size=max(1, stop - start))
    return sink.getvalue().to_pybytes()


def _parquet_file(path: str):
    import pyarrow.parquet as pq

    source = pa.BufferReader(read_bytes(path)) if is_remote(path) else pa.memory_map(str(path))
    return pq.ParquetFile(source)


def parquet_uncompressed_bytes(path: str) -> int:
    """The size of a Parquet file's data before compression (from its footer)."""
    meta = _parquet_file(path).metadata
    return sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))


def open_ipc(path: str) -> pa.ipc.RecordBatchFileReader | pa.ipc.RecordBatchStreamReader:
    """An Arrow IPC reader of either format (told apart by the file magic), memory-mapped when
    local: arrays read from it are zero-copy views that keep the mapping alive."""
    source = pa.BufferReader(read_bytes(path)) if is_remote(path) else pa.memory_map(str(path))
    magic = source.read(6)
    source.seek(0)
    return pa.ipc.open_file(source) if magic == b"ARROW1" else pa.ipc.open_stream(source)


def iter_batches(path: str, columns: list[str] | None = None):
    """Record batches of one Arrow IPC (or, by its name, Parquet) file, read incrementally, with
    ``columns`` selected."""
    if is_parquet(path):
        yield from _parquet_file(path).iter_batches(batch_size=10_000, columns=columns)
        return
    reader = open_ipc(path)
    if isinstance(reader, pa.ipc.RecordBatchFileReader):
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
    else:
        batches = reader
    for batch in batches:
        yield batch.select(columns) if columns else batch


def read_table(path: str) -> pa.Table:
    """A whole Arrow IPC (or, by its name, Parquet) file."""
    return _parquet_file(path).read() if is_parquet(path) else open_ipc(path).read_all()


def ipc_schema(path: str) -> pa.Schema:
    """The schema of an Arrow IPC (or, by its name, Parquet) file (a footer or header read, not the data)."""
    return _parquet_file(path).schema_arrow if is_parquet(path) else open_ipc(path).schema


class ArrowFileWriter:
    """Rows appended to an Arrow IPC file in record batches of ``batch_rows`` (a large output is never
    held whole), under a temporary name that :meth:`close` renames into place: the final name only
    ever holds a complete file."""

    def __init__(self, path: str, schema: pa.Schema, batch_rows: int = 1000, compression: str | None = None):
        self.path, self.schema, self.batch_rows = path, schema, batch_rows
        # on an object store the upload itself is atomic (the object appears when it completes)
        self._tmp = path if is_remote(path) else temporary_name(path)
        ensure_parent(path)
        self._file = filesystems().create(self._tmp, mime_type="application/octet-stream",
                                          compression_type="uncompressed")
        self._writer = pa.ipc.new_file(pa.PythonFile(self._file, mode="w"), schema,
                                       options=pa.ipc.IpcWriteOptions(compression=compression))
        self._rows: list[dict] = []

    def add(self, row: dict) -> None:
        self._rows.append(row)
        if len(self._rows) >= self.batch_rows:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_batch(pa.RecordBatch.from_pylist(self._rows, schema=self.schema))
            self._rows = []

    def close(self) -> None:
        self._flush()
        self._writer.close()
        self._file.close()
        if self._tmp != self.path:
            replace(self._tmp, self.path)
