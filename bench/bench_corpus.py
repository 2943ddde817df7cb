"""Benchmark: the whole ``gristmill corpus`` job against a datatrove pipeline doing the same work.

Both engines read the same JSONL shards (the shared web sample replicated and perturbed exactly as
bench_clean.py builds it, written once under bench/work/corpus/) and run, one engine after the other
in one invocation, so that load from other processes hits both alike:

* datatrove 0.10.1 (in bench/.venv-bench; this script re-runs itself there with --datatrove-child),
  ``LocalPipelineExecutor`` with workers = tasks = N:
    1. JsonlReader -> LanguageFilter (lid.176.ftz, bench_clean.make_datatrove's offline adapters)
       -> GopherRepetitionFilter -> GopherQualityFilter -> C4QualityFilter(filter_no_terminal_punct=False)
       -> FineWebQualityFilter (FineWeb's recipe; the last three on English only, as FineWeb ran them:
       datatrove's rules need a word tokenizer per language) -> JsonlWriter(filtered/)
       -> MinhashDedupSignature
    2. MinhashDedupBuckets (tasks = num_buckets, workers = N)
    3. MinhashDedupCluster (1 task)
    4. JsonlReader(filtered/) -> MinhashDedupFilter -> JsonlWriter(output/)
  as datatrove's examples/minhash_deduplication.py chains them. The MinHash parameters follow
  gristmill's near_dedup defaults: n-grams = near_dedup.ngram (5), buckets x hashes per bucket =
  the (bands, rows) gristmill derives from near_dedup.threshold/num_perm (23 x 11 for 0.8/256).
* gristmill: ``.venv/bin/gristmill corpus --input 'SHARDS/*.jsonl.gz' --output DIR`` with its
  defaults, and as separate rows ``--direct_num_workers 1 --direct_running_mode in_memory`` (in-process)
  and ``--direct_num_workers N --direct_running_mode multi_processing``. Only the CLI, its stderr phase
  lines and OUTPUT/manifest.json are used.

Measured per run: wall (process start to exit, as the parent sees it), CPU seconds of the whole
process tree, idle core-seconds = wall x cores - CPU (cores = the run's workers, and the machine's
cores), and the same per phase. The process tree's CPU (user + system of every live descendant plus
what their exited, reaped children used: psutil, else /proc) is sampled every --sample-interval
seconds; the total is the larger of the last sample and the parent's RUSAGE_CHILDREN delta once the
run is reaped (the latter misses what datatrove's forkserver workers used). Phase boundaries are the
moments the phase lines appear on the run's output: gristmill's (pipelines/progress.py and
pipelines/corpus.py: "read + clean: N input files" starts reading, "<phase>: ... X s ...; <next>"
starts <next> (dedup, clustering, writing shards), a last "<phase>: X s" ends the work; what follows
until exit is "finish"), and datatrove's stage markers this script prints around each executor's
run(); before the first boundary is "startup" (interpreter, imports, planning).

Examples::

    .venv/bin/python bench/bench_corpus.py --docs 2000                    # smoke test, ~3-5 min
    .venv/bin/python bench/bench_corpus.py --json bench/results/corpus_vs_datatrove.json
    .venv/bin/python bench/bench_corpus.py --runs dt2,gm,gm2 --rounds 2   # 2-worker rows only, twice

Run names (--runs, in the order given, repeated --rounds times): ``dtN`` datatrove with N workers;
``gm`` gristmill defaults; ``gm1`` gristmill in-process; ``gmN`` (N > 1) gristmill multi-process with N
workers.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

_ENV0 = dict(os.environ)  # before anything sets thread counts: what the runs inherit
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "work" / "corpus"
DEFAULT_RUNS = "dt2,gm,gm2,dt1,gm1"
PHASE_MARK = "BENCH_PHASE"
RESULT_MARK = "BENCH_RESULT"


def machine_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------
# Input: bench_clean.py's documents, written once as K JSONL shards
# ---------------------------------------------------------------------------------------------


def build_input(n: int, seed: int, shards: int) -> Path:
    """bench/work/corpus/input_n{n}_s{seed}_k{shards}/part-XX.jsonl.gz, documents dealt round-robin
    (id and text only). Built once; ``meta.json`` marks a complete set."""
    out = WORK / f"input_n{n}_s{seed}_k{shards}"
    meta = out / "meta.json"
    if meta.is_file():
        return out
    sys.path.insert(0, str(HERE))
    import bench_clean  # noqa: PLC0415  (imports gristmill; only needed to build the set)

    t0 = time.perf_counter()
    docs = bench_clean.cached_docs(n, seed)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    files = [gzip.open(out / f"part-{i:02d}.jsonl.gz", "wt", encoding="utf-8", compresslevel=6) for i in range(shards)]
    try:
        for i, d in enumerate(docs):
            files[i % shards].write(json.dumps({"id": d["id"], "text": d["text"]}, ensure_ascii=False) + "\n")
    finally:
        for f in files:
            f.close()
    info = {"docs": len(docs), "chars": sum(len(d["text"]) for d in docs), "seed": seed, "shards": shards,
            "built_s": round(time.perf_counter() - t0, 1)}
    meta.write_text(json.dumps(info) + "\n")
    return out


# ---------------------------------------------------------------------------------------------
# CPU of a process tree
# ---------------------------------------------------------------------------------------------

try:
    import psutil
except ImportError:  # /proc fallback below
    psutil = None

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _tree_cpu_psutil(pid: int) -> tuple[float, int]:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0, 0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total, len(procs)


def _tree_cpu_proc(pid: int) -> tuple[float, int]:
    stats: dict[int, tuple[int, float]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                raw = f.read().decode("ascii", "replace")
        except OSError:
            continue
        rest = raw[raw.rfind(")") + 2 :].split()  # fields from 3 (state) on
        ppid = int(rest[1])
        utime, stime, cutime, cstime = (int(x) for x in rest[11:15])
        stats[int(name)] = (ppid, (utime + stime + cutime + cstime) / _TICK)
    tree, frontier = set(), [pid] if pid in stats else []
    while frontier:
        p = frontier.pop()
        tree.add(p)
        frontier.extend(c for c, (pp, _) in stats.items() if pp == p and c not in tree)
    return sum(stats[p][1] for p in tree), len(tree)


tree_cpu = _tree_cpu_psutil if psutil is not None else _tree_cpu_proc


class Sampler:
    """(seconds since start, cumulative CPU seconds, processes) of a process tree, every interval."""

    def __init__(self, pid: int, t0: float, interval: float):
        self.pid, self.t0, self.interval = pid, t0, interval
        self.samples: list[tuple[float, float, int]] = [(0.0, 0.0, 1)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        best = 0.0
        while not self._stop.wait(self.interval):
            cpu, n = tree_cpu(self.pid)
            if n:
                best = max(best, cpu)  # monotonic: a process caught between exit and reaping
                self.samples.append((time.monotonic() - self.t0, best, n))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def cpu_at(samples: list[tuple[float, float, int]], t: float) -> float:
    """Cumulative CPU at time t, linear between samples."""
    prev = samples[0]
    for s in samples[1:]:
        if s[0] >= t:
            span = s[0] - prev[0]
            return prev[1] + (s[1] - prev[1]) * ((t - prev[0]) / span if span > 0 else 1.0)
        prev = s
    return prev[1]


# ---------------------------------------------------------------------------------------------
# Running one measured command
# ---------------------------------------------------------------------------------------------


def run_measured(cmd: list[str], log_path: Path, on_line, timeout: float, interval: float, env: dict) -> dict:
    """Run cmd; on_line(stream, seconds_since_start, line) for every output line (also logged)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            encoding="utf-8", errors="replace", bufsize=1)
    lock = threading.Lock()
    tails: dict[str, list[str]] = {"stdout": [], "stderr": []}
    with open(log_path, "w", encoding="utf-8") as log:

        def pump(stream, name):
            for line in stream:
                t = time.monotonic() - t0
                with lock:
                    log.write(f"[{t:8.2f} {name}] {line}")
                    tails[name] = (tails[name] + [line.rstrip("\n")])[-40:]
                on_line(name, t, line.rstrip("\n"))

        pumps = [threading.Thread(target=pump, args=(proc.stdout, "stdout"), daemon=True),
                 threading.Thread(target=pump, args=(proc.stderr, "stderr"), daemon=True)]
        for p in pumps:
            p.start()
        timed_out = False
        with Sampler(proc.pid, t0, interval) as sampler:
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                proc.kill()
                rc = proc.wait()
            wall = time.monotonic() - t0
        for p in pumps:
            p.join(timeout=10)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_rusage = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    samples = sampler.samples
    cpu_sampled = samples[-1][1]
    cpu = max(cpu_rusage, cpu_sampled)
    samples.append((wall, cpu, 0))
    return {
        "cmd": cmd,
        "rc": rc,
        "timed_out": timed_out,
        "wall_s": wall,
        "cpu_s": cpu,
        "cpu_rusage_s": cpu_rusage,
        "cpu_sampled_s": cpu_sampled,
        "max_processes": max(s[2] for s in samples),
        "samples": samples,
        "log": str(log_path.relative_to(REPO)) if log_path.is_relative_to(REPO) else str(log_path),
        "stderr_tail": tails["stderr"][-15:],
    }


