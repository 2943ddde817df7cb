"""End to end: the corpus pipeline on real runners (DirectRunner in-process and multi-process; the DaskRunner:
tests/test_dask_cluster.py) over the bundled sample crawl, the mini crawl and damaged inputs."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from gristmill.config import load_config
from gristmill.documents import SCHEMA_VERSION, open_corpus
from gristmill.pipelines import filters
from gristmill.pipelines.corpus import PipelineInputError, run_corpus
from gristmill.pipelines.filters import dedup_key
from gristmill.pipelines.report import without_timings

from . import badinputs
from .conftest import (
    DEMO_CONFIG,
    REPO,
    SAMPLE,
    SAMPLE_GLOB,
    run_cli,
    run_cli_and_kill_when,
    tree_bytes,
)

pytestmark = pytest.mark.slow



def run(out: Path, inputs=None, beam_args=None, overrides=None, **kw):
    cfg = load_config(DEMO_CONFIG, overrides)
    return run_corpus(inputs or [SAMPLE_GLOB], str(out), cfg, beam_args or ["--runner", "DirectRunner"],
                      progress=False, **kw)


@pytest.fixture(scope="module")
def direct(demo_corpus):
    """The session's run of the whole sample crawl (tests/conftest.py), and its manifest."""
    return demo_corpus, json.loads((demo_corpus / "manifest.json").read_text())


# --- the same bytes as before ------------------------------------------------------------------------


def test_output_is_byte_identical_to_the_recorded_run(direct):
    """The sample crawl gives, file for file, the bytes recorded in tests/golden (written by the code
    before the one-package restructuring). A change meant to alter the output updates the record."""
    out, m = direct
    golden = json.loads((REPO / "tests" / "golden" / "sample_corpus_demo.json").read_text())
    files = {str(p.relative_to(out)): p for p in out.rglob("*.arrow")}
    assert sorted(files) == sorted(golden["files"])
    assert {rel: hashlib.sha256(p.read_bytes()).hexdigest() for rel, p in files.items()} == golden["files"]
    report_bytes = without_timings("report.html", (out / "report.html").read_bytes())
    assert hashlib.sha256(report_bytes).hexdigest() == golden["report.html"]
    m = json.loads(json.dumps(m))  # a copy: the fixture is shared
    assert set(m.pop("timings")) == {"seconds", "clean_steps"}  # the one section that differs between runs
    for f in m["inputs"]:
        f.pop("path")  # absolute: where this checkout is
    assert hashlib.sha256(json.dumps(m, sort_keys=True).encode()).hexdigest() == golden["manifest_without_input_paths"]
    assert m["counts"] == golden["counts"]


# --- the manifest accounts for every document ----------------------------------------------------


def test_manifest_balances(direct):
    out, m = direct
    c = m["counts"]
    assert c["read"] == c["kept"] + sum(c["dropped"].values())
    assert c["read"] == sum(f["documents"] for f in m["inputs"]) == 1407
    assert c["kept"] == sum(s["rows"] for s in m["shards"]) == sum(v["kept"] for v in m["languages"].values())
    assert sum(c["dropped"].values()) == sum(s["rows"] for s in m["rejected_shards"])
    assert m["funnel"][-1]["out"] == c["kept"]
    for f in m["inputs"]:
        assert len(f["sha256"]) == 64 and f["size"] == (SAMPLE / f["source"]).stat().st_size


def test_shards_open_in_pyarrow_dataset(direct):
    out, m = direct
    corpus = open_corpus(str(out)).to_table()
    assert corpus.num_rows == m["counts"]["kept"]
    ids = corpus.column("id").to_pylist()
    assert len(set(ids)) == len(ids)
    assert set(corpus.column("lang").to_pylist()) == {k for k, v in m["languages"].items() if v["kept"]}
    # the hive layout works with a plain pyarrow.dataset call too (_rejected/ and _index/ start with "_": ignored)
    hive = ds.dataset(str(out), format="arrow", partitioning="hive", exclude_invalid_files=True)
    assert hive.count_rows() == m["counts"]["kept"]
    en = ds.dataset(str(out / "lang=en"), format="arrow").to_table()
    assert set(en.column("lang").to_pylist()) == {"en"}
    assert all(0.65 <= s <= 1 for s in en.column("lang_score").to_pylist())
    # every shard is sorted by id and carries the schema version
    for s in m["shards"]:
        with pa.memory_map(str(out / s["path"])) as f:
            t = pa.ipc.open_file(f).read_all()
        assert t.column("id").to_pylist() == sorted(t.column("id").to_pylist())
        assert t.schema.metadata[b"gristmill.schema_version"] == SCHEMA_VERSION.encode() == b"4"


