"""Incremental refresh: a new crawl deduplicated against a published corpus through its LSH index."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pytest

from gristmill.config import load_config
from gristmill.documents import open_corpus
from gristmill.pipelines.corpus import run_corpus
from gristmill.pipelines.refresh_index import PublishedCorpus, RefreshError

from .conftest import DEMO_CONFIG, SAMPLE, tree_bytes

pytestmark = pytest.mark.slow

FIRST_CRAWL = [str(SAMPLE / "dolma-cc-main-2019-30.jsonl.gz"), str(SAMPLE / "oscar-2019-multilingual.jsonl.zst")]
SECOND_CRAWL = [str(SAMPLE / "*")]  # overlaps the first completely, plus new files


def digest_tree(root: Path) -> dict[str, str]:
    """Every file's digest but run.json's, the manifest and report without their timings."""
    return {k: hashlib.sha256(v).hexdigest() for k, v in tree_bytes(root).items()}


def refresh(published: Path, out: Path, inputs=None, cfg=None):
    corpus = PublishedCorpus.open(str(published))
    cfg = cfg or corpus.default_config()
    corpus.check_compatible(cfg)
    result = run_corpus(inputs or SECOND_CRAWL, str(out), cfg, ["--runner", "DirectRunner"], progress=False,
                        published=corpus)
    return result.manifest


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    out = tmp_path_factory.mktemp("v1") / "corpus"
    run_corpus(FIRST_CRAWL, str(out), load_config(DEMO_CONFIG), ["--runner", "DirectRunner"], progress=False)
    return out


@pytest.fixture(scope="module")
def refreshed(published, tmp_path_factory):
    before = digest_tree(published)
    out = tmp_path_factory.mktemp("v2") / "corpus"
    manifest = refresh(published, out)
    assert digest_tree(published) == before, "a refresh never rewrites the published corpus"
    return out, manifest


def index_hashes(corpus: Path) -> set[str]:
    hashes = set()
    for f in sorted((corpus / "_index").glob("*.arrow")):
        hashes |= set(pa.ipc.open_file(str(f)).read_all().column("text_hash").to_pylist())
    return hashes


def test_new_version_holds_only_new_documents(published, refreshed):
    out, m = refreshed
    c = m["counts"]
    assert c["read"] == c["kept"] + sum(c["dropped"].values())
    removed = c["dropped"]["exact_dedup:published_duplicate"] + c["dropped"].get("near_dedup:published_duplicate", 0)
    published_kept = json.loads((published / "manifest.json").read_text())["counts"]["kept"]
    assert removed >= published_kept > 200  # the first crawl read again: everything it kept comes back as a duplicate
    new_sources = {r["source"] for r in open_corpus(str(out)).to_table().to_pylist()}
    assert new_sources and not new_sources & {"dolma-cc-main-2019-30.jsonl.gz", "oscar-2019-multilingual.jsonl.zst"}
    assert not index_hashes(out) & index_hashes(published)
    # every removed document names the published document it duplicates
    pub_ids = set(open_corpus(str(published)).to_table().column("id").to_pylist())
    for r in open_corpus(str(out), rejected=True).to_table().to_pylist():
        if r["reason"].endswith("published_duplicate"):
            assert r["detail"] in pub_ids


def test_the_refresh_report_in_chromium(refreshed, tmp_path):
    """The refresh's report.html has every section, and its data adds up (tests/test_report_browser.py)."""
    from .test_report_browser import check_rendered_report, check_report_data

    out, m = refreshed
    check_report_data(m)
    dom = check_rendered_report(out / "report.html", tmp_path, m)
    assert "<code>exact_dedup:published_duplicate</code>" in dom  # what the published version already held


def test_versions_are_listed_with_what_each_added_and_removed(published, refreshed):
    out, m = refreshed
    versions = json.loads((out / "versions.json").read_text())
    assert versions == m["versions"] and m["parent"] == str(published)
    assert [v["path"] for v in versions] == [str(published), str(out)]
    assert versions[0]["added"] == json.loads((published / "manifest.json").read_text())["counts"]["kept"]
    assert versions[1]["added"] == m["counts"]["kept"]
    assert sum(versions[1]["removed_as_duplicates_of_published"].values()) >= versions[0]["added"] > 200


def test_the_same_refresh_twice_gives_the_same_result(published, refreshed, tmp_path):
    out, _ = refreshed
    again = tmp_path / "again"
    refresh(published, again)
    a, b = digest_tree(out), digest_tree(again)
    differ = {k for k in a if a[k] != b.get(k)}
    assert differ <= {"manifest.json", "versions.json"}  # they name their own directory
    def without_versions(directory: Path) -> dict:
        return {k: v for k, v in json.loads((directory / "manifest.json").read_text()).items()
                if k not in ("versions", "timings")}

    assert without_versions(out) == without_versions(again)


def test_a_chain_of_refreshes(published, refreshed, tmp_path):
    v2, _ = refreshed
    m3 = refresh(v2, tmp_path / "v3")
    assert m3["counts"]["kept"] == 0  # the same crawl a third time: nothing new
    assert [v["path"] for v in m3["versions"]] == [str(published), str(v2), str(tmp_path / "v3")]


def test_published_corpus_without_index_is_refused(tmp_path):
    out = tmp_path / "noindex"
    cfg = load_config(DEMO_CONFIG, ["near_dedup.enabled=false"])
    run_corpus([str(SAMPLE / "ccnet-cc-main-2020-16.parquet")], str(out), cfg, ["--runner", "DirectRunner"],
               progress=False)
    with pytest.raises(RefreshError, match="has no LSH index"):
        PublishedCorpus.open(str(out))
    with pytest.raises(RefreshError, match="no manifest.json"):
        PublishedCorpus.open(str(tmp_path / "nothing"))


def test_different_minhash_configuration_is_refused_naming_the_difference(published):
    corpus = PublishedCorpus.open(str(published))
    with pytest.raises(RefreshError, match=r"near_dedup.num_perm: published 256, this run 128"):
        corpus.check_compatible(load_config(DEMO_CONFIG, ["near_dedup.num_perm=128"]))
    with pytest.raises(RefreshError, match=r"bands × rows"):
        corpus.check_compatible(load_config(DEMO_CONFIG, ["near_dedup.threshold=0.5"]))


def test_missing_index_file_is_refused(published, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(published, copy)
    next((copy / "_index").glob("*.arrow")).unlink()
    with pytest.raises(RefreshError, match="missing its index file"):
        PublishedCorpus.open(str(copy))
