"""Extending gristmill: your own filter (by config, by the API), and the pipeline's steps as Beam
transforms inside your own pipeline."""

from __future__ import annotations

from collections import Counter

import apache_beam as beam
import pytest

import gristmill
from gristmill.config import ConfigError, GristmillConfig, load_config
from gristmill.documents import new_document, open_corpus, read_manifest
from gristmill.pipelines.clean import Cleaner, stages
from gristmill.pipelines.corpus import run_corpus
from gristmill.pipelines.transforms import (
    Clean,
    ExactDedup,
    MarkNearDuplicates,
    NearDedupEdges,
    ReadClean,
    ReadFiles,
    WriteShards,
    cluster,
)

from . import extension_filters
from .conftest import DEMO_CONFIG, REPO, SAMPLE, cli_env, run_cli
from .test_filters import PROSE  # prose every built-in rule keeps

PARQUET = str(SAMPLE / "ccnet-cc-main-2020-16.parquet")
NO_DEDUP = ["exact_dedup.enabled=false", "near_dedup.enabled=false"]


def _filter_cfg(name: str, function: str, **extra) -> GristmillConfig:
    entry = {"name": name, "function": f"tests.extension_filters:{function}", **extra}
    return GristmillConfig.model_validate({"clean": {"custom_filters": [entry]}})


def _clean(cfg: GristmillConfig, text: str = PROSE) -> dict:
    return Cleaner(cfg).process(new_document("d1", text, "s", "http://example.org/"))


# --- the contract ----------------------------------------------------------------------------------


def test_a_custom_filter_drops_under_its_own_reason_or_rewrites():
    cfg = _filter_cfg("keywords", "drop_keyword", params={"words": ["church"]})
    assert _clean(cfg)["reason"] == "keywords:keyword"
    assert _clean(_filter_cfg("keywords", "drop_keyword", params={"words": ["xylophone"]}))["reason"] is None
    shouted = _clean(_filter_cfg("shout", "shout"))
    assert shouted["reason"] is None and shouted["text"] == _clean(GristmillConfig())["text"].upper()
    # scoped to languages like the built-in rules
    scoped = _filter_cfg("keywords", "drop_keyword", params={"words": ["church"]}, languages=["de"])
    assert _clean(scoped)["reason"] is None


def test_a_failing_custom_filter_drops_the_document_not_the_run():
    doc = _clean(_filter_cfg("fragile", "broken"))
    assert doc["reason"] == "fragile:error" and "ValueError: this filter fails on mills" in doc["detail"]
    doc = _clean(_filter_cfg("odd", "not_a_verdict"))
    assert doc["reason"] == "odd:error" and "TypeError" in doc["detail"]


def test_custom_filter_config_errors_say_what_to_fix():
    with pytest.raises(ConfigError, match="cannot be imported"):
        Cleaner(_filter_cfg("nope", "does_not_exist"))
    with pytest.raises(ConfigError, match="name of a built-in stage"):
        load_config(None, ["clean.custom_filters=[{name: langid, function: 'a.b:c'}]"])
    with pytest.raises(ConfigError, match="unique"):
        load_config(None, ["clean.custom_filters=[{name: a, function: 'm:f'}, {name: a, function: 'm:g'}]"])
    with pytest.raises(ConfigError, match="function"):
        load_config(None, ["clean.custom_filters=[{name: a, function: 'no_module'}]"])


def test_custom_filters_take_their_place_in_the_funnel_and_the_manifest_config():
    cfg = _filter_cfg("keywords", "drop_keyword", params={"words": ["a"]})
    order = stages(cfg)
    assert order.index("c4_lines") < order.index("keywords") < order.index("exact_dedup")
    assert "custom_filters" not in GristmillConfig().model_dump()["clean"]  # earlier manifests stay byte-identical
    dumped = cfg.model_dump(mode="json")["clean"]["custom_filters"]
    assert dumped[0]["function"] == "tests.extension_filters:drop_keyword"
    assert GristmillConfig.model_validate(cfg.model_dump(mode="json")) == cfg  # a refresh reads it back


def test_add_filter_through_the_api():
    cfg = gristmill.add_filter(None, "keywords", extension_filters.drop_keyword, params={"words": ["church"]})
    assert cfg.clean.custom_filters[0].function == "tests.extension_filters:drop_keyword"
    assert _clean(cfg)["reason"] == "keywords:keyword"
    cfg = gristmill.add_filter(cfg, "shout", "tests.extension_filters.shout")
    assert [f.name for f in cfg.clean.custom_filters] == ["keywords", "shout"]
    with pytest.raises(ConfigError, match="not importable by name"):
        gristmill.add_filter(cfg, "anon", lambda text, params: None)


# --- end to end: the drops are counted ----------------------------------------------------------------


def _common_word(texts: list[str]) -> tuple[str, int]:
    """A word in some but not all of the texts, and in how many."""
    df = Counter(w for t in texts for w in set(extension_filters.words_of(t)) if len(w) >= 4)
    n = len(texts)
    word, count = min(((w, c) for w, c in df.items() if 0.2 * n <= c <= 0.8 * n), key=lambda wc: (-wc[1], wc[0]))
    return word, count