def test_shards_open_in_hf_datasets(direct):
    import datasets

    out, m = direct
    files = [str(out / s["path"]) for s in m["shards"]]
    d = datasets.load_dataset("arrow", data_files=files, split="train")
    assert d.num_rows == m["counts"]["kept"]
    assert {"id", "text", "lang", "lang_score", "n_words"} <= set(d.column_names)


def test_stream_format_shards_open_with_dataset_from_file(tmp_path):
    import datasets

    out = tmp_path / "stream"
    m = run(out, overrides=["write.arrow_format=stream", "write.write_rejected=false"]).manifest
    rows = 0
    for s in m["shards"]:
        rows += datasets.Dataset.from_file(str(out / s["path"])).num_rows
    assert rows == m["counts"]["kept"] and not m["rejected_shards"]


def test_rejected_documents_carry_their_reason(direct):
    out, m = direct
    rej = open_corpus(str(out), rejected=True).to_table()
    got = Counter(rej.column("reason").to_pylist())
    assert dict(got) == m["counts"]["dropped"]


def test_exact_duplicates_removed_keeping_the_smallest_id(direct):
    out, _ = direct
    kept = open_corpus(str(out)).to_table().to_pylist()
    keys = Counter(dedup_key(d["text"]) for d in kept)
    assert max(keys.values()) == 1, "no two kept documents share normalised text"
    rej = open_corpus(str(out), rejected=True).to_table().to_pylist()
    dups = [d for d in rej if d["reason"] == "exact_dedup:duplicate"]
    assert dups, "the OSCAR sample holds real duplicates (original and deduplicated variants)"
    by_id = {d["id"]: d for d in kept}
    for d in dups:
        winner = by_id[d["detail"]]
        assert dedup_key(winner["text"]) == dedup_key(d["text"]) and winner["id"] < d["id"]


def test_text_is_clean(direct):
    out, _ = direct
    docs = open_corpus(str(out)).to_table().to_pylist()
    for d in docs:
        assert "\x00" not in d["text"] and "\r" not in d["text"] and d["text"] == d["text"].strip()
        # redaction ran: no address the e-mail pattern matches, no public IPv4 address is left
        assert not filters.EMAIL_RE.search(d["text"]), d["id"]
        assert not any(ipaddress.ip_address(m.group(0)).is_global for m in filters.IPV4_RE.finditer(d["text"])
                       if all(int(x) < 256 for x in m.group(0).split("."))), d["id"]
    assert sum(d["pii_emails"] or 0 for d in docs) > 0  # the sample has addresses to redact


def test_report_written(direct):
    out, m = direct
    html = (out / "report.html").read_text()
    assert "<svg" in html and f"{m['counts']['kept']:,}" in html


# --- determinism and atomicity (on the mini crawl: every reader format, every dedup path) ------------


def test_a_killed_run_resumes_from_its_per_file_work(mini_crawl, mini_corpus, tmp_path):
    """SIGKILL a run once some input files are done; the same command again reuses their cleaned
    documents (the rest are read again) and writes the bytes of an uninterrupted run."""
    again = tmp_path / "again"
    crawl = str(mini_crawl / "*")
    run_cli_and_kill_when(["corpus", "--input", crawl, "--output", again, "--config", DEMO_CONFIG, "-q"],
                          lambda: len(list((again / "_work").glob("*.json"))) >= 2)
    assert not (again / "manifest.json").exists()
    done = len(list((again / "_work").glob("*.json")))
    r = run_cli("corpus", "--input", crawl, "--output", again, "--config", DEMO_CONFIG)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("reusing the cleaned documents of an earlier run") >= done >= 2
    assert "did not finish" in r.stderr and not (again / "_work").exists()
    # the driver's progress (pipelines/progress.py): one line per phase with the totals
    assert re.search(r"read \+ clean: 6 files, 181 documents in [\d.]+ s", r.stderr), r.stderr[-3000:]
    assert re.search(r"dedup: [\d.]+ s \(exact duplicates, signatures, candidate pairs\); clustering", r.stderr)
    assert re.search(r"near-dedup clustering: round 1 changed [\d,]+ edges", r.stderr)
    assert re.search(r"clustering: [\d.]+ s; writing shards", r.stderr) and re.search(r"write: [\d.]+ s", r.stderr)
    assert tree_bytes(again) == tree_bytes(mini_corpus)
    # --fresh ignores earlier work
    r = run_cli("corpus", "--input", crawl, "--output", again, "--config", DEMO_CONFIG, "--fresh")
    assert r.returncode == 0 and "reusing" not in r.stderr and tree_bytes(again) == tree_bytes(mini_corpus)