def phases_from(boundaries: list[tuple[str, float]], res: dict, cores: dict[str, int]) -> list[dict]:
    """Phases from (name of the phase that starts, time) boundaries; the first phase ("startup")
    starts at 0, the last ends at exit. Each: wall, CPU, idle core-seconds per core count."""
    wall, samples = res["wall_s"], res["samples"]
    marks = [("startup", 0.0)] + sorted(boundaries, key=lambda b: b[1])
    out = []
    for i, (name, start) in enumerate(marks):
        end = marks[i + 1][1] if i + 1 < len(marks) else wall
        end = min(max(end, start), wall)
        cpu = cpu_at(samples, end) - cpu_at(samples, start)
        ph = {"phase": name, "start_s": round(start, 2), "wall_s": round(end - start, 2), "cpu_s": round(cpu, 2)}
        for label, k in cores.items():
            ph[f"idle_core_s_{label}"] = round((end - start) * k - cpu, 2)
        out.append(ph)
    return out


def summarize(res: dict, cores: dict[str, int]) -> None:
    for label, k in cores.items():
        res[f"idle_core_s_{label}"] = round(res["wall_s"] * k - res["cpu_s"], 2)
        res[f"cores_{label}"] = k
    for key in ("wall_s", "cpu_s", "cpu_rusage_s", "cpu_sampled_s"):
        res[key] = round(res[key], 2)


