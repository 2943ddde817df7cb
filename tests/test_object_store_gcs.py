"""gs:// for real: gristmill's commands on Google Cloud Storage paths against a GCS emulator on loopback
(gcp-storage-emulator: GCS's JSON API, objects in memory), reached the way Beam's GCS filesystem reaches
any store (google-cloud-storage, ``STORAGE_EMULATOR_HOST``). The s3:// side: tests/test_object_store.py."""

from __future__ import annotations

import json

import pytest

from .conftest import DEMO_CONFIG, cli_env, run_cli
from .gcsserver import start_gcs_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    server = start_gcs_server(tmp_path_factory.mktemp("gcs") / "gcs.log")
    yield server
    server.stop()


def _gristmill(gcs, *args):
    return run_cli(*args, env=gcs.env(cli_env()))


@pytest.fixture(scope="module")
def gs_corpus(gcs, mini_crawl):
    """The mini crawl from gs:// to gs:// (the forked pool of two processes, the default): every object written."""
    gcs.create_bucket("crawl")
    gcs.create_bucket("out")
    gcs.upload_dir(mini_crawl, "crawl", "mini")
    r = _gristmill(gcs, "corpus", "--input", "gs://crawl/mini/*", "--output", "gs://out/corpus",
                   "--config", DEMO_CONFIG)
    assert r.returncode == 0, r.stderr[-3000:]
    return r, gcs.keys("out", "corpus/")


def test_a_corpus_from_and_to_gcs_is_the_local_corpus_and_leaves_no_temporaries(gs_corpus, mini_corpus):
    r, stored = gs_corpus
    assert not [k for k in stored if k.split("/")[0] in ("_work", "_stats", "_spill") or ".tmp-" in k], sorted(stored)
    local = {str(p.relative_to(mini_corpus)): p.read_bytes() for p in mini_corpus.rglob("*") if p.is_file()}
    shards = sorted(k for k in local if k.startswith(("lang=", "_index/", "_rejected/")))
    assert shards and sorted(k for k in stored if k.startswith(("lang=", "_index/", "_rejected/"))) == shards
    for k in shards:  # the same documents, byte for byte, as the run on local disk
        assert stored[k] == local[k], k
    manifest = json.loads(stored["manifest.json"])
    assert manifest["counts"] == json.loads(local["manifest.json"])["counts"]
    assert {f["path"] for f in manifest["inputs"]} == {f"gs://crawl/mini/{f['source']}" for f in manifest["inputs"]}
    run = json.loads(stored["run.json"])
    assert run["status"] == "succeeded" and run["exit_code"] == 0
    # connected at once: no search for Google credentials an emulator does not take (Beam's retries)
    assert "default credentials" not in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]


def test_verify_and_tokenize_read_a_corpus_on_gcs(gcs, gs_corpus, demo_tokenizer, tmp_path):
    v = _gristmill(gcs, "verify", "gs://out/corpus")
    assert v.returncode == 0 and "gs://out/corpus: ok" in v.stdout, v.stderr[-3000:]
    t = _gristmill(gcs, "tokenize", "--corpus", "gs://out/corpus", "--tokenizer", demo_tokenizer, "--output",
                   tmp_path / "tokens", "--seq-len", "64")
    assert t.returncode == 0, t.stderr[-3000:]
    tokens = json.loads((tmp_path / "tokens" / "manifest.json").read_text())
    kept = json.loads(gs_corpus[1]["manifest.json"])["counts"]["kept"]
    assert sum(s["documents"] for s in tokens["splits"].values()) == kept


def test_verify_on_gcs_names_an_object_that_does_not_belong(gcs, gs_corpus):
    bucket = gcs.client().bucket("out")
    stray = bucket.blob("corpus/lang=en/part-09999.arrow")
    stray.upload_from_string(b"not a shard of this corpus")
    try:
        v = _gristmill(gcs, "verify", "gs://out/corpus")
        assert v.returncode == 6 and "lang=en/part-09999.arrow" in v.stdout + v.stderr, v.stdout + v.stderr
    finally:
        stray.delete()


def test_a_refresh_on_gcs_dedups_against_the_published_corpus_on_gcs(gcs, gs_corpus):
    # the same crawl again: every document is already published
    r = _gristmill(gcs, "refresh", "--published", "gs://out/corpus", "--input", "gs://crawl/mini/*", "--output",
                   "gs://out/corpus-2")
    assert r.returncode == 0, r.stderr[-3000:]
    stored = gcs.keys("out", "corpus-2/")
    manifest = json.loads(stored["manifest.json"])
    assert manifest["counts"]["kept"] == 0 and manifest["counts"]["read"] > 0
    assert manifest["counts"]["dropped"]["exact_dedup:published_duplicate"] > 0
    assert [v["path"] for v in manifest["versions"]][-2:] == ["gs://out/corpus", "gs://out/corpus-2"]
    assert not [k for k in stored if k.split("/")[0] in ("_work", "_stats", "_spill")]


def test_an_output_in_a_missing_gcs_bucket_is_refused_with_what_to_check(gcs, gs_corpus):
    r = _gristmill(gcs, "corpus", "--input", "gs://crawl/mini/*", "--output", "gs://no-such-bucket/corpus",
                   "--config", DEMO_CONFIG)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "cannot list and write the output gs://no-such-bucket/corpus" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_token_shards_on_gcs_are_copied_to_the_node_cache_verified(gcs, demo_tokens64, tmp_path, monkeypatch):
    """`pretrain.data: gs://...` reads through tokenizer/cache.py, as on S3 (where a whole pretraining run is
    tested): every shard copied and checked against the manifest's SHA-256; a damaged copy completed."""
    import hashlib

    from gristmill.tokenizer.cache import local_tokens

    for k, v in gcs.env({}).items():
        monkeypatch.setenv(k, v)
    gcs.create_bucket("tok")
    gcs.upload_dir(demo_tokens64, "tok", "demo64")
    copy = local_tokens("gs://tok/demo64", tmp_path / "cache")
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest == json.loads((demo_tokens64 / "manifest.json").read_text())
    shards = [s for split in manifest["splits"].values() for s in split["shards"]]
    assert len(shards) >= 2
    for s in shards:
        assert hashlib.sha256((copy / s["path"]).read_bytes()).hexdigest() == s["sha256"]
    (copy / shards[0]["path"]).write_bytes(b"damaged")  # a copy killed midway
    (copy / "manifest.json").unlink()
    assert local_tokens("gs://tok/demo64", tmp_path / "cache") == copy
    assert hashlib.sha256((copy / shards[0]["path"]).read_bytes()).hexdigest() == shards[0]["sha256"]