@pytest.mark.slow
def test_custom_filter_by_config_file_and_command_line(tmp_path):
    base = run_corpus([PARQUET], str(tmp_path / "base"), load_config(DEMO_CONFIG, NO_DEDUP), progress=False)
    texts = [d["text"] for d in open_corpus(str(tmp_path / "base")).to_table().to_pylist()]
    word, n_with = _common_word(texts)
    config = tmp_path / "custom.yaml"
    config.write_text(
        DEMO_CONFIG.read_text() + "\nexact_dedup: {enabled: false}\nnear_dedup: {enabled: false}\n"
         "clean:\n  custom_filters:\n    - name: keywords\n      function: tests.extension_filters:drop_keyword\n"
         f"      params: {{words: [{word}]}}\n")
    r = run_cli("corpus", "--input", PARQUET, "--output", tmp_path / "custom", "--config", config,
                env={**cli_env(), "PYTHONPATH": str(REPO)}, check=True)
    assert "keywords" in r.stdout  # in the funnel table
    m = read_manifest(str(tmp_path / "custom"))
    c = m["counts"]
    assert c["dropped"]["keywords:keyword"] == n_with
    assert c["kept"] == base.manifest["counts"]["kept"] - n_with and c["read"] == c["kept"] + sum(c["dropped"].values())
    row = next(r for r in m["funnel"] if r["stage"] == "keywords")
    assert row["dropped"] == n_with and m["funnel"][-1]["out"] == c["kept"]
    kept = open_corpus(str(tmp_path / "custom")).to_table().to_pylist()
    assert all(word not in extension_filters.words_of(d["text"]) for d in kept)


# --- the pipeline's steps in your own Beam pipeline ------------------------------------------------------


def _is_kept(d) -> bool:
    return not d["reason"]


COMPOSED_FILES = [PARQUET, str(SAMPLE / "cc-main-2024-22-whirlwind.warc.wet.gz"),
                  str(SAMPLE / "wget-2024-04-25.warc.gz")]


@pytest.fixture(scope="module")
def composed_files(tmp_path_factory) -> list[str]:
    """Three of the sample's files (Parquet, WET, wget WARC) and two near duplicates (one word apart), so
    that the composition clusters and marks as well; all in one directory (a document's source is its
    file's path under the inputs' common directory)."""
    import json
    import shutil

    crawl = tmp_path_factory.mktemp("composed")
    for f in COMPOSED_FILES:
        shutil.copy(f, crawl)
    twins = [PROSE, PROSE.replace("Saturday", "Sunday")]
    (crawl / "near-duplicates.jsonl").write_text(
        "".join(json.dumps({"id": f"twin-{i}", "text": t}) + "\n" for i, t in enumerate(twins)))
    return sorted(str(p) for p in crawl.iterdir())


@pytest.fixture(scope="module")
def reference_corpus(tmp_path_factory, composed_files):
    """`gristmill corpus` on those files with the demo config: what a composition must equal."""
    out = tmp_path_factory.mktemp("reference") / "corpus"
    result = run_corpus(composed_files, str(out), load_config(DEMO_CONFIG), progress=False)
    assert result.manifest["counts"]["dropped"]["near_dedup:duplicate"] == 1  # the twins
    return out, result


@pytest.mark.slow
@pytest.mark.parametrize("read", ["ReadFiles | Clean", "ReadClean"])
def test_public_transforms_compose_into_the_corpus_pipeline(tmp_path, read, reference_corpus, composed_files):
    """ReadFiles | Clean (or ReadClean, what `gristmill corpus` reads with) | ExactDedup | NearDedupEdges, cluster,
    MarkNearDuplicates | WriteShards — the objects `gristmill corpus` runs — in pipelines of one's own write the
    same kept shards, byte for byte, as `gristmill corpus` on the same files and config."""
    cfg = load_config(DEMO_CONFIG)
    files = composed_files
    reference_dir, reference = reference_corpus
    own, work = tmp_path / "own", str(tmp_path / "near-dedup")
    with beam.Pipeline(runner="DirectRunner") as p:
        paths = p | beam.Create([(f, f.rsplit("/", 1)[1]) for f in files])
        if read == "ReadClean":
            docs, _ = paths | ReadClean(cfg, str(tmp_path / "work"))
        else:
            docs = paths | ReadFiles(cfg.read) | Clean(cfg)
        kept = docs | "Kept" >> beam.Filter(_is_kept)
        unique = kept | ExactDedup() | "Unique" >> beam.Filter(_is_kept)
        unique | NearDedupEdges(cfg.near_dedup, work)
    clustering = cluster(work, cfg.near_dedup, ["--runner", "DirectRunner"])
    assert clustering.spill_files and clustering.label_files  # the twins are clustered
    with beam.Pipeline(runner="DirectRunner") as p:
        p | MarkNearDuplicates(clustering) | "Distinct" >> beam.Filter(_is_kept) | WriteShards(str(own), cfg.write)
    ours = sorted(p.relative_to(own) for p in own.rglob("*.arrow"))
    assert ours and ours == [type(ours[0])(s["path"]) for s in reference.manifest["shards"]]
    for rel in ours:
        assert (own / rel).read_bytes() == (reference_dir / rel).read_bytes(), rel
