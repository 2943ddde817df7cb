"""Output directories gristmill writes: a marker file says which command wrote one, and a command
refuses, before writing anything, a directory another command (or a user) owns, unless told to
overwrite it. Core: every stage uses it, it imports no stage."""

from __future__ import annotations

from gristmill import io
from gristmill.errors import GristmillError

#: what the marker file of an output directory says, by kind of output
MARKERS = {"corpus": b"gristmill corpus output\n", "tokens": b"gristmill token shards\n",
           "tokenizer": b"gristmill tokenizer\n", "quality": b"gristmill quality model\n",
           "ablation": b"gristmill ablation\n"}
KINDS = {"corpus": "a corpus", "tokens": "token shards", "tokenizer": "a tokenizer", "quality": "a quality model",
         "ablation": "an ablation"}


class OutputDirError(GristmillError):
    """An output directory gristmill must not write into; the message says which to use."""


# ---------------------------------------------------------------------------------------------
# The output directory of a run
# ---------------------------------------------------------------------------------------------


def check_output(output: str, kind: str, overwrite: bool) -> None:
    """Refuse (before writing anything) an output that holds something else: a directory gristmill
    did not write, or one holding another kind of output (token shards written over a corpus would
    replace its manifest). ``overwrite`` allows both."""
    if overwrite or not io.exists(output):
        return
    marker = io.join(output, io.OUTPUT_MARKER)
    if io.exists(marker):
        found = io.read_bytes(marker)
        if found != MARKERS[kind]:
            other = next((k for k, m in MARKERS.items() if m == found), "another gristmill output")
            what = KINDS.get(other, other)
            raise OutputDirError(f"{output} holds {what} (written by gristmill); writing {KINDS[kind]} there would "
                                 "replace its files: choose another directory (or pass --overwrite)")
        return
    if io.filesystems().match([io.join(output, "*")])[0].metadata_list:
        raise OutputDirError(f"output directory {output} is not empty and was not written by gristmill; "
                             "choose an empty or new directory (or pass --overwrite)")


def begin_output(output: str, kind: str) -> None:
    """Mark the directory as this kind of gristmill output, in progress: its manifest (a finished
    earlier run's) goes first, so no reader takes files being replaced for a finished output."""
    io.write_bytes_atomic(io.join(output, io.OUTPUT_MARKER), MARKERS[kind])
    manifest = io.join(output, "manifest.json")
    if io.exists(manifest):
        io.delete([manifest])