# ---------------------------------------------------------------------------------------------
# gristmill side
# ---------------------------------------------------------------------------------------------

# gristmill's phase lines (pipelines/progress.py, pipelines/corpus.py), parsed generically so that
# a renamed or added phase still splits the run: "read + clean: N input files" starts reading;
# "<phase>: ... X s ...; <next phase>" ends <phase> and starts <next phase>; a last "<phase>: X s"
# (no "; next") ends the job's work, and what follows until exit is "finish" (manifest, report).
GM_READ_START = re.compile(r"read \+ clean: \d+ input files$")
GM_NEXT = re.compile(r"(?:^|: )(?P<cur>[a-z][a-z +-]*): (?P<body>.*?[\d.]+ s\b.*?); (?P<next>[a-z][a-z +-]*)$")
GM_END = re.compile(r"(?:^|: )(?P<cur>[a-z][a-z +-]*): (?P<secs>[\d.]+) s$")
GM_SECS = re.compile(r"(?:^|in )(?P<secs>[\d.]+) s\b")
GM_ROUND = re.compile(r"near-dedup clustering: round (?P<round>\d+) changed")
GM_PROCS = re.compile(r"(?:reading and cleaning|running) on (?P<n>\d+) processes")
GM_PHASE_NAMES = {"deduplicating": "dedup", "writing shards": "write", "read + clean": "read+clean",
                  "dedup + write": "dedup+write"}


def _gm_phase(name: str) -> str:
    return GM_PHASE_NAMES.get(name.strip(), name.strip())


def gm_options(workers: int | None) -> list[str]:
    if workers is None:
        return []
    if workers == 1:
        return ["--direct_num_workers", "1", "--direct_running_mode", "in_memory"]
    return ["--direct_num_workers", str(workers), "--direct_running_mode", "multi_processing"]


def run_gristmill(args, name: str, workers: int | None, input_dir: Path, tag: str, cores: int) -> dict:
    out = WORK / "out" / f"{name}"
    if out.exists():
        shutil.rmtree(out)
    cmd = [str(args.gristmill), "corpus", "--input", str(input_dir / "*.jsonl.gz"), "--output", str(out),
           *gm_options(workers), *shlex.split(args.gm_extra)]
    boundaries: list[tuple[str, float]] = []
    reported: dict = {}
    seen: set[str] = set()

    def mark(phase, t):
        if phase not in seen:
            seen.add(phase)
            boundaries.append((phase, t))

    def on_line(stream, t, line):
        if stream != "stderr":
            return
        line = line.rstrip()
        if GM_READ_START.search(line):
            mark("read+clean", t)
        elif m := GM_NEXT.search(line):
            secs = GM_SECS.search(m.group("body"))
            if secs:
                reported[_gm_phase(m.group("cur"))] = float(secs.group("secs"))
            mark(_gm_phase(m.group("next")), t)
        elif m := GM_END.search(line):
            reported[_gm_phase(m.group("cur"))] = float(m.group("secs"))
            if _gm_phase(m.group("cur")) == "dedup+write" and "dedup" in seen:  # no separate write line
                boundaries[:] = [("dedup+write" if b == "dedup" else b, bt) for b, bt in boundaries]
            mark("finish", t)
        elif m := GM_ROUND.search(line):
            reported["clustering_rounds"] = int(m.group("round"))
        elif m := GM_PROCS.search(line):
            reported.setdefault("processes", int(m.group("n")))

    env = dict(_ENV0, PYTHONUNBUFFERED="1")
    res = run_measured(cmd, WORK / "logs" / f"{tag}.log", on_line, args.timeout, args.sample_interval, env)
    eff = workers or reported.get("processes") or cores  # defaults: the processes gristmill says it uses
    k = {"workers": eff, "machine": cores}
    how = "the processes gristmill logged" if reported.get("processes") else "the machine's cores"
    res.update(engine="gristmill", run=name, workers=workers,
               workers_note=None if workers else f"defaults: idle/w counted on {eff} cores ({how})")
    res["phases"] = phases_from(boundaries, res, k) if boundaries else []
    res["phases_reported_by_gristmill_s"] = reported
    summarize(res, k)
    manifest = out / "manifest.json"
    if res["rc"] == 0 and manifest.is_file():
        m = json.loads(manifest.read_text())
        c = m.get("counts", {})
        dropped = c.get("dropped", {})
        by_stage: dict[str, int] = {}
        for reason, n in dropped.items():
            by_stage[reason.split(":")[0]] = by_stage.get(reason.split(":")[0], 0) + n
        nd = m.get("near_dedup") or {}
        res["counts"] = {
            "read": c.get("read"),
            "kept": c.get("kept"),
            "dropped": dropped,
            "dropped_by_stage": by_stage,
            "near_dedup_removed": nd.get("duplicates_removed", by_stage.get("near_dedup")),
            "near_dedup_clusters": nd.get("clusters"),
            "near_dedup_bands_rows": [nd.get("bands"), nd.get("rows")],
            "exact_dedup_removed": by_stage.get("exact_dedup", 0),
        }
        cnt = res["counts"]
        cnt["dedup_removed"] = (cnt["near_dedup_removed"] or 0) + cnt["exact_dedup_removed"]
    elif res["rc"] == 0:
        res["error"] = f"no manifest at {manifest}"
    return res


