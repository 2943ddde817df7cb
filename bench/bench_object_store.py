"""The corpus job on an object store against the same job on local disk, in one run.

Starts an S3-compatible server (moto's, as the tests do) on loopback, uploads the input, and runs
``gristmill corpus`` three ways, each in its own process: local disk → local disk, s3:// → s3://
(alternating, ``--repeats`` times each), and prints the wall-clock times, their ratio and the number
of requests the S3 run made (from the server's log). The loopback server has none of a real store's
latency, so the ratio measures gristmill's own cost per object (requests, clients, copies), not the network.

    .venv/bin/python bench/bench_object_store.py                       # the sample crawl, 3 repeats
    .venv/bin/python bench/bench_object_store.py --input 'path/*.warc.gz' --repeats 5
"""

from __future__ import annotations

import argparse
import glob
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.s3server import start_s3_server  # noqa: E402

GRISTMILL = str(Path(sys.executable).parent / "gristmill")


def _run(args: list[str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([GRISTMILL, *args, "-q"], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"gristmill {' '.join(args[:1])} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=str(REPO / "sample" / "crawl" / "*"), help="local input glob")
    ap.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    files = sorted(glob.glob(a.input))
    if not files:
        raise SystemExit(f"--input {a.input} matches no file")
    work = Path(tempfile.mkdtemp(prefix="bench-s3-"))
    server = start_s3_server(work / "moto.log")
    try:
        c = server.client()
        c.create_bucket(Bucket="bench")
        for f in files:
            c.upload_file(f, "bench", f"crawl/{Path(f).name}")
        local, remote, requests = [], [], []
        for i in range(a.repeats):
            out = work / f"local-{i}"
            local.append(_run(["corpus", "--input", a.input, "--output", str(out), "--config", a.config]))
            before = (work / "moto.log").read_text().count("HTTP/1.1")
            remote.append(_run(["corpus", "--input", "s3://bench/crawl/*", "--output", f"s3://bench/out-{i}",
                                "--config", a.config, *server.options()]))
            requests.append((work / "moto.log").read_text().count("HTTP/1.1") - before)
            shutil.rmtree(out)
        med_l, med_r = statistics.median(local), statistics.median(remote)
        print(f"input: {len(files)} files, {sum(Path(f).stat().st_size for f in files):,} bytes; {a.repeats} runs each")
        print(f"local disk → local disk: median {med_l:6.1f} s  ({', '.join(f'{x:.1f}' for x in local)})")
        print(f"s3:// → s3:// (loopback): median {med_r:6.1f} s  ({', '.join(f'{x:.1f}' for x in remote)}), "
              f"{statistics.median(requests):,.0f} requests per run")
        print(f"ratio s3 / local: {med_r / med_l:.2f}x")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
