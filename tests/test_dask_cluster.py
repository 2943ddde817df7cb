"""`gristmill corpus` and `gristmill refresh` on a real two-host Dask cluster (a worker in a network
namespace): the output is byte-identical to the DirectRunner's, and both hosts did work. The corpus run reads
the mini crawl (tests/conftest.py: every reader format, exact and near duplicates), the refresh the whole
Dolma file (the mini crawl's 80 documents again, and 617 new ones). The near-dedup clusters on the DaskRunner
are checked here (the mini crawl's near-duplicate clusters, byte for byte), not once more in
test_near_dedup.py; decontamination's joins on Dask: test_decontaminate.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .conftest import DEMO_CONFIG, SAMPLE, run_cli, tree_bytes
from .daskcluster import TwoHostDask
from .netns import can_make_netns

pytestmark = [pytest.mark.slow, pytest.mark.skipif(can_make_netns() is not None, reason=str(can_make_netns()))]

SECOND = [str(SAMPLE / "dolma-cc-main-2019-30.jsonl.gz")]


def _corpus(out: Path, inputs, *beam, published: Path | None = None):
    cmd = ["refresh", "--published", published] if published else ["corpus", "--config", DEMO_CONFIG]
    r = run_cli(*cmd, "--input", *inputs, "--output", out, "-q", *beam, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]


def test_corpus_and_refresh_on_a_two_host_dask_cluster(mini_crawl, mini_corpus, tmp_path):
    # the DirectRunner's: the session's mini corpus (a copy: a refresh locks what it reads), refreshed
    shutil.copytree(mini_corpus, tmp_path / "direct-v1")
    _corpus(tmp_path / "direct-v2", SECOND, published=tmp_path / "direct-v1")
    cluster = TwoHostDask()
    try:
        cluster.start()
        hosts = {addr.split("//")[1].rsplit(":", 1)[0] for addr in cluster.workers()}
        assert hosts == {cluster.link.host_ip, cluster.link.node_ip}
        dask = ["--runner", "apache_beam.runners.dask.dask_runner.DaskRunner", "--dask_client_address", cluster.address]
        _corpus(tmp_path / "dask-v1", [str(mini_crawl / "*")], *dask)
        _corpus(tmp_path / "dask-v2", SECOND, *dask, published=tmp_path / "dask-v1")
        executed = cluster.executed()
    finally:
        cluster.stop()
    assert len(executed) == 2 and all(n > 0 for n in executed.values()), executed  # both hosts worked
    assert tree_bytes(tmp_path / "dask-v1") == tree_bytes(mini_corpus)

    # a refresh's manifest and versions.json name the directories it read and wrote: the same once named alike
    def named_alike(runner: str) -> dict[str, bytes]:
        files = tree_bytes(tmp_path / f"{runner}-v2")
        for name in ("manifest.json", "versions.json"):
            text = files[name].decode()
            for v in ("v1", "v2"):
                text = text.replace(str(tmp_path / f"{runner}-{v}"), v.upper())
            files[name] = text.encode()
        return files

    refreshed = named_alike("dask")
    assert refreshed == named_alike("direct")
    assert b"exact_dedup:published_duplicate" in refreshed["manifest.json"]  # the overlap was found