# ---------------------------------------------------------------------------------------------
# datatrove side (parent)
# ---------------------------------------------------------------------------------------------


def run_datatrove(args, name: str, workers: int, input_dir: Path, tag: str, cores: int, lsh: dict) -> dict:
    out = WORK / "out" / name
    if out.exists():  # datatrove skips completed tasks: always start from nothing
        shutil.rmtree(out)
    cmd = [str(args.dt_python), str(Path(__file__).resolve()), "--datatrove-child", "--input-dir", str(input_dir),
           "--dt-work", str(out), "--workers", str(workers), "--ngram", str(lsh["ngram"]),
           "--buckets", str(lsh["buckets"]), "--hashes", str(lsh["hashes"]),
           "--quality-languages", ",".join(lsh["quality_languages"])]
    boundaries: list[tuple[str, float]] = []
    result: dict = {}

    def on_line(stream, t, line):
        if stream != "stdout":
            return
        if line.startswith(PHASE_MARK):
            _, what, phase = line.split(maxsplit=2)
            boundaries.append((phase if what == "start" else "finish" if what == "end" else what, t))
        elif line.startswith(RESULT_MARK):
            result.update(json.loads(line[len(RESULT_MARK):]))

    env = dict(_ENV0, PYTHONUNBUFFERED="1")
    res = run_measured(cmd, WORK / "logs" / f"{tag}.log", on_line, args.timeout, args.sample_interval, env)
    # an "end" right before the next "start" is the same moment: keep only the starts and the last end
    starts = [b for b in boundaries if b[0] != "finish"]
    ends = [b for b in boundaries if b[0] == "finish"]
    marks = starts + ends[-1:]
    k = {"workers": workers, "machine": cores}
    res.update(engine="datatrove", run=name, workers=workers)
    res["phases"] = phases_from(marks, res, k) if marks else []
    summarize(res, k)
    if result:
        res["child"] = result
        res["counts"] = result.get("counts")
        res["versions"] = result.get("versions")
    elif res["rc"] == 0:
        res["error"] = "the datatrove child printed no result"
    return res


# ---------------------------------------------------------------------------------------------
# datatrove side (child, in bench/.venv-bench)
# ---------------------------------------------------------------------------------------------


def _ascii(name: str) -> str:
    return " ".join(re.sub(r"[^\x20-\x7e]", " ", name).replace(" - ", " ").split())


def _total(v) -> int:
    return int(v.get("total", 0)) if isinstance(v, dict) else int(v or 0)


def _xxh64_utf8(s):
    import xxhash

    return xxhash.xxh64_intdigest(s.encode("utf-8"))


def utf8_minhash_signature():
    """datatrove's MinhashDedupSignature hashing n-grams as UTF-8 bytes: datatrove 0.10.1 hashes *str*s with
    xxhash, which xxhash >= 4 refuses ("Strings must be encoded before hashing"); bytes are what xxhash < 4
    hashed. A function: datatrove is importable only in bench/.venv-bench."""
    from datatrove.pipeline.dedup import MinhashDedupSignature

    class Utf8MinhashDedupSignature(MinhashDedupSignature):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            try:
                self._hash_func("probe")
            except TypeError:
                self._hash_func = _xxh64_utf8

    return Utf8MinhashDedupSignature


