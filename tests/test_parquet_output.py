"""``write.format: parquet`` and the dataset card: the sample crawl written as Parquet holds the rows
of the Arrow run, deterministically, and DuckDB, polars and ``datasets.load_dataset(DIR, "en")``
read it through its hive partitions and its README.md card; the later stages read Parquet corpora."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from gristmill import io
from gristmill.config import ConfigError, load_config
from gristmill.documents import (
    CORPUS_SCHEMA,
    check_corpus_shards,
    iter_shard_rows,
    open_corpus,
    verify_corpus,
    write_shard,
)
from gristmill.pipelines.card import CARD_BESIDE_USER_README, CARD_MARK
from gristmill.pipelines.corpus import run_corpus

from .conftest import DEMO_CONFIG, SAMPLE, SAMPLE_GLOB, run_cli, tree_bytes

pytestmark = pytest.mark.slow

DIRECT = ["--runner", "DirectRunner"]


def run(out: Path, overrides=(), inputs=(SAMPLE_GLOB,), **kw):
    return run_corpus(list(inputs), str(out), load_config(DEMO_CONFIG, list(overrides)), DIRECT, progress=False, **kw)


@pytest.fixture(scope="module")
def corpora(demo_corpus, tmp_path_factory):
    """The sample crawl written twice: Arrow (the default: the session's demo corpus) and Parquet."""
    root = tmp_path_factory.mktemp("formats")
    arrow = json.loads((demo_corpus / "manifest.json").read_text())
    parquet = run(root / "parquet", ["write.format=parquet"]).manifest
    return demo_corpus, arrow, root / "parquet", parquet


def _sorted(t: pa.Table) -> pa.Table:
    return t.sort_by([("id", "ascending"), ("source", "ascending")])


# --- the same documents, the same accounting ----------------------------------------------------


def test_parquet_shards_hold_the_rows_of_the_arrow_run(corpora):
    a_dir, a, p_dir, p = corpora
    assert p["counts"] == a["counts"] and p["funnel"] == a["funnel"] and p["languages"] == a["languages"]
    assert p["config"]["write"]["format"] == "parquet" and "format" not in a["config"]["write"]
    # new options off: the config, funnel and manifest of a default run are what they were before them
    assert "decontaminate" not in a["config"] and "decontamination" not in a
    assert "parquet_row_group_bytes" not in a["config"]["write"]
    assert "decontaminate" not in [r["stage"] for r in a["funnel"]]
    # the manifest names the files written, and nothing else is left of the shards
    assert all(s["path"].endswith(".parquet") and s["path"].startswith("lang=") for s in p["shards"])
    assert all(s["path"].startswith("_rejected/stage=") and s["path"].endswith(".parquet")
               for s in p["rejected_shards"])
    listed = {s["path"] for k in ("shards", "rejected_shards", "index_shards") for s in p[k]}
    on_disk = {str(f.relative_to(p_dir)) for f in p_dir.rglob("part-*")}
    assert listed == on_disk
    assert [(s["partition"], s["rows"]) for s in p["shards"]] == [(s["partition"], s["rows"]) for s in a["shards"]]
    # the LSH index stays Arrow IPC (refreshes read it): byte for byte the Arrow run's
    index = [(s["path"], s["sha256"]) for s in p["index_shards"]]
    assert index and index == [(s["path"], s["sha256"]) for s in a["index_shards"]]
    for rejected in (False, True):
        pt, at = open_corpus(str(p_dir), rejected).to_table(), open_corpus(str(a_dir), rejected).to_table()
        assert pt.num_rows and _sorted(pt).equals(_sorted(at))
    for s in p["shards"]:
        f = pq.ParquetFile(p_dir / s["path"])
        assert f.schema_arrow.equals(CORPUS_SCHEMA, check_metadata=True)  # schema version kept
        ids = f.read(columns=["id"]).column("id").to_pylist()
        assert ids == sorted(ids) and len(ids) == s["rows"]
    assert verify_corpus(str(p_dir)) == []


def test_parquet_rerun_is_byte_identical(corpora, tmp_path):
    _, _, p_dir, _ = corpora
    run(tmp_path / "again", ["write.format=parquet"])
    assert tree_bytes(tmp_path / "again") == tree_bytes(p_dir)


def test_switching_format_removes_the_other_formats_shards(corpora, tmp_path):
    a_dir, _, _, _ = corpora
    out = tmp_path / "switch"
    shutil.copytree(a_dir, out)
    m = run(out, ["write.format=parquet"]).manifest
    left = {str(f.relative_to(out)) for f in out.rglob("part-*")}
    assert left == {s["path"] for k in ("shards", "rejected_shards", "index_shards") for s in m[k]}
    assert not any(f.endswith(".arrow") and not f.startswith("_index/") for f in left)


def test_row_groups_are_bounded_by_text_bytes(tmp_path):
    docs = [{"id": f"d{i:03d}", "text": "x" * (100 + i), "source": "s", "lang": "en", "signals": {}}
            for i in range(50)]
    entry = write_shard(str(tmp_path), "lang=en", 0, docs, "corpus", "file", "parquet", row_group_bytes=1000)
    meta = pq.ParquetFile(tmp_path / entry["path"]).metadata
    groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert sum(groups) == 50 and meta.num_row_groups > 1
    start = 0
    for n in groups:  # each group as full as the limit allows, and never over it
        sizes = [100 + i for i in range(start, start + n)]
        assert sum(sizes) <= 1000 and (start + n == 50 or sum(sizes) + 100 + start + n > 1000)
        start += n
    # one document larger than the limit gets a group of its own
    assert io.row_group_bounds([5000, 10, 10], 1000) == [(0, 1), (1, 3)]


# --- readers -------------------------------------------------------------------------------------


def test_duckdb_reads_the_hive_partitions(corpora):
    duckdb = pytest.importorskip("duckdb")
    _, _, p_dir, m = corpora
    got = dict(duckdb.sql(f"SELECT lang, count(*) FROM read_parquet('{p_dir}/lang=*/*.parquet', "
                          "hive_partitioning = true) GROUP BY lang").fetchall())
    assert got == {k: v["kept"] for k, v in m["languages"].items() if v["kept"]}
    # rejected: the stage is the partition; each document's reason (stage:rule) survives it
    rows = duckdb.sql(f"SELECT stage, reason, count(*) FROM read_parquet('{p_dir}/_rejected/*/*.parquet', "
                      "hive_partitioning = true) GROUP BY ALL").fetchall()
    assert {reason: n for _, reason, n in rows} == m["counts"]["dropped"]
    assert all(reason.split(":", 1)[0] == stage for stage, reason, _ in rows)


def test_polars_reads_the_hive_partitions(corpora):
    pl = pytest.importorskip("polars")
    _, _, p_dir, m = corpora
    docs = pl.scan_parquet(str(p_dir / "lang=*" / "*.parquet"), hive_partitioning=True)
    got = dict(docs.group_by("lang").len().collect().iter_rows())
    assert got == {k: v["kept"] for k, v in m["languages"].items() if v["kept"]}
    rej = pl.scan_parquet(str(p_dir / "_rejected" / "*" / "*.parquet"), hive_partitioning=True).collect()
    assert dict(Counter(rej["reason"].to_list())) == m["counts"]["dropped"]
    assert set(rej["stage"].to_list()) == {r.split(":", 1)[0] for r in m["counts"]["dropped"]}


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_datasets_loads_a_language_by_its_card(corpora, fmt):
    import datasets

    a_dir, a, p_dir, p = corpora
    out, m = (p_dir, p) if fmt == "parquet" else (a_dir, a)
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and CARD_MARK in card and m["config_sha256"] in card
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["license"] == "other" and "set `write.license`" in card
    # the sources by name, with their documents; no path of this machine
    for f in m["inputs"]:
        assert f"| {Path(f['path']).name} | {f['documents']:,} |" in card
    assert not [f["path"] for f in m["inputs"] if f["path"] in card]
    en = datasets.load_dataset(str(out), "en", split="train")
    assert en.num_rows == m["languages"]["en"]["kept"] and set(en["lang"]) == {"en"}
    assert en.features["lang_score"].dtype == "float32" and en.features["n_words"].dtype == "int32"
    everything = datasets.load_dataset(str(out), split="train")  # "all", the default config
    assert everything.num_rows == m["counts"]["kept"]
    rejected = datasets.load_dataset(str(out), "rejected", split="train")
    assert dict(Counter(rejected["reason"])) == m["counts"]["dropped"]


def test_datasets_checks_the_cards_counts(corpora, tmp_path):
    """The card's num_examples are checked by ``datasets``: a card that lied would fail to load."""
    import datasets
    from datasets.exceptions import NonMatchingSplitsSizesError

    _, _, p_dir, m = corpora
    copy = tmp_path / "copy"
    shutil.copytree(p_dir, copy)
    n = m["languages"]["en"]["kept"]
    card = (copy / "README.md").read_text()
    marker = "config_name: en\n  features:"
    assert marker in card
    head, tail = card.split(marker, 1)
    tail = tail.replace(f"num_examples: {n}\n", f"num_examples: {n + 1}\n", 1)
    (copy / "README.md").write_text(head + marker + tail)
    with pytest.raises(NonMatchingSplitsSizesError):
        datasets.load_dataset(str(copy), "en", split="train")


def test_a_users_readme_is_never_overwritten(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("# My notes\nkeep me\n")
    inputs = (str(SAMPLE / "ccnet-cc-main-2020-16.parquet"),)
    for _ in range(2):  # a second run finds its own card beside the user's README, and replaces only that
        m = run(out, ["write.format=parquet"], inputs=inputs, overwrite=True).manifest
        assert (out / "README.md").read_text() == "# My notes\nkeep me\n"
        card = (out / CARD_BESIDE_USER_README).read_text()
        assert CARD_MARK in card and f"kept {m['counts']['kept']:,}" in card


# --- the later stages read Parquet corpora ------------------------------------------------------


def test_tokenizer_and_tokenize_read_a_parquet_corpus(corpora, tmp_path):
    from gristmill.pipelines.tokenize import run_tokenize
    from gristmill.tokenizer.train import train_tokenizer

    a_dir, _, p_dir, m = corpora
    check_corpus_shards(str(p_dir), m)
    rows = sum(1 for s in m["shards"] for _ in iter_shard_rows(str(p_dir / s["path"]), ["id", "text"]))
    assert rows == m["counts"]["kept"]
    cfg = load_config(DEMO_CONFIG)
    out = {}
    for name, corpus in (("arrow", a_dir), ("parquet", p_dir)):
        train_tokenizer(str(corpus), str(tmp_path / f"tok-{name}"), cfg.tokenizer)
        tm = run_tokenize(str(corpus), str(tmp_path / f"tok-{name}"), str(tmp_path / f"tokens-{name}"),
                          cfg.tokenize, DIRECT).manifest
        out[name] = (hashlib.sha256((tmp_path / f"tok-{name}" / "tokenizer.model").read_bytes()).hexdigest(),
                     json.dumps(tm["splits"], sort_keys=True))
    assert out["parquet"] == out["arrow"]  # the same documents: the same tokenizer and token shards


# --- bad input -----------------------------------------------------------------------------------


def test_unknown_format_is_a_config_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"write\.format .*'arrow' or 'parquet'"):
        load_config(None, ["write.format=orc"])
    r = run_cli("corpus", "--input", SAMPLE_GLOB, "--output", tmp_path / "o", "--set", "write.format=orc")
    assert r.returncode == 2 and "write.format" in r.stderr and not (tmp_path / "o").exists()


def test_refresh_of_a_parquet_corpus(corpora, tmp_path):
    """A refresh reads the published Parquet corpus's (Arrow) index and writes Parquet, like its parent."""
    from gristmill.pipelines.refresh_index import PublishedCorpus

    _, _, p_dir, _ = corpora
    published = PublishedCorpus.open(str(p_dir))
    cfg = published.default_config()
    assert cfg.write.format == "parquet"
    m = run_corpus([str(SAMPLE / "ccnet-cc-main-2020-16.parquet")], str(tmp_path / "v2"), cfg, DIRECT,
                   progress=False, published=published).manifest
    c = m["counts"]
    assert c["read"] == 20 == c["kept"] + sum(c["dropped"].values())
    # every document of the new crawl was published already: kept nowhere, dropped as published duplicates
    assert c["kept"] == 0 and sum(n for r, n in c["dropped"].items() if r.endswith("published_duplicate")) > 0
    assert all(s["path"].endswith(".parquet") for s in m["rejected_shards"]) and m["rejected_shards"]
    assert [v["path"] for v in m["versions"]] == [str(p_dir), str(tmp_path / "v2")]


def test_the_cards_licence_is_what_the_config_says():
    from gristmill.config import GristmillConfig
    from gristmill.pipelines.card import card_metadata, card_text

    manifest = {"config": GristmillConfig.model_validate({"write": {"license": "odc-by"}}).model_dump(mode="json"),
                "shards": [], "rejected_shards": [], "languages": {}, "gristmill_version": "x", "schema_version": 4,
                "config_sha256": "y", "inputs": [{"path": "/data/crawl/a.warc.gz", "documents": 3}],
                "counts": {"read": 3, "kept": 0, "dropped": {"langid:low_score": 3}, "input_files": 1}}
    assert card_metadata(manifest)["license"] == "odc-by"
    text = card_text(manifest)
    assert "Licence: `odc-by`." in text and "| a.warc.gz | 3 |" in text and "/data/crawl" not in text
    # at its default the key stays out of the config's dump: earlier manifests' fingerprints hold
    assert "license" not in GristmillConfig().model_dump(mode="json")["write"]
