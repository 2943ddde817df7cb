"""The per-file work pool of the in-process runner (pipelines/workpool.py): when it is used, and
that a pipeline through it gets every output exactly once, on a real Beam runner."""

from __future__ import annotations

import json
import os
import uuid

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from gristmill.pipelines.workpool import PooledWorkFn, machine_cores, plan_local_workers


@pytest.mark.parametrize(
    ("args", "workers", "passed_on"),
    [
        ([], "cores", []),
        (["--runner", "DirectRunner"], "cores", ["--runner", "DirectRunner"]),
        (["--runner=FnApiRunner", "--direct_num_workers=3"], 3, ["--runner=FnApiRunner"]),
        (["--direct_num_workers", "1"], 1, []),
        (["--direct_num_workers", "0"], "cores", []),
        # Beam's own multi-process mode, or any other runner: no pool, the arguments untouched
        (["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"], 1,
         ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]),
        (["--runner", "DaskRunner", "--direct_num_workers", "4"], 1,
         ["--runner", "DaskRunner", "--direct_num_workers", "4"]),
        (["--runner", "apache_beam.runners.dataflow.DataflowRunner"], 1,
         ["--runner", "apache_beam.runners.dataflow.DataflowRunner"]),
    ],
)
def test_the_pool_is_for_the_in_process_runner_only(args, workers, passed_on):
    got_workers, got_args = plan_local_workers(args)
    assert got_workers == (machine_cores() if workers == "cores" else workers)
    assert got_args == passed_on


class _SquaresFn(PooledWorkFn):
    """Element n → its work file holds n, n², n³ (written by whichever process does the work)."""

    def __init__(self, work_dir: str, pool_workers: int):
        super().__init__(pool_workers)
        self.work_dir = work_dir

    def work_to_file(self, n):
        if n == -1:
            raise ValueError("element -1 is bad")
        path = os.path.join(self.work_dir, f"{n}.json")
        with open(path, "w") as f:
            json.dump({"values": [n, n * n, n * n * n], "pid": os.getpid()}, f)
        return path

    def replay(self, n, path):
        with open(path) as f:
            record = json.load(f)
        for v in record["values"]:
            yield n, v, record["pid"]


class _CollectFn(beam.DoFn):
    """Appends the outputs to a file per bundle (what the runner's process received)."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def start_bundle(self):
        self.rows = []

    def process(self, x):
        self.rows.append(list(x))

    def finish_bundle(self):
        with open(os.path.join(self.out_dir, f"{uuid.uuid4().hex}.json"), "w") as f:
            json.dump({"pid": os.getpid(), "rows": self.rows}, f)


def _run(elements, tmp_path, pool_workers):
    work_dir, out_dir = tmp_path / f"work{pool_workers}", tmp_path / f"out{pool_workers}"
    work_dir.mkdir()
    out_dir.mkdir()
    with beam.Pipeline(options=PipelineOptions(["--runner", "FnApiRunner"])) as p:
        (p | beam.Create(elements) | beam.Reshuffle() | beam.ParDo(_SquaresFn(str(work_dir), pool_workers))
         | beam.ParDo(_CollectFn(str(out_dir))))
    out = []
    for f in out_dir.iterdir():
        record = json.loads(f.read_text())
        assert record["pid"] == os.getpid()  # the outputs reach the runner's own process
        out += [tuple(r) for r in record["rows"]]
    return out


def test_every_output_once_whichever_process_did_the_work(tmp_path):
    elements = list(range(300))  # many quick elements: work finishing while outputs are collected
    one = _run(elements, tmp_path, 1)
    pooled = _run(elements, tmp_path, 3)
    assert sorted((n, v) for n, v, _ in pooled) == sorted((n, v) for n, v, _ in one) == sorted(
        (n, v) for n in elements for v in (n, n * n, n * n * n))
    assert {pid for *_, pid in one} == {os.getpid()}  # one process: the work in the runner's own
    assert os.getpid() not in {pid for *_, pid in pooled} and len({pid for *_, pid in pooled}) >= 2


def test_an_error_in_a_child_fails_the_pipeline_with_its_message(tmp_path):
    with pytest.raises(Exception, match="element -1 is bad"):
        _run([1, 2, -1, 3], tmp_path, 2)


class _FinishesWhenLookedAt:
    """A future that is not done at the first look and done at every later one: work that ends
    while the finished futures are being picked out."""

    def __init__(self, path):
        self.path, self.looks = path, 0

    def done(self):
        self.looks += 1
        return self.looks > 1

    def result(self):
        return self.path


def test_work_finishing_while_outputs_are_collected_is_not_lost(tmp_path):
    fn = _SquaresFn(str(tmp_path), 2)
    fn.start_bundle()
    fn._pending = [(n, _FinishesWhenLookedAt(fn.work_to_file(n))) for n in (2, 3)]
    assert list(fn._done(block=False)) == []  # not done yet: still pending, not dropped
    assert sorted(v for _, v, _ in fn._done(block=False)) == [2, 3, 4, 8, 9, 27]
    assert fn._pending == []