def datatrove_child(args) -> int:
    sys.path.insert(0, str(HERE))
    import logging

    import bench_clean
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.filters import C4QualityFilter, FineWebQualityFilter, GopherQualityFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    from gristmill.pipelines.langid import default_model_path

    logging.disable(logging.WARNING)
    quality_langs = set(filter(None, args.quality_languages.split(",")))

    def scoped(base, label):
        """A datatrove filter on the languages gristmill's clean.gopher_quality applies to (LanguageFilter
        has set doc.metadata["language"]) when that is not every language (datatrove's English rules need
        a word tokenizer per language, FineWeb ran them on English only); other documents pass."""

        class Scoped(base):
            name = f"{base.name} (scoped)"

            def __init__(self, languages, **kwargs):
                super().__init__(**kwargs)
                self.scope = set(languages)

            def filter(self, doc):
                if "*" not in self.scope and doc.metadata.get("language") not in self.scope:
                    return True
                return super().filter(doc)

        Scoped.__name__ = f"Scoped{label}"
        return Scoped

    ScopedGopherQualityFilter = scoped(GopherQualityFilter, "GopherQuality")
    ScopedC4QualityFilter = scoped(C4QualityFilter, "C4Quality")
    ScopedFineWebQualityFilter = scoped(FineWebQualityFilter, "FineWebQuality")

    Utf8MinhashDedupSignature = utf8_minhash_signature()

    w = args.workers
    base = Path(args.dt_work)
    _, _, repetition, language, _, _ = bench_clean.make_datatrove(default_model_path())
    mh = MinhashConfig(n_grams=args.ngram, num_buckets=args.buckets, hashes_per_bucket=args.hashes,
                       hash_config=HashConfig(precision=64))
    filtered, sigs, buckets, remove = (str(base / d) for d in ("filtered", "signatures", "buckets", "remove_ids"))
    stages = [
        ("filter+signature", LocalPipelineExecutor(
            [JsonlReader(str(args.input_dir), glob_pattern="*.jsonl.gz"), language, repetition,
             ScopedGopherQualityFilter(quality_langs),
             # FineWeb's recipe: C4 without the terminal-punctuation line rule, then FineWeb's quality filter
             ScopedC4QualityFilter(quality_langs, filter_no_terminal_punct=False),
             ScopedFineWebQualityFilter(quality_langs), JsonlWriter(filtered),
             Utf8MinhashDedupSignature(output_folder=sigs, config=mh)],
            tasks=w, workers=w, logging_dir=str(base / "logs" / "1"))),
        ("buckets", LocalPipelineExecutor(
            [MinhashDedupBuckets(input_folder=sigs, output_folder=buckets, config=mh)],
            tasks=mh.num_buckets, workers=w, logging_dir=str(base / "logs" / "2"))),
        ("cluster", LocalPipelineExecutor(
            [MinhashDedupCluster(input_folder=buckets, output_folder=remove, config=mh)],
            tasks=1, workers=1, logging_dir=str(base / "logs" / "3"))),
        ("dedup-filter+write", LocalPipelineExecutor(
            [JsonlReader(filtered, glob_pattern="*.jsonl.gz"), MinhashDedupFilter(input_folder=remove),
             JsonlWriter(str(base / "output"))],
            tasks=w, workers=w, logging_dir=str(base / "logs" / "4"))),
    ]
    timings, step_stats = {}, {}
    for name, ex in stages:
        print(f"{PHASE_MARK} start {name}", flush=True)
        t0 = time.perf_counter()
        st = ex.run()
        timings[name] = round(time.perf_counter() - t0, 2)
        print(f"{PHASE_MARK} end {name}", flush=True)
        step_stats[name] = json.loads(st.to_json()) if st is not None else []

    def step(stage, prefix):
        for s in step_stats.get(stage, []):
            if s["name"].split(" ", 1)[-1].startswith(prefix) or prefix in s["name"]:
                return s
        return {"stats": {}, "time_stats": {}}

    s1 = step_stats["filter+signature"]
    read = _total(s1[0]["stats"].get("documents")) if s1 else None
    dropped = {}
    for s, key in zip(s1[1:6], ("langid", "gopher_repetition", "gopher_quality", "c4_lines", "fineweb_quality")):
        dropped[key] = _total(s["stats"].get("dropped"))
    after_filters = _total(step("filter+signature", "MinHash stage 1")["stats"].get("total"))
    dd = step("dedup-filter+write", "MinHash stage 4")["stats"]
    from importlib.metadata import version

    result = {
        "stage_s": timings,
        "counts": {
            "read": read,
            "dropped_by_filter": dropped,
            "after_filters": after_filters,
            "near_dedup_removed": _total(dd.get("dropped")),
            "dedup_removed": _total(dd.get("dropped")),  # no exact-dedup stage: MinHash removes those too
            "kept": _total(dd.get("forwarded")),
        },
        "minhash": {"n_grams": mh.n_grams, "num_buckets": mh.num_buckets, "hashes_per_bucket": mh.hashes_per_bucket,
                    "hash": str(mh.hash_config), "quality_languages": sorted(quality_langs)},
        "step_time_s_summed_over_tasks": {stage: {_ascii(s["name"]): round(s["time_stats"].get("total", 0.0), 2)
                                for s in ss if isinstance(s.get("time_stats"), dict)}
                        for stage, ss in step_stats.items()},
        "versions": {d: version(d) for d in ("datatrove", "spacy", "fasttext-predict", "xxhash")},
    }
    print(RESULT_MARK + json.dumps(result, ensure_ascii=False), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def parse_runs(spec: str) -> list[tuple[str, str, int | None]]:
    runs = []
    for tok in filter(None, (t.strip() for t in spec.split(","))):
        m = re.fullmatch(r"(dt|gm)(\d*)", tok)
        if not m or (m.group(1) == "dt" and not m.group(2)) or m.group(2) == "0":
            raise SystemExit(f"--runs: {tok!r} is not dtN, gm or gmN")
        runs.append((tok, m.group(1), int(m.group(2)) if m.group(2) else None))
    return runs


def gristmill_defaults() -> dict:
    """near_dedup and gopher_quality defaults from gristmill's config (the main venv has gristmill)."""
    from gristmill.config import GristmillConfig

    cfg = GristmillConfig()
    nd = cfg.near_dedup
    try:
        from dedupe.minhash import lsh_params

        bands, rows = lsh_params(nd)
    except ImportError:
        bands, rows = 23, 11  # what gristmill derives for threshold 0.8, 256 permutations
    return {"ngram": nd.ngram, "buckets": bands, "hashes": rows, "threshold": nd.threshold,
            "num_perm": nd.num_perm, "verify": nd.verify,
            # datatrove's side runs FineWeb's recipe as FineWeb did: the English rules on English documents
            # (gristmill's default applies them to every language, with each language's settings: more work)
            "quality_languages": ["en"]}


def _fmt(v, width=8, nd=1):
    if v is None:
        return f"{'-':>{width}}"
    if isinstance(v, float):
        return f"{v:>{width}.{nd}f}"
    return f"{v:>{width}}"


def print_run(r: dict) -> None:
    c = r.get("counts") or {}
    status = "ok" if r["rc"] == 0 and not r.get("error") else f"FAILED rc={r['rc']} {r.get('error', '')}"
    print(f"  {r['run']:<5} wall {r['wall_s']:.1f} s, CPU {r['cpu_s']:.1f} s, idle core-s "
          f"{r['idle_core_s_workers']:.1f} (on {r['cores_workers']} cores) / {r['idle_core_s_machine']:.1f} "
          f"(machine); kept {c.get('kept')}, near-dup removed {c.get('near_dedup_removed')}  [{status}]",
          flush=True)
    if r["rc"] != 0 or r.get("error"):
        for line in r.get("stderr_tail", [])[-8:]:
            print(f"        | {line}")


def print_tables(runs: list[dict]) -> None:
    print("\nruns (wall = process start to exit; idle core-s = wall x cores - CPU of the process tree; /w: on the "
          "run's workers, /m: on the machine's cores):")
    print(f"{'round':>5} {'run':<5} {'engine':<9} {'workers':>7} {'wall s':>8} {'CPU s':>8} {'idle/w':>8} "
          f"{'idle/m':>8} {'read':>7} {'kept':>7} {'near-dup':>8} {'exact':>6} {'dedup':>6}")
    for r in runs:
        c = r.get("counts") or {}
        print(f"{r['round']:>5} {r['run']:<5} {r['engine']:<9} {_fmt(r['workers'] or 'def', 7)} {_fmt(r['wall_s'])} "
              f"{_fmt(r['cpu_s'])} {_fmt(r['idle_core_s_workers'])} {_fmt(r['idle_core_s_machine'])} "
              f"{_fmt(c.get('read'), 7)} {_fmt(c.get('kept'), 7)} {_fmt(c.get('near_dedup_removed'))} "
              f"{_fmt(c.get('exact_dedup_removed'), 6)} {_fmt(c.get('dedup_removed'), 6)}")
    print("\nphases (wall s / CPU s / idle core-s on the run's workers / on the machine's cores):")
    for r in runs:
        parts = [f"{p['phase']} {p['wall_s']:.1f}/{p['cpu_s']:.1f}/{p['idle_core_s_workers']:.1f}/"
                 f"{p['idle_core_s_machine']:.1f}" for p in r.get("phases", [])]
        print(f"  r{r['round']} {r['run']:<5} " + ("; ".join(parts) if parts else "(no phase lines seen)"))


def print_markdown(runs: list[dict], cores: int) -> None:
    """The table for bench/README.md: one row per run; phases as wall s (idle core-s on the run's workers)."""
    print(f"\nmarkdown (bench/README.md; idle = wall x cores - CPU; machine: {cores} cores):\n")
    print("| round | run | workers | wall s | CPU s | idle core-s (workers / machine) | kept | removed as dup "
          "(near + exact) | phases: wall s (idle core-s on the workers) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        c = r.get("counts") or {}
        label = ("datatrove 0.10.1" if r["engine"] == "datatrove" else "gristmill " +
                 ("defaults" if r["workers"] is None else "in-process" if r["workers"] == 1 else "multi-process"))
        phases = ", ".join(f"{p['phase']} {p['wall_s']:.1f} ({p['idle_core_s_workers']:.1f})"
                           for p in r.get("phases", []))
        dup = (f"{c.get('near_dedup_removed')} + {c.get('exact_dedup_removed')}" if r["engine"] == "gristmill"
               else f"{c.get('near_dedup_removed')} (MinHash)")
        workers = r["workers"] or f"default ({r['cores_workers']})"
        status = "" if r["rc"] == 0 and not r.get("error") else " **failed**"
        print(f"| {r['round']} | {label}{status} | {workers} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
              f"{r['idle_core_s_workers']:.1f} / {r['idle_core_s_machine']:.1f} | {c.get('kept')} | {dup} | {phases} |")


def ratios(runs: list[dict], cores: int) -> dict:
    """datatrove wall / gristmill wall at equal cores, per round and as medians of the walls."""
    ok = [r for r in runs if r["rc"] == 0 and not r.get("error")]
    pairs = []
    dt_workers = sorted({r["workers"] for r in ok if r["engine"] == "datatrove"})
    for w in dt_workers:
        dt_name = f"dt{w}"
        gm_names = [f"gm{w}"] + (["gm"] if w == cores else [])
        for gm_name in gm_names:
            pairs.append((dt_name, gm_name))
    out = {}
    for dt_name, gm_name in pairs:
        dts = [r for r in ok if r["run"] == dt_name]
        gms = [r for r in ok if r["run"] == gm_name]
        if not dts or not gms:
            continue
        per_round = {}
        for rd in sorted({r["round"] for r in dts} & {r["round"] for r in gms}):
            d = next(r for r in dts if r["round"] == rd)
            g = next(r for r in gms if r["round"] == rd)
            per_round[rd] = round(d["wall_s"] / g["wall_s"], 2)
        dm = statistics.median(r["wall_s"] for r in dts)
        gmm = statistics.median(r["wall_s"] for r in gms)
        out[f"{dt_name}/{gm_name}"] = {"per_round": per_round, "median_walls": round(dm / gmm, 2),
                                       "dt_median_wall_s": round(dm, 1), "gm_median_wall_s": round(gmm, 1)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=20_000, help="documents (default 20,000; built once, cached)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the replicate-and-perturb builder")
    ap.add_argument("--shards", type=int, default=8, help="input JSONL.gz files (default 8)")
    ap.add_argument("--runs", default=DEFAULT_RUNS, help=f"runs in order (default {DEFAULT_RUNS})")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the --runs sequence this many times")
    ap.add_argument("--json", type=Path, default=None, help="write every figure here")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per run before it is killed")
    ap.add_argument("--sample-interval", type=float, default=0.5, help="seconds between CPU samples")
    ap.add_argument("--gristmill", type=Path, default=REPO / ".venv" / "bin" / "gristmill",
                    help="the gristmill CLI (default: .venv/bin/gristmill)")
    ap.add_argument("--gm-extra", default="", help="extra arguments for every gristmill run (one string)")
    ap.add_argument("--dt-python", type=Path, default=HERE / ".venv-bench" / "bin" / "python",
                    help="interpreter with datatrove (bash bench/setup_bench_env.sh makes it)")
    ap.add_argument("--dt-buckets", type=int, default=None, help="MinHash buckets (default: gristmill's bands)")
    ap.add_argument("--dt-hashes", type=int, default=None, help="hashes per bucket (default: gristmill's rows)")
    ap.add_argument("--keep-outputs", action="store_true", help="keep bench/work/corpus/out/* after the run")
    # child mode (internal)
    ap.add_argument("--datatrove-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--input-dir", help=argparse.SUPPRESS)
    ap.add_argument("--dt-work", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--ngram", type=int, default=5, help=argparse.SUPPRESS)
    ap.add_argument("--buckets", type=int, default=23, help=argparse.SUPPRESS)
    ap.add_argument("--hashes", type=int, default=11, help=argparse.SUPPRESS)
    ap.add_argument("--quality-languages", default="en", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.datatrove_child:
        return datatrove_child(args)

    runs = parse_runs(args.runs)
    if any(kind == "dt" for _, kind, _ in runs) and not args.dt_python.exists():
        raise SystemExit(f"{args.dt_python} does not exist: run `bash bench/setup_bench_env.sh` first "
                         "(or --runs without dtN)")
    if any(kind == "gm" for _, kind, _ in runs) and not args.gristmill.exists():
        raise SystemExit(f"{args.gristmill} does not exist (pip install -e . in .venv)")
    cores = machine_cores()

    t_in = time.perf_counter()
    input_dir = build_input(args.docs, args.seed, args.shards)
    meta = json.loads((input_dir / "meta.json").read_text())
    print(f"input: {input_dir.relative_to(REPO)}: {meta['docs']} documents, {meta['chars'] / 1e6:.1f} M chars, "
          f"{args.shards} files ({time.perf_counter() - t_in:.1f} s to load or build)", flush=True)
    lsh = gristmill_defaults()
    if args.dt_buckets:
        lsh["buckets"] = args.dt_buckets
    if args.dt_hashes:
        lsh["hashes"] = args.dt_hashes
    print(f"datatrove MinHash: {lsh['ngram']}-grams, {lsh['buckets']} buckets x {lsh['hashes']} hashes "
          f"(gristmill near_dedup: threshold {lsh['threshold']}, {lsh['num_perm']} permutations, verify "
          f"{lsh['verify']}); datatrove's Gopher/C4/FineWeb quality on {lsh['quality_languages']}; "
          f"machine cores: {cores}", flush=True)

    results: dict = {
        "machine": {"python": platform.python_version(), "platform": platform.platform(), "cpu": _cpu_name(),
                    "cores": cores, "loadavg_start": _loadavg()},
        "gristmill": _git_revision(),
        "input": {**meta, "dir": str(input_dir.relative_to(REPO))},
        "datatrove_minhash": lsh,
        "cpu_measure": "psutil" if psutil is not None else "/proc",
        "runs": [],
    }
    for rd in range(1, args.rounds + 1):
        for name, kind, workers in runs:
            tag = f"r{rd}_{name}"
            print(f"[round {rd}] {name}: {'datatrove' if kind == 'dt' else 'gristmill'} "
                  f"{workers or 'default'} worker(s) ...", flush=True)
            if kind == "dt":
                r = run_datatrove(args, name, workers, input_dir, tag, cores, lsh)
            else:
                r = run_gristmill(args, name, workers, input_dir, tag, cores)
            r["round"] = rd
            r["loadavg_after"] = _loadavg()
            results["runs"].append(r)
            print_run(r)
            if args.json:  # partial results survive a crash or ^C
                _write_json(args.json, results)
    runs_out = results["runs"]
    print_tables(runs_out)
    print_markdown(runs_out, cores)
    results["ratios_dt_over_gm"] = ratios(runs_out, cores)
    print("\nratios (datatrove wall / gristmill wall, equal cores; 'gm' = gristmill defaults, compared at "
          f"the machine's {cores} cores):")
    for k, v in results["ratios_dt_over_gm"].items():
        print(f"  {k:<10} per round {v['per_round']}  medians {v['dt_median_wall_s']} s / {v['gm_median_wall_s']} s"
              f" = {v['median_walls']}x")
    print("\ndedup (documents): gristmill kept / near-dup removed / exact removed; datatrove after filters / "
          "removed by MinHash / kept")
    for r in runs_out:
        c = r.get("counts") or {}
        if r["engine"] == "gristmill":
            print(f"  r{r['round']} {r['run']:<5} read {c.get('read')}, kept {c.get('kept')}, near-dup removed "
                  f"{c.get('near_dedup_removed')} in {c.get('near_dedup_clusters')} clusters, exact removed "
                  f"{c.get('exact_dedup_removed')}; dropped by stage {c.get('dropped_by_stage')}")
        else:
            print(f"  r{r['round']} {r['run']:<5} read {c.get('read')}, after filters {c.get('after_filters')}, "
                  f"removed by MinHash {c.get('near_dedup_removed')}, kept {c.get('kept')}; dropped by filter "
                  f"{c.get('dropped_by_filter')}")
    results["machine"]["loadavg_end"] = _loadavg()
    if not args.keep_outputs:
        shutil.rmtree(WORK / "out", ignore_errors=True)
    if args.json:
        _write_json(args.json, results)
        print(f"results: {args.json}")
    print(f"logs: {(WORK / 'logs').relative_to(REPO)}/")
    return 0 if all(r["rc"] == 0 and not r.get("error") for r in runs_out) else 1


def _write_json(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    slim = json.loads(json.dumps(results))
    for r in slim["runs"]:  # samples: (t, cumulative CPU, processes), rounded
        r["samples"] = [[round(t, 2), round(c, 2), n] for t, c, n in r["samples"]]
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(slim, indent=1, ensure_ascii=False) + "\n")
    tmp.replace(path)


def _git_revision() -> dict:
    def git(*a):
        r = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, check=False)
        return r.stdout.strip() if r.returncode == 0 else None

    return {"commit": git("rev-parse", "HEAD"),
            "modified": git("status", "--porcelain", "--", "pipelines", "dedupe", "gristmill")}


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
