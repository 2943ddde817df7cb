"""Shared fixtures. Real data: the bundled sample (sample/crawl) and ../shared/data next to the repo."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# make test runs two pytest workers on two cores: PyTorch's OpenMP threads (one per core in every process)
# then outnumber the cores and spin while they wait, turning a second of a small model's work into ten. One
# thread per process (set before torch is imported; the commands the tests start inherit it).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample" / "crawl"
SAMPLE_GLOB = str(SAMPLE / "*")
SHARED = Path(os.environ.get("GRISTMILL_SHARED_DATA", REPO.parent / "shared" / "data"))
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
#: the console script of the environment running the tests
GRISTMILL = str(Path(sys.executable).parent / "gristmill")


def cli_env() -> dict:
    """The environment for a command a test runs: no RAY_ADDRESS (each test's Ray is its own)."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    return env


def run_cli(*args, cwd=REPO, timeout: int = 300, check: bool = False, env: dict | None = None,
            process: bool = False) -> subprocess.CompletedProcess:
    """Run ``gristmill ARGS``: its exit code, standard output and error. In this process (``gristmill.cli.main``
    with its output captured) unless ``process`` or ``env`` is given: the command line's own code, without
    an interpreter's start and imports (seconds of CPU per call). What only a process shows (the console
    script, signals, a lock held by another process, Ray) is tested in processes. With ``check``, fail the
    test (showing the output's end) unless it exits 0."""
    if process or env is not None:
        r = subprocess.run([GRISTMILL, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                           env=env or cli_env())
    else:
        r = _cli_in_this_process([str(a) for a in args], cwd)
    if check:
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return r


def _cli_in_this_process(args: list[str], cwd) -> subprocess.CompletedProcess:
    import contextlib
    import io
    import logging
    import traceback

    from gristmill.cli import main

    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level, os.getcwd()  # the CLI sets up logging for itself: restored after
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(args)
            except SystemExit as e:  # argparse's errors and --help, as the interpreter would end
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
                code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
            except Exception:  # noqa: BLE001 - what the interpreter prints and returns for an uncaught error
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(saved[2])
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    return subprocess.CompletedProcess(["gristmill", *args], code, out.getvalue(), err.getvalue())


def run_cli_and_kill_when(args: list, ready, timeout: int = 300) -> None:
    """Start ``gristmill ARGS`` in its own process group, wait until ``ready()`` holds, then SIGKILL the
    group (the command and anything it started): a crash at a known point of a run."""
    proc = subprocess.Popen([GRISTMILL, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=cli_env(), start_new_session=True)
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    kill_process_group(proc)


def kill_process_group(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGKILL ``proc``'s process group and wait until every member is gone, not only ``proc``: a forked
    worker still dying holds the output's lock (its inherited flock) for a moment after the leader's exit."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=timeout)
    deadline = time.time() + timeout
    while _live_members(proc.pid):
        assert time.time() < deadline, f"process group {proc.pid} still alive {timeout} s after SIGKILL"
        time.sleep(0.01)


def signal_stopped(proc: subprocess.Popen, sig: int, to_group: bool = False) -> None:
    """Send ``sig`` to ``proc`` (or its whole process group, as a terminal's Ctrl-C does) with the group
    stopped meanwhile (SIGSTOP, the signal, SIGCONT): a run near its end cannot finish between the state a
    test waited for and the signal, which is delivered when the group continues."""
    os.killpg(proc.pid, signal.SIGSTOP)
    if to_group:
        os.killpg(proc.pid, sig)
    else:
        os.kill(proc.pid, sig)
    os.killpg(proc.pid, signal.SIGCONT)


@contextlib.contextmanager
def busy_machine(processes: int | None = None):
    """Every core kept busy by a CPU-burning process for the block (issue 33: some of Ray's harmless error
    lines appear only under load, so a quiet machine would never show them)."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
               for _ in range(processes or os.cpu_count() or 1)]
    try:
        yield
    finally:
        for b in burners:
            b.kill()
            b.wait()


def group_left_behind(pgid: int, timeout: float = 60) -> list[int]:
    """The members of process group ``pgid`` still alive ``timeout`` seconds after its leader exited (none:
    []). Pool workers die with their parent (PR_SET_PDEATHSIG) a moment after it, not at the same instant."""
    deadline = time.time() + timeout
    while (left := _live_members(pgid)) and time.time() < deadline:
        time.sleep(0.01)
    return left


def _live_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that have not exited. A process has exited when every one of its threads
    has: a multi-threaded process's leader shows as a zombie while its other threads are still exiting, and
    until the last of them has, the process's files (an inherited flock among them) are still open."""
    live = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()  # after the name: state, ppid, pgrp
            if int(fields[2]) != pgid:
                continue
            states = [(t / "stat").read_text().rsplit(")", 1)[1].split()[0] for t in (d / "task").iterdir()]
        except (OSError, IndexError):
            continue
        if any(state not in "ZX" for state in states):
            live.append(int(d.name))
    return live


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``make test``: ``--dist loadscope --no-loadscope-reorder``) a module is the unit a
    worker takes, so that its module-scoped fixtures are built once; the modules with the longest tests go
    first (longest-processing-time-first: a long module handed out last keeps one worker busy while the other
    has nothing left). A test that should run beside its module's other tests lives in a module of its own
    (test_trainer_kill.py, test_ray_job_submit.py). (pytest-xdist's ``loadgroup`` does not group under pytest 9:
    it renames node ids through an attribute pytest 9 no longer reads.)"""
    if hasattr(config, "workerinput"):  # an xdist worker: every worker sorts alike, so their collections agree
        rank = {m: i for i, m in enumerate(LONGEST_MODULES)}
        items.sort(key=lambda item: rank.get(item.module.__name__.rsplit(".", 1)[-1], len(rank)))


#: test modules by their time in a fresh-clone run (docs/development.md: `.ci/durations.py`), longest first
LONGEST_MODULES = ("test_trainer_e2e", "test_ablate", "test_ray_job_submit", "test_trainer_kill", "test_object_store",
                   "test_near_dedup", "test_mlm_e2e", "test_ops_refresh", "test_dask_cluster", "test_corpus_e2e",
                   "test_parquet_output", "test_docs", "test_langid_auto", "test_speedrun_e2e", "test_decontaminate",
                   "test_wheel", "test_package")


def shared(rel: str) -> Path:
    p = SHARED / rel
    if not p.exists():
        pytest.skip(f"shared data not found: {p} (set GRISTMILL_SHARED_DATA)")
    return p


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def default_cfg():
    from gristmill.config import GristmillConfig

    return GristmillConfig()


# --- expensive setup, built once per session and only read by the tests ---------------------------------
# With pytest-xdist the workers of one session share it: the first to need a fixture builds it under a file
# lock, the others wait and reuse it. A test that writes (a fine-tuning run, an export) writes under its own
# tmp_path; one that must change a directory copies it first.


def built_once(tmp_path_factory, name: str, build) -> Path:
    """``build(path)`` run once per test session (across xdist workers) for ``path``; returns ``path``."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's directory, above each worker's own
    path, done = base / "shared" / name, base / "shared" / f"{name}.done"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(base / "shared" / f"{name}.lock")):
        if not done.exists():
            if path.exists():
                import shutil

                shutil.rmtree(path)  # a half-built one (its builder failed): build again
            build(path)
            done.touch()
    return path


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file of an output but run.json (when and where the run ran), the manifest and report
    without their timings (what differs between two runs of the same input and config)."""
    from gristmill.pipelines.report import without_timings

    return {str(p.relative_to(root)): without_timings(p.name, p.read_bytes()) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "run.json"}


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> Path:
    """The sample crawl through the corpus pipeline with the demo config (shared by the tokenizer and trainer tests)."""
    def build(out: Path) -> None:
        import json

        from gristmill.config import load_config
        from gristmill.pipelines.corpus import run_corpus

        result = run_corpus([str(SAMPLE / "*")], str(out), load_config(DEMO_CONFIG), ["--runner", "DirectRunner"],
                            progress=False)
        # the manifest on disk is what run_corpus returned
        assert json.loads((out / "manifest.json").read_text()) == result.manifest

    return built_once(tmp_path_factory, "demo_corpus", build)


#: the mini crawl's share of the sample's larger files: OSCAR's documents in these languages (their
#: "original" and "deduplicated" variants hold exact and near duplicates), Dolma's first documents
MINI_OSCAR_LANGS = {"ba", "be", "hi", "uk", "vi", "zh", "en", "de", "fr", "ru"}
MINI_DOLMA_DOCS = 80


def write_mini_crawl(out: Path) -> Path:
    """Every file of the sample crawl, the two large ones cut down (181 documents instead of 1,407): every
    reader format (WARC, WET, wget WARC, JSONL .gz and .zst, Parquet) and every dedup path (exact duplicates,
    near-duplicate clusters) for the tests that compare runs byte for byte."""
    import gzip
    import json
    import shutil

    import zstandard

    out.mkdir(parents=True, exist_ok=True)
    for src in sorted(SAMPLE.iterdir()):
        if src.name.startswith("dolma"):
            with gzip.open(src, "rt", encoding="utf-8") as f:
                lines = [next(f) for _ in range(MINI_DOLMA_DOCS)]
            with gzip.open(out / src.name, "wt", encoding="utf-8") as f:
                f.writelines(lines)
        elif src.name.startswith("oscar"):
            with open(src, "rb") as f:
                text = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read().decode()
            lines = [x for x in text.split("\n") if x and json.loads(x)["lang"] in MINI_OSCAR_LANGS]
            (out / src.name).write_bytes(zstandard.ZstdCompressor().compress(("\n".join(lines) + "\n").encode()))
        else:
            shutil.copy(src, out / src.name)
    return out


@pytest.fixture(scope="session")
def mini_crawl(tmp_path_factory) -> Path:
    """The directory of :func:`write_mini_crawl`'s files (only read by the tests)."""
    return built_once(tmp_path_factory, "mini_crawl", write_mini_crawl)


@pytest.fixture(scope="session")
def mini_corpus(mini_crawl, tmp_path_factory) -> Path:
    """The mini crawl through the corpus pipeline with the demo config: the reference of the byte-identity tests."""
    def build(out: Path) -> None:
        from gristmill.config import load_config
        from gristmill.pipelines.corpus import run_corpus

        run_corpus([str(mini_crawl / "*")], str(out), load_config(DEMO_CONFIG), ["--runner", "DirectRunner"],
                   progress=False)

    return built_once(tmp_path_factory, "mini_corpus", build)


@pytest.fixture(scope="session")
def demo_tokenizer(demo_corpus, tmp_path_factory) -> Path:
    def build(out: Path) -> None:
        from gristmill.config import load_config
        from gristmill.tokenizer.train import train_tokenizer

        train_tokenizer(str(demo_corpus), str(out), load_config(DEMO_CONFIG).tokenizer)

    return built_once(tmp_path_factory, "demo_tokenizer", build)


@pytest.fixture(scope="session")
def demo_tokens64(demo_corpus, demo_tokenizer, tmp_path_factory) -> Path:
    """The demo corpus as token shards of 64 + 1 tokens (quick to train on)."""
    def build(out: Path) -> None:
        from gristmill.config import load_config
        from gristmill.pipelines.tokenize import run_tokenize

        cfg = load_config(DEMO_CONFIG, ["tokenize.seq_len=64"]).tokenize
        run_tokenize(str(demo_corpus), str(demo_tokenizer), str(out), cfg, ["--runner", "DirectRunner"])

    return built_once(tmp_path_factory, "demo_tokens64", build)


@pytest.fixture(scope="session")
def pretrained_run(demo_tokens64, tmp_path_factory) -> Path:
    """The run directory of a small causal GPT pretrained for 40 steps on the demo tokens in this process
    (Ray Train's local mode; the config of tests.training.small_pretrain): the reference the resume tests
    compare with, and the start of the fine-tuning, evaluation and export tests."""
    def build(root: Path) -> None:
        from gristmill import api

        from . import training

        root.mkdir()
        cfg = training.write_config(root / "pretrain.yaml",
                                    training.small_pretrain(root, "whole", data=str(demo_tokens64)))
        assert api.pretrain(training.load(cfg)).checkpoint.name == "checkpoint_00000040"

    return built_once(tmp_path_factory, "pretrained", build) / "runs" / "whole"


@pytest.fixture(scope="session")
def pretrained(pretrained_run) -> Path:
    """The final checkpoint (step 40) of :func:`pretrained_run`."""
    return pretrained_run / "checkpoint_00000040"


@pytest.fixture(scope="session")
def mixture_sources(demo_tokens64, tmp_path_factory) -> tuple[Path, Path]:
    """Two token directories with one tokenizer: the demo tokens, and a copy standing for a second source."""
    import shutil

    books = built_once(tmp_path_factory, "mixture_books", lambda out: shutil.copytree(demo_tokens64, out))
    return Path(demo_tokens64), books


def mixture_tree(root: Path, sources, name: str, caps=(None, None), steps: int = 40, **pretrain) -> dict:
    """A small run (tests.training.small_pretrain) on a 0.75 / 0.25 mixture of the two sources."""
    from . import training

    web, books = sources
    mixture = [{"name": "web", "data": str(web), "weight": 0.75, "max_epochs": caps[0]},
               {"name": "books", "data": str(books), "weight": 0.25, "max_epochs": caps[1]}]
    return training.small_pretrain(root, name, mixture=mixture, max_steps=steps, **pretrain)


@pytest.fixture(scope="session")
def mixture_run(mixture_sources, tmp_path_factory) -> Path:
    """The run directory of the small model trained 40 steps on the mixture, in this process."""
    def build(root: Path) -> None:
        from gristmill import api

        from . import training

        root.mkdir()
        cfg = training.write_config(root / "mixture.yaml", mixture_tree(root, mixture_sources, "whole"))
        api.pretrain(training.load(cfg))

    return built_once(tmp_path_factory, "mixture", build) / "runs" / "whole"

