"""Object stores for real: gristmill's commands on s3:// paths against an S3-compatible server (moto's) on
loopback, the credentials given as a cluster user gives them (Beam's --s3_* options), and never written down."""

from __future__ import annotations

import json
import shlex

import pytest

from .conftest import DEMO_CONFIG, REPO, run_cli
from .s3server import ACCESS_KEY_ID, SECRET_ACCESS_KEY, start_s3_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = start_s3_server(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3_crawl(s3, mini_crawl) -> str:
    s3.upload_dir(mini_crawl, "crawl", "mini")
    s3.client().create_bucket(Bucket="out")
    return "s3://crawl/mini"


def _secrets_in(blob: bytes | str) -> list[str]:
    text = blob.decode("utf-8", "replace") if isinstance(blob, bytes) else blob
    return [s for s in (SECRET_ACCESS_KEY, ACCESS_KEY_ID) if s in text]


def readme_s3_commands(s3) -> list[list[str]]:
    """The README's s3:// example (the block after ``<!-- s3-example -->``), its endpoint and credentials
    those of the test's server: each command as its argument list."""
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- s3-example -->", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    block = block.replace("http://127.0.0.1:9000", s3.endpoint).replace('"$KEY"', ACCESS_KEY_ID)
    block = block.replace('"$SECRET"', SECRET_ACCESS_KEY)
    return [shlex.split(line)[1:] for line in block.replace("\\\n", " ").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def s3_corpus(s3, s3_crawl):
    """The README's ``gristmill corpus`` from s3:// to s3:// (the forked pool of two processes, the default)."""
    corpus = readme_s3_commands(s3)[0]
    assert corpus[:5] == ["corpus", "--input", f"{s3_crawl}/*", "--output", "s3://out/corpus"]
    return run_cli(*corpus, process=True)


@pytest.fixture(scope="module")
def stored(s3, s3_corpus) -> dict[str, bytes]:
    """Every object the s3:// corpus run wrote: key under s3://out/corpus/ → bytes."""
    assert s3_corpus.returncode == 0, s3_corpus.stderr[-3000:]
    return s3.keys("out", "corpus/")


def test_a_corpus_from_and_to_s3_is_the_local_corpus_and_leaves_no_temporaries(stored, mini_corpus):
    # nothing of the run's temporaries is left (an object store's "directory" is a prefix: removed by listing)
    assert not [k for k in stored if k.split("/")[0] in ("_work", "_stats", "_spill") or ".tmp-" in k], sorted(stored)
    local = {str(p.relative_to(mini_corpus)): p.read_bytes() for p in mini_corpus.rglob("*") if p.is_file()}
    shards = sorted(k for k in local if k.startswith(("lang=", "_index/", "_rejected/")))
    assert shards and sorted(k for k in stored if k.startswith(("lang=", "_index/", "_rejected/"))) == shards
    for k in shards:  # the same documents, byte for byte, as the run on local disk
        assert stored[k] == local[k], k
    manifest = json.loads(stored["manifest.json"])
    assert manifest["counts"] == json.loads(local["manifest.json"])["counts"]
    run = json.loads(stored["run.json"])
    assert run["status"] == "succeeded" and run["exit_code"] == 0


def test_no_credential_is_written_to_the_output_or_the_log(stored, s3_corpus):
    run = json.loads(stored["run.json"])
    argv = run["argv"]
    at = argv.index("--s3_secret_access_key")
    assert argv[at + 1] == "***" and argv[argv.index("--s3_access_key_id") + 1] == "***"
    assert argv[argv.index("--s3_region_name") + 1] == "us-east-1"  # not a secret: kept
    for key, blob in stored.items():
        assert not _secrets_in(blob), key
    assert not _secrets_in(s3_corpus.stdout + s3_corpus.stderr)


def test_verify_and_tokenize_read_a_corpus_on_s3(s3, stored, demo_tokenizer, tmp_path):
    v = run_cli(*readme_s3_commands(s3)[1], process=True)  # the README's verify
    assert v.returncode == 0 and "s3://out/corpus: ok" in v.stdout, v.stderr[-3000:]
    t = run_cli("tokenize", "--corpus", "s3://out/corpus", "--tokenizer", demo_tokenizer, "--output",
                tmp_path / "tokens", "--seq-len", "64", *s3.options(), process=True)
    assert t.returncode == 0, t.stderr[-3000:]
    tokens = json.loads((tmp_path / "tokens" / "manifest.json").read_text())
    kept = json.loads(stored["manifest.json"])["counts"]["kept"]
    assert sum(s["documents"] for s in tokens["splits"].values()) == kept
    assert not _secrets_in(v.stdout + v.stderr + t.stdout + t.stderr)
    assert not _secrets_in((tmp_path / "tokens" / "run.json").read_text())


def test_a_refresh_on_s3_dedups_against_the_published_corpus_on_s3(s3, stored, s3_crawl):
    # the same crawl again: every document is already published
    r = run_cli("refresh", "--published", "s3://out/corpus", "--input", f"{s3_crawl}/*", "--output",
                "s3://out/corpus-2", *s3.options(), process=True)
    assert r.returncode == 0, r.stderr[-3000:]
    stored = s3.keys("out", "corpus-2/")
    manifest = json.loads(stored["manifest.json"])
    assert manifest["counts"]["kept"] == 0 and manifest["counts"]["read"] > 0
    assert [v["path"] for v in manifest["versions"]][-2:] == ["s3://out/corpus", "s3://out/corpus-2"]
    assert not [k for k in stored if k.split("/")[0] in ("_work", "_stats", "_spill")]


def test_an_s3_output_holding_other_files_is_refused(s3, s3_crawl):
    s3.client().put_object(Bucket="out", Key="theirs/notes.txt", Body=b"a user's file")
    r = run_cli("corpus", "--input", f"{s3_crawl}/*", "--output", "s3://out/theirs", "--config", DEMO_CONFIG,
                *s3.options(), process=True)
    assert r.returncode == 2 and "is not empty and was not written by gristmill" in r.stderr, r.stderr[-2000:]
    assert set(s3.keys("out", "theirs/")) == {"notes.txt"}  # nothing written next to it


def test_an_output_in_a_missing_bucket_is_refused_with_what_to_check(s3, s3_crawl):
    r = run_cli("corpus", "--input", f"{s3_crawl}/*", "--output", "s3://no-such-bucket/corpus", "--config",
                DEMO_CONFIG, *s3.options(), process=True)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "cannot list and write the output s3://no-such-bucket/corpus" in r.stderr
    assert "does the bucket exist" in r.stderr
    assert "Traceback" not in r.stderr


def test_remove_tree_on_s3_removes_every_object_under_the_prefix_and_no_other(s3):
    from gristmill import io

    c = s3.client()
    c.create_bucket(Bucket="tree")
    for key in ("run/_work/a.arrow", "run/_work/sub/b.arrow", "run/_workers.txt", "run/keep.json"):
        c.put_object(Bucket="tree", Key=key, Body=b"x")
    io.configure(s3.options())
    assert not io.exists("s3://tree/run/_work")  # a prefix is not an object: why exists() could not see it
    io.remove_tree("s3://tree/run/_work")
    assert sorted(s3.keys("tree", "run/")) == ["_workers.txt", "keep.json"]


def test_ten_runs_in_a_row_on_s3_none_hangs(s3, s3_crawl):
    """The per-file pool forks while Beam's gRPC threads and boto3 clients exist in the parent (one of three
    runs once hung there for minutes): ten runs from s3:// to s3://, each with a pool of two processes, all
    finish and write the same corpus. A hang fails the test after 5 minutes (faulthandler dumps the stacks)."""
    import faulthandler

    inputs = [f"{s3_crawl}/cc-main-2024-22-whirlwind.warc.wet.gz", f"{s3_crawl}/ccnet-cc-main-2020-16.parquet"]
    manifests = []
    for i in range(10):
        faulthandler.dump_traceback_later(300, exit=True)
        try:
            r = run_cli("corpus", "--input", *inputs, "--output", f"s3://out/repeat-{i}", "--config", DEMO_CONFIG,
                        "--set", "near_dedup.enabled=false", "--set", "write.html_report=false",  # one pipeline
                        "--direct_num_workers", "2", "-q", *s3.options())
        finally:
            faulthandler.cancel_dump_traceback_later()
        assert r.returncode == 0, r.stderr[-3000:]
        manifests.append(json.loads(s3.keys("out", f"repeat-{i}/")["manifest.json"]))
    assert all(m["shards"] == manifests[0]["shards"] for m in manifests) and manifests[0]["counts"]["kept"] > 0


def test_pretraining_on_token_shards_on_s3_copies_them_once_per_node_verified_and_resumably(s3, demo_tokens64,
                                                                                             tmp_path, monkeypatch,
                                                                                             caplog):
    """`pretrain.data: s3://...`: the shards are copied to the node's cache (checked against the manifest's SHA-256)
    and memory-mapped; a second run copies nothing; a copy cut short (a shard damaged, the manifest not yet written)
    is completed with only what is missing. Credentials as a cluster gives them: the AWS_* environment."""
    import hashlib
    import logging

    from gristmill import api

    from . import training
    from .s3server import REGION

    s3.upload_dir(demo_tokens64, "tok", "demo64")
    for k, v in {"AWS_ENDPOINT_URL": s3.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
                 "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY, "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(k, v)
    cache = tmp_path / "cache"

    def pretrain(name: str) -> str:
        tree = training.small_pretrain(tmp_path, name, data="s3://tok/demo64", data_cache=str(cache), max_steps=4,
                                       eval_every=4, checkpoint_every=4, tensorboard=False)
        tree["model"] = {"preset": "tiny"}
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="gristmill"):
            api.pretrain(training.load(training.write_config(tmp_path / f"{name}.yaml", tree)))
        return caplog.text

    out = pretrain("first")
    (copy,) = [d for d in cache.iterdir() if d.is_dir()]
    manifest = json.loads((copy / "manifest.json").read_text())
    shards = [s for split in manifest["splits"].values() for s in split["shards"]]
    assert len(shards) >= 2 and f"{len(shards)} of {len(shards)} shards copied" in out
    for s in shards:
        assert hashlib.sha256((copy / s["path"]).read_bytes()).hexdigest() == s["sha256"]
    assert "shards copied" not in pretrain("second")  # complete: not even looked at again
    (copy / shards[0]["path"]).write_bytes(b"damaged")  # a copy killed midway: one shard bad, no manifest
    (copy / "manifest.json").unlink()
    assert f"1 of {len(shards)} shards copied" in pretrain("third")
    assert hashlib.sha256((copy / shards[0]["path"]).read_bytes()).hexdigest() == shards[0]["sha256"]
    for run in ("first", "second", "third"):
        assert training.logged_steps(tmp_path / "runs" / run)[-1] == 4
        for f in (tmp_path / "runs" / run).rglob("*"):
            assert not f.is_file() or not _secrets_in(f.read_bytes()), f


def test_a_training_run_whose_storage_path_is_on_s3_resumes_from_the_store_on_another_node(s3, demo_tokens64,
                                                                                            tmp_path, monkeypatch):
    """`storage_path: s3://...`: the run works in a local mirror (trainer/run_store.py) and pushes each checkpoint,
    its metrics and run.json to the store. A node lost after checkpoint 8 (the store has 4 and 8): the run
    resubmitted on another node (an empty cache) pulls the store's run, resumes from step 8 and ends with the
    weights of the run that was not interrupted; checkpoints it prunes leave the store too."""
    import hashlib

    from gristmill import api

    from . import training
    from .s3server import REGION

    for k, v in {"AWS_ENDPOINT_URL": s3.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
                 "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY, "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(k, v)
    s3.client().create_bucket(Bucket="runs")

    def pretrain(node: str, **extra) -> None:
        monkeypatch.setenv("GRISTMILL_CACHE", str(tmp_path / node))
        tree = training.small_pretrain(tmp_path, "remote", data=str(demo_tokens64), storage_path="s3://runs/pre",
                                       max_steps=12, eval_every=12, checkpoint_every=4, tensorboard=False, **extra)
        api.pretrain(training.load(training.write_config(tmp_path / f"{node}.yaml", tree)))

    pretrain("node1")
    stored = s3.keys("runs", "pre/remote/")
    for step in (4, 8, 12):  # every checkpoint whole on the store, its files as its state lists them
        state = json.loads(stored[f"checkpoint_{step:08d}/trainer_state.json"])
        for name, digest in state["sha256"].items():
            assert hashlib.sha256(stored[f"checkpoint_{step:08d}/{name}"]).hexdigest() == digest, (step, name)
    assert json.loads(stored["run.json"])["status"] == "succeeded"
    assert [json.loads(x)["step"] for x in stored["metrics.jsonl"].decode().splitlines()
            if "loss" in json.loads(x)][-1] == 12
    assert not [k for k in stored if k.startswith(".") or "/." in k or k.endswith((".tmp", ".part"))]
    (mirror1,) = (tmp_path / "node1" / "runs").iterdir()
    uninterrupted = training.final_weights(mirror1 / "remote", 12)

    # the node is lost after it pushed checkpoint 8: the store holds the run up to there
    c = s3.client()
    for k in [k for k in stored if k.startswith("checkpoint_00000012/")]:
        c.delete_object(Bucket="runs", Key=f"pre/remote/{k}")
    pretrain("node2", keep_checkpoints=2)
    (mirror2,) = (tmp_path / "node2" / "runs").iterdir()
    assert training.resumed_from(mirror2 / "remote") == [8]
    assert training.max_abs_diff(training.final_weights(mirror2 / "remote", 12), uninterrupted) < 1e-6
    stored = s3.keys("runs", "pre/remote/")
    assert sorted({k.split("/")[0] for k in stored if k.startswith("checkpoint_")}) == [
        "checkpoint_00000008", "checkpoint_00000012"]  # 4 pruned on the node and on the store
    for f in (tmp_path / "node2").rglob("*"):
        assert not f.is_file() or not _secrets_in(f.read_bytes()), f
