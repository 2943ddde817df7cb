"""The corpus job on object stores against the same job on local disk, in one run.

Starts an S3-compatible server (moto's) and a Google Cloud Storage emulator (gcp-storage-emulator), as
the tests do, on loopback, uploads the input to each, and runs ``gristmill corpus`` each way in its own
process: local disk → local disk, s3:// → s3://, gs:// → gs:// (in turn, ``--repeats`` times each), and
prints the wall-clock times, each store's ratio to local disk and the number of requests its run made
(from the server's log). A loopback server has none of a real store's latency, so the ratio measures
gristmill's own cost per object (requests, clients, copies), not the network.

    .venv/bin/python bench/bench_object_store.py                       # the sample crawl, 3 repeats
    .venv/bin/python bench/bench_object_store.py --input 'path/*.warc.gz' --repeats 5 --stores gs
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

from tests.gcsserver import start_gcs_server  # noqa: E402
from tests.s3server import start_s3_server  # noqa: E402

GRISTMILL = str(Path(sys.executable).parent / "gristmill")


def _run(args: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([GRISTMILL, *args, "-q"], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"gristmill {' '.join(args[:1])} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=str(REPO / "sample" / "crawl" / "*"), help="local input glob")
    ap.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--stores", default="s3,gs", help="comma-separated: s3, gs")
    a = ap.parse_args()
    files = sorted(glob.glob(a.input))
    if not files:
        raise SystemExit(f"--input {a.input} matches no file")
    stores = a.stores.split(",")
    work = Path(tempfile.mkdtemp(prefix="bench-store-"))
    servers: dict = {}
    try:
        if "s3" in stores:
            s3 = servers["s3"] = start_s3_server(work / "moto.log")
            c = s3.client()
            c.create_bucket(Bucket="bench")
            for f in files:
                c.upload_file(f, "bench", f"crawl/{Path(f).name}")
        if "gs" in stores:
            gs = servers["gs"] = start_gcs_server(work / "gcs.log")
            gs.create_bucket("bench")
            bucket = gs.client().bucket("bench")
            for f in files:
                bucket.blob(f"crawl/{Path(f).name}").upload_from_filename(f)
        local: list[float] = []
        remote: dict[str, list[float]] = {s: [] for s in servers}
        requests: dict[str, list[int]] = {s: [] for s in servers}
        for i in range(a.repeats):
            out = work / f"local-{i}"
            local.append(_run(["corpus", "--input", a.input, "--output", str(out), "--config", a.config]))
            shutil.rmtree(out)
            for name, server in servers.items():
                before = _requests(name, server, work)
                args = ["corpus", "--input", f"{name}://bench/crawl/*", "--output", f"{name}://bench/out-{i}",
                        "--config", a.config]
                if name == "s3":
                    remote[name].append(_run([*args, *server.options()]))
                else:
                    remote[name].append(_run(args, env=server.env()))
                requests[name].append(_requests(name, server, work) - before)
        med_l = statistics.median(local)
        print(f"input: {len(files)} files, {sum(Path(f).stat().st_size for f in files):,} bytes; {a.repeats} runs each")
        print(f"local disk → local disk: median {med_l:6.1f} s  ({', '.join(f'{x:.1f}' for x in local)})")
        for name, times in remote.items():
            med = statistics.median(times)
            each = ", ".join(f"{x:.1f}" for x in times)
            print(f"{name}:// → {name}:// (loopback): median {med:6.1f} s  ({each}), "
                  f"{statistics.median(requests[name]):,.0f} requests per run; "
                  f"ratio {name} / local: {med / med_l:.2f}x")
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


def _requests(name: str, server, work: Path) -> int:
    if name == "gs":
        return server.requests()
    return (work / "moto.log").read_text().count("HTTP/1.1")


if __name__ == "__main__":
    main()