def test_the_mini_crawl_holds_every_reader_format_and_dedup_path(mini_corpus):
    m = json.loads((mini_corpus / "manifest.json").read_text())
    assert {Path(f["source"]).name.split(".", 1)[1] for f in m["inputs"]} == {
        "warc.gz", "warc.wet.gz", "parquet", "jsonl.gz", "jsonl.zst"}
    assert all(f["documents"] for f in m["inputs"]) and m["counts"]["read"] == 181
    dropped = m["counts"]["dropped"]
    assert dropped["exact_dedup:duplicate"] > 0 and dropped["near_dedup:duplicate"] > 0


def test_rerun_is_byte_identical_and_recovers_from_a_crash(mini_crawl, mini_corpus, tmp_path):
    again = tmp_path / "again"
    inputs = [str(mini_crawl / "*")]
    run(again, inputs=inputs)
    assert tree_bytes(again) == tree_bytes(mini_corpus)
    # simulate a crash of a run with another config: a temp file, a stale shard, spill files, no manifest
    (again / "manifest.json").unlink()
    (again / "lang=en" / "part-00000.arrow.tmp-deadbeef").write_bytes(b"half a shard")
    (again / "lang=en" / "part-00099.arrow").write_bytes(b"stale")
    (again / "_spill").mkdir()  # documents a crashed run left waiting for their clusters
    (again / "_spill" / "0123abcd.arrow").write_bytes(b"orphan")
    run(again, inputs=inputs)
    assert tree_bytes(again) == tree_bytes(mini_corpus)


def test_one_process_gives_the_same_bytes_as_the_default_pool(mini_crawl, mini_corpus, tmp_path):
    """The default in-process runner reads and cleans on a pool of one process per core
    (pipelines/workpool.py); ``--direct_num_workers 1`` turns the pool off: the same bytes."""
    one = tmp_path / "one"
    run(one, inputs=[str(mini_crawl / "*")],
        beam_args=["--runner", "DirectRunner", "--direct_num_workers", "1"])
    assert tree_bytes(one) == tree_bytes(mini_corpus)


def test_multiprocess_direct_runner_gives_the_same_bytes(mini_crawl, mini_corpus, tmp_path):
    mp = tmp_path / "mp"
    run(mp, inputs=[str(mini_crawl / "*")],
        beam_args=["--runner", "DirectRunner", "--direct_num_workers", "2",
                   "--direct_running_mode", "multi_processing"])
    assert tree_bytes(mp) == tree_bytes(mini_corpus)


def test_refuses_to_write_into_a_foreign_directory(tmp_path):
    from gristmill.outputs import OutputDirError

    (tmp_path / "precious.txt").write_text("do not delete")
    with pytest.raises(OutputDirError, match="not empty"):
        run(tmp_path)


# --- bad input -----------------------------------------------------------------------------------


def test_damaged_inputs_are_all_accounted_for(tmp_path):
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    badinputs.corrupt_gzip_mid_file(crawl / "corrupt.warc.gz")
    badinputs.truncated_gzip(crawl / "truncated.warc.gz")
    badinputs.truncated_warc_record(crawl / "truncated-record.warc")
    badinputs.mixed_payload_warc(crawl / "payloads.warc.gz", big_html_bytes=50 * 2**20)
    badinputs.hostile_jsonl(crawl / "hostile.jsonl")
    badinputs.zero_length(crawl / "empty.jsonl.gz")
    shutil.copy(SAMPLE / "ccnet-cc-main-2020-16.parquet", crawl / "ccnet.parquet")
    inputs = [str(crawl / "*"), str(crawl / "ccnet.parquet")]  # the same file given twice
    res = run(tmp_path / "out", inputs=inputs)
    m = res.manifest
    c = m["counts"]
    assert c["read"] == c["kept"] + sum(c["dropped"].values())
    assert c["read"] == sum(f["documents"] for f in m["inputs"])
    assert m["duplicate_inputs"] == [str(crawl / "ccnet.parquet")]
    files = {f["source"]: f for f in m["inputs"]}
    assert files["ccnet.parquet"]["documents"] == 20  # read once
    assert files["empty.jsonl.gz"]["documents"] == 0 and files["empty.jsonl.gz"]["error"] is None
    assert files["corrupt.warc.gz"]["error"] and files["truncated.warc.gz"]["error"]
    d = c["dropped"]
    assert d["read:corrupt_file"] == 2
    assert d["read:truncated_record"] == 1
    assert d["read:too_large"] == 2  # the 50 MB HTML page and the 50 MB JSONL document
    assert d["extract:not_html"] == 2 and d["extract:http_status"] == 1
    assert d["normalize:empty"] == 2  # "" and whitespace-only
    assert d["read:invalid_json"] == 1 and d["read:not_an_object"] == 1 and d["read:no_text_field"] == 1
    out = str(tmp_path / "out")
    rows = open_corpus(out).to_table().to_pylist() + open_corpus(out, rejected=True).to_table().to_pylist()
    docs = {r["id"]: r for r in rows}
    # invalid UTF-8 and NUL bytes do not cost the documents: repaired, and they go on through the
    # pipeline (the NUL one is then a near duplicate of the other documents built on the same text)
    assert "\ufffd" in docs["bad-utf8"]["text"] and docs["bad-utf8"].get("reason") is None
    assert docs["nul"]["control_chars_removed"] == 2 and docs["nul"]["reason"] == "near_dedup:duplicate"
    kept_twin = docs[docs["nul"]["detail"]]
    assert kept_twin.get("reason") is None and kept_twin["cluster_size"] >= 2 and kept_twin["id"] < "nul"


