"""The dataset card of a corpus directory: ``README.md`` with the YAML front matter the Hugging Face
Hub and ``datasets`` read (one config per language, ``all``, and ``rejected``; their data files,
features and document counts), and in its body the counts, how to load the shards and the pipeline
config. Made from the manifest alone, so it is as deterministic as the manifest.

A ``README.md`` gristmill did not write (a user's, in a directory written with ``--overwrite``) is
never replaced: the card then goes to ``README.gristmill.md`` and the run says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import yaml

from gristmill import io
from gristmill.documents import CORPUS_SCHEMA, REJECTED_SCHEMA

log = logging.getLogger("gristmill.corpus")

CARD = "README.md"
#: where the card goes when README.md is someone else's
CARD_BESIDE_USER_README = "README.gristmill.md"
#: the line that marks a card gristmill wrote (and may replace)
CARD_MARK = "<!-- gristmill dataset card: written by `gristmill corpus`, replaced by its next run here -->"

#: Arrow types of the shard schemas → the dtype names of ``datasets`` features
_DTYPES = {pa.string(): "string", pa.float32(): "float32", pa.int32(): "int32"}


def _features(schema: pa.Schema) -> list[dict]:
    return [{"name": f.name, "dtype": _DTYPES[f.type]} for f in schema]


def _config(name: str, pattern: str, schema: pa.Schema, shards: list[dict], default: bool = False) -> tuple[dict, dict]:
    """(the ``configs`` entry, the ``dataset_info`` entry) of one config of the card. ``datasets``
    checks the documents it loads against ``num_examples``; ``num_bytes`` is the shard files' size."""
    entry = {"config_name": name, "data_files": [{"split": "train", "path": pattern}]}
    if default:
        entry["default"] = True
    split = {"name": "train", "num_bytes": sum(s["bytes"] for s in shards),
             "num_examples": sum(s["rows"] for s in shards)}
    return entry, {"config_name": name, "features": _features(schema), "splits": [split]}


def card_metadata(manifest: dict) -> dict:
    """The card's front matter: a config per language with kept documents (``lang=xx/``), ``all``
    (the default) and, when rejected documents were written, ``rejected``."""
    write = manifest["config"]["write"]
    ext = write.get("format", "arrow")  # absent: a manifest from before Parquet existed
    per_lang: dict[str, list[dict]] = {}
    for s in manifest["shards"]:
        per_lang.setdefault(s["partition"], []).append(s)
    pairs = [_config("all", f"lang=*/*.{ext}", CORPUS_SCHEMA, manifest["shards"], default=True)]
    pairs += [_config(lang, f"lang={lang}/*.{ext}", CORPUS_SCHEMA, shards) for lang, shards in sorted(per_lang.items())]
    if manifest["rejected_shards"]:
        pairs.append(_config("rejected", f"_rejected/*/*.{ext}", REJECTED_SCHEMA, manifest["rejected_shards"]))
    return {
        "pretty_name": "gristmill corpus",
        "license": write.get("license", "other"),
        "language": sorted(per_lang),
        "configs": [c for c, _ in pairs],
        "dataset_info": [i for _, i in pairs],
    }


def card_text(manifest: dict) -> str:
    meta = yaml.safe_dump(card_metadata(manifest), sort_keys=False, allow_unicode=True, width=100)
    c = manifest["counts"]
    ext = manifest["config"]["write"].get("format", "arrow")
    write_license = manifest["config"]["write"].get("license", "other")
    lines = [
        "---", meta.rstrip("\n"), "---", CARD_MARK, "",
        "# gristmill corpus", "",
        f"Web text cleaned, language-identified and deduplicated by gristmill {manifest['gristmill_version']} "
        f"(shard schema version {manifest['schema_version']}). `manifest.json` lists every shard with its "
        "checksum and accounts for every document read; this card is made from it.", "",
        "## Counts", "",
        f"Read {c['read']:,} documents from {c['input_files']:,} input files; kept {c['kept']:,}, "
        f"dropped {sum(c['dropped'].values()):,}.", "",
        "| language | kept |", "|---|---:|",
        *(f"| {lang} | {v['kept']:,} |" for lang, v in manifest["languages"].items() if v["kept"]), "",
        "| drop reason | documents |", "|---|---:|",
        *(f"| {reason} | {n:,} |" for reason, n in c["dropped"].items()), "",
        "## Licence and sources", "",
        (f"Licence: `{write_license}`." if write_license != "other" else
         "Licence: `other` — set `write.license` to the licence your crawl's terms allow (FineWeb publishes "
         "Common Crawl text as `odc-by`); the texts keep their authors' rights."), "",
        "| input | documents |", "|---|---:|",
        # names, not this machine's paths: the card travels with the corpus
        *(f"| {Path(str(f.get('path', '?'))).name} | {f.get('documents', 0):,} |" for f in manifest["inputs"]), "",
        "## Loading", "",
        "```python",
        "import datasets",
        'en = datasets.load_dataset("PATH/TO/THIS/DIRECTORY", "en", split="train")  # a language; "all"; "rejected"',
        "```", "",
    ]
    if ext == "parquet":
        lines += [
            "```sql",
            "-- DuckDB: the language is the hive partition (and a column of every shard)",
            "SELECT lang, count(*) FROM read_parquet('lang=*/*.parquet', hive_partitioning = true) GROUP BY lang;",
            "```", "",
            "```python",
            "import polars as pl",
            'docs = pl.scan_parquet("lang=*/*.parquet", hive_partitioning=True)',
            "```", "",
            "Rejected documents are under `_rejected/stage=<stage>/` with their `reason` (`stage:rule`) and "
            "`detail`.", "",
        ]
    lines += [
        "## Pipeline config", "",
        f"config_sha256: `{manifest['config_sha256']}`", "",
        "```yaml",
        yaml.safe_dump(manifest["config"], sort_keys=False, allow_unicode=True, width=100).rstrip("\n"),
        "```", "",
    ]
    return "\n".join(lines)


def write_card(output: str, manifest: dict) -> str:
    """Write the card; returns its path (``README.gristmill.md`` when README.md is not ours)."""
    path = io.join(output, CARD)
    if io.exists(path) and CARD_MARK not in io.read_bytes(path).decode("utf-8", "replace"):
        path = io.join(output, CARD_BESIDE_USER_README)
        log.warning("%s/%s was not written by gristmill: left as it is; the dataset card is %s (rename it to %s "
                    "for `datasets.load_dataset` and the Hub)", output, CARD, path, CARD)
    io.write_bytes_atomic(path, card_text(manifest).encode("utf-8"))
    return path
