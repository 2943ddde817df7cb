"""Main-text extraction on trafilatura's 990-page gold set: precision, recall, F1 and seconds for every
extractor setting, side by side in one run; optionally the whole ``gristmill corpus`` command over
the same pages wrapped as WARC response records (filters and dedup off), per extractor.

Scoring is trafilatura's own comparison (tests/comparison_small.py): for each page, every "with"
snippet found in the output is a true positive (else a false negative), every "without" snippet
found is a false positive; precision, recall and F1 over all snippets of all pages.

Data: ``../shared/data/web/html/trafilatura_eval_990pages.tar.xz`` + ``trafilatura_evaldata.json``
(unpacked once into bench/work/extract/). Pages are decoded as gristmill decodes them
(``pipelines/extract.html_to_text``: the WARC charset when given, else Resiliparse's detection).

Example::

    .venv/bin/python bench/bench_extract.py --json bench/results/extract.json
    .venv/bin/python bench/bench_extract.py --whole-command           # + gristmill corpus per extractor
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "work" / "extract"
SHARED = Path(os.environ.get("GRISTMILL_SHARED_DATA", REPO.parent / "shared" / "data"))


def load_pages(limit: int | None = None) -> list[tuple[str, dict, bytes]]:
    html_dir = WORK / "trafilatura_eval" / "html"
    if not html_dir.is_dir():
        WORK.mkdir(parents=True, exist_ok=True)
        with tarfile.open(SHARED / "web" / "html" / "trafilatura_eval_990pages.tar.xz") as tar:
            tar.extractall(WORK, filter="data")
    gold = json.loads((SHARED / "web" / "html" / "trafilatura_evaldata.json").read_text())
    pages = [(url, g, (html_dir / g["file"]).read_bytes())
             for url, g in gold.items() if (html_dir / g["file"]).is_file()]
    return pages[:limit] if limit else pages


def score(pages, outputs: list[str]) -> dict:
    tp = fn = fp = tn = 0
    for (_, g, _), text in zip(pages, outputs):
        for s in g["with"]:
            if s in text:
                tp += 1
            else:
                fn += 1
        for s in g["without"]:
            if s in text:
                fp += 1
            else:
                tn += 1
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
            "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def extractors() -> dict:
    from gristmill.pipelines.extract import html_to_text

    names = ("resiliparse", "hybrid", "trafilatura")
    return {name: (lambda body, name=name: html_to_text(body, None, name)) for name in names}


def best_of(names: list[str], rounds: int, run_one) -> dict[str, float]:
    """Best wall time of ``run_one(name)`` per name. Rounds go round-robin over the names, so that a
    noisy neighbour slows all of them alike."""
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name in names:
            t0 = time.perf_counter()
            run_one(name)
            dt = time.perf_counter() - t0
            best[name] = min(best.get(name, dt), dt)
    return best


def run_extractors(pages, names: list[str], rounds: int) -> list[dict]:
    fns = extractors()
    outputs: dict[str, list[str]] = {}

    def extract_all(name: str) -> None:
        outputs[name] = [fns[name](body) for _, _, body in pages]

    best = best_of(names, rounds, extract_all)
    rows = []
    for name in names:
        rows.append({"extractor": name, **score(pages, outputs[name]), "seconds": round(best[name], 2)})
        print(f"  {name:<14} P {rows[-1]['precision']:.3f}  R {rows[-1]['recall']:.3f}  F1 {rows[-1]['f1']:.3f}  "
              f"{best[name]:.1f} s", flush=True)
    base = next((r["seconds"] for r in rows if r["extractor"] == "resiliparse"), None)
    for r in rows:
        r["time_vs_resiliparse"] = round(r["seconds"] / base, 2) if base else None
    return rows


def write_warc(pages, path: Path) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for url, _, body in pages:
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(url, "response", payload=_bytes_io(body),
                                                          http_headers=headers))


def _bytes_io(b: bytes):
    import io

    return io.BytesIO(b)


FILTERS_OFF = ["clean.gopher_repetition.enabled=false", "clean.gopher_quality.enabled=false",
               "clean.c4_lines.enabled=false", "clean.pii.enabled=false", "langid.threshold=0",
               "exact_dedup.enabled=false", "near_dedup.enabled=false", "write.html_report=false"]


def whole_command(pages, names: list[str], rounds: int, files: int = 8) -> list[dict]:
    # several files, as a crawl has: the per-file work runs on every core
    warc_dir = WORK / f"warc_{len(pages)}x{files}"
    if not warc_dir.is_dir():
        tmp = warc_dir.with_suffix(".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        for k in range(files):
            write_warc(pages[k::files], tmp / f"pages-{k:02d}.warc.gz")
        tmp.rename(warc_dir)
    warc = warc_dir / "*.warc.gz"
    gm = REPO / ".venv" / "bin" / "gristmill"

    def corpus(name: str) -> None:
        cmd = [str(gm), "corpus", "--input", str(warc), "--output", str(WORK / "out" / name), "--overwrite",
               "--fresh", "-q", "--set", f"read.extractor={name}", *sum((["--set", s] for s in FILTERS_OFF), [])]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

    best = best_of(names, rounds, corpus)
    rows = []
    for name in names:
        rows.append({"extractor": name, "command_seconds": round(best[name], 2)})
        print(f"  gristmill corpus, read.extractor={name:<12} {best[name]:.1f} s", flush=True)
    base = best.get("resiliparse")
    for r in rows:
        r["wall_vs_resiliparse"] = round(r["command_seconds"] / base, 2) if base else None
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--extractors", default="resiliparse,hybrid,trafilatura", help="comma-separated settings")
    ap.add_argument("--rounds", type=int, default=3,
                    help="time each extractor this many times, round-robin (best kept: the first round "
                         "also pays for cold caches and lazy imports)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N pages (smoke test)")
    ap.add_argument("--whole-command", action="store_true", help="also time `gristmill corpus` per extractor")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)
    names = [n for n in args.extractors.split(",") if n]
    pages = load_pages(args.limit)
    print(f"{len(pages)} pages, {sum(len(g['with']) for _, g, _ in pages)} must-have and "
          f"{sum(len(g['without']) for _, g, _ in pages)} must-not-have snippets", flush=True)
    result = {"pages": len(pages), "extraction": run_extractors(pages, names, args.rounds)}
    if args.whole_command:
        result["whole_command"] = whole_command(pages, names, args.rounds)
    print("\n| extractor | precision | recall | F1 | seconds | × Resiliparse |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in result["extraction"]:
        print(f"| {r['extractor']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['seconds']:.1f} | "
              f"{r['time_vs_resiliparse']} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