def test_unreadable_input_fails_up_front_naming_the_file(tmp_path):
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    badinputs.not_a_warc(crawl / "page.warc.gz")
    shutil.copy(SAMPLE / "cc-main-2024-22-whirlwind.warc.wet.gz", crawl)
    with pytest.raises(PipelineInputError, match=r"(?s)page\.warc\.gz: not a WARC file.*--skip-bad-files"):
        run(tmp_path / "out", inputs=[str(crawl / "*")])
    assert not (tmp_path / "out").exists(), "nothing written before the inputs are known good"
    m = run(tmp_path / "out", inputs=[str(crawl / "*")], skip_bad_files=True).manifest
    assert m["counts"]["skipped_files"] == 1
    assert m["skipped_inputs"][0]["path"].endswith("page.warc.gz")
    assert m["counts"]["read"] == 1


def test_glob_matching_nothing_is_an_error(tmp_path):
    with pytest.raises(PipelineInputError, match="matches no file"):
        run(tmp_path / "out", inputs=[str(tmp_path / "nothing-*.warc.gz")])


def test_url_blocklist_from_a_file(tmp_path):
    block = tmp_path / "block.txt"
    block.write_text("# spam\n16thfleet.wikidot.com\n")
    m = run(tmp_path / "out", inputs=[str(SAMPLE / "dolma-cc-main-2019-30.jsonl.gz")],
            overrides=[f"clean.url_blocklist.files=[{block}]"]).manifest
    assert m["counts"]["dropped"]["url_blocklist:domain"] >= 1


# --- the command line ----------------------------------------------------------------------------


def test_cli_help_explains_every_command():
    top = run_cli("--help")
    assert top.returncode == 0 and "corpus" in top.stdout and "demo" in top.stdout
    c = run_cli("corpus", "--help")
    assert c.returncode == 0
    for word in ("--input", "--output", "--config", "--skip-bad-files", "DataflowRunner", "--set"):
        assert word in c.stdout
    assert run_cli("demo", "--help").returncode == 0


def test_cli_errors_say_what_to_fix(tmp_path):
    r = run_cli("corpus", "--input", str(tmp_path / "none-*.jsonl"), "--output", str(tmp_path / "o"))
    assert r.returncode == 4 and "matches no file" in r.stderr  # exit code 4: an input problem
    bad = tmp_path / "bad.yaml"
    bad.write_text("clean:\n  gopher_quality:\n    min_doc_word: 10\n")
    r = run_cli("corpus", "--input", SAMPLE_GLOB, "--output", str(tmp_path / "o"), "--config", str(bad))
    assert r.returncode == 2 and "clean.gopher_quality.min_doc_word" in r.stderr


def test_cli_corpus_prints_the_funnel(tmp_path):
    r = run_cli("corpus", "--input", str(SAMPLE / "ccnet-cc-main-2020-16.parquet"), "--output", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    assert "funnel" in r.stdout and "gopher_quality" in r.stdout and "balanced" in r.stdout
    assert os.path.exists(tmp_path / "o" / "manifest.json")


def test_without_timings_manifest_and_report_are_the_same_bytes_outright(tmp_path):
    """``write.timings: false``: no times in manifest.json and report.html, so two runs of the same input
    are the same bytes in every file but run.json, with nothing taken out before comparing."""
    inputs = [str(SAMPLE / "ccnet-cc-main-2020-16.parquet")]
    untimed = ["write.timings=false"]
    run(tmp_path / "a", inputs=inputs, overrides=untimed)
    run(tmp_path / "b", inputs=inputs, overrides=untimed, beam_args=["--runner", "DirectRunner",
                                                                     "--direct_num_workers", "1"])

    def raw(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file() and p.name != "run.json"}

    a = raw(tmp_path / "a")
    assert a == raw(tmp_path / "b") and "manifest.json" in a and "report.html" in a
    assert b'"timings"' not in a["manifest.json"].replace(b'"timings": false', b"")
    assert b"<!--timing-->" not in a["report.html"] and b"write.timings: false" in a["report.html"]
    # the run's times are still in run.json
    assert json.loads((tmp_path / "a" / "run.json").read_text())["clean_steps"]
