"""How much of a corpus run a crash costs: a full run, then the same run SIGKILLed once ~80 % of its
input files are done and started again (it reuses their cleaned documents), on the same input.

    .venv/bin/python bench/bench_resume.py                    # 10 files of 500 web documents
    .venv/bin/python bench/bench_resume.py --files 20 --docs 500 --kill-at 0.8

The input is real web text (the shared Dolma and OSCAR samples), each document given a new id and
a last sentence so that copies are not exact duplicates. Prints the wall times and their ratio;
run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("GRISTMILL_SHARED_DATA", REPO.parent / "shared" / "data")) / "web"
GRISTMILL = str(Path(sys.executable).parent / "gristmill")


def texts() -> list[str]:
    with gzip.open(SHARED / "dolma_CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz", "rt") as f:
        out = [json.loads(line)["text"] for line in f]
    with open(SHARED / "oscar2019_hf_dummy_multilingual.jsonl") as f:
        out += [json.loads(line)["text"] for line in f if line.strip()]
    return [t for t in out if t.strip()]


def make_input(work: Path, files: int, docs: int) -> str:
    src = texts()
    work.mkdir(parents=True, exist_ok=True)
    k = 0
    for i in range(files):
        with gzip.open(work / f"part-{i:03d}.jsonl.gz", "wt", encoding="utf-8") as f:
            for _ in range(docs):
                text = src[k % len(src)] + f"\n\nThis is copy number {k // len(src)} of page {k % len(src)}."
                f.write(json.dumps({"id": f"doc-{k:07d}", "text": text}) + "\n")
                k += 1
    return str(work / "part-*.jsonl.gz")


def run(inputs: str, out: Path, extra=()) -> float:
    t0 = time.perf_counter()
    subprocess.run([GRISTMILL, "corpus", "--input", inputs, "--output", str(out), "-q", *extra], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--docs", type=int, default=500, help="documents per file")
    ap.add_argument("--kill-at", type=float, default=0.8, help="share of input files done when the run is killed")
    ap.add_argument("--work", default=str(REPO / "bench" / "work" / "resume"))
    a = ap.parse_args()
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    inputs = make_input(work / "input", a.files, a.docs)
    full = run(inputs, work / "full")

    out = work / "resumed"
    proc = subprocess.Popen([GRISTMILL, "corpus", "--input", inputs, "--output", str(out), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.perf_counter()
    target = max(1, round(a.kill_at * a.files))
    while len(list((out / "_work").glob("*.json"))) < target and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_after = time.perf_counter() - t0
    done = len(list((out / "_work").glob("*.json")))
    resumed = run(inputs, out)
    same = all((work / "full" / p.relative_to(out)).read_bytes() == p.read_bytes()
               for p in out.rglob("*.arrow"))
    print(f"{a.files} files x {a.docs} documents: full run {full:.1f} s; killed after {killed_after:.1f} s "
          f"({done}/{a.files} files done); the rerun finished in {resumed:.1f} s = {resumed / full:.2f} of a full run "
          f"(total with the killed part {(killed_after + resumed) / full:.2f}); output identical: {same}")


if __name__ == "__main__":
    main()
