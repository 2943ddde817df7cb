"""Benchmark: a data ablation (``gristmill ablate``): which corpus trains the better model?

The crawl: the bundled sample crawl (``sample/crawl``: WARC, WET, JSONL, Parquet), the shared web files it
does not already hold (``../shared/data/web``: Dolma CCNet JSONL, a wget WARC, Common Crawl's whirlwind
WARC) and trafilatura's 990 gold-set HTML pages wrapped as WARC response records. Variants, each the
same model (4 layers, 128 wide, vocabulary 4,000: ~1.4M parameters) trained on the same number of unique
tokens (the smallest variant's, read once), five seeds each, compared with ``default`` by paired,
Holm-corrected intervals (docs/trainer.md):

* ``raw``: gristmill with extraction and language ID only (English kept);
* ``default``: gristmill's defaults (Unicode repair, URL blocklist, Gopher, C4 lines, PII, exact and
  MinHash dedup) — English kept;
* ``quality``: the defaults + the model-based quality classifier (top fraction per language), with a
  classifier trained *here* without the held-out texts (the shipped one saw every shared book);
* ``old_default``: gristmill's default before it became FineWeb's recipe (C4's terminal-punctuation line
  rule on, no FineWeb quality filter);
* ``datatrove``: what datatrove's FineWeb-style recipe keeps of the same crawl (its example:
  URLFilter, Trafilatura on the HTML, LanguageFilter en, Gopher repetition + quality, C4 (no terminal-
  punctuation rule), FineWeb quality filters, 4-stage MinHash), read back as JSONL (``base: raw``: no
  gristmill filter touches it). datatrove runs in ``bench/.venv-bench`` (bash bench/setup_bench_env.sh);
* ``damaged``: the default with half its documents word-shuffled — the ablation's power check: it must
  come out worse than ``default``.

Held out, never trained on by any variant and excluded from the bench's quality classifier:
Frankenstein (PG #84), the State of the Union addresses 1945–2006 and 5 % of the crawl's documents (by
id, before any filter: ``bpb: crawl``); the multiple-choice eval is
``sample/eval/genesis_next_sentence_mc.jsonl``.

    .venv/bin/python bench/bench_ablate.py --json bench/results/ablation.json

Run with the machine quiet; the run is resumable (``gristmill ablate`` skips finished steps).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = Path(os.environ.get("GRISTMILL_SHARED_DATA", REPO.parent / "shared" / "data"))
WORK = HERE / "work" / "ablate"
RESULT_MARK = "@@datatrove-result "

#: the shared web files the sample crawl does not already hold (same SHA-256 as a sample file: left out)
SHARED_WEB = ["dolma_ccnet_cc_en_head-0091.jsonl", "dolma_ccnet_cc_en_head-0174.jsonl",
              "dolma_wget_sample-0001.warc.gz", "cc_whirlwind.warc.gz"]
HELDOUT = [SHARED / "text" / "pg84_frankenstein.txt", SHARED / "text" / "nltk_state_union_1945_2006.jsonl"]
#: positives of the bench's quality classifier: the shared high-quality text minus the held-out sets
QUALITY_POSITIVE = [SHARED / "text" / f for f in ("pg1342_pride_and_prejudice.txt",
                                                  "pg1661_adventures_of_sherlock_holmes.txt", "pg2701_moby_dick.txt",
                                                  "tinyshakespeare_input.txt", "nltk_inaugural_addresses.jsonl")] + \
    [SHARED / "sft" / f for f in ("oasst_en_100_rank0_conversations.jsonl", "self_instruct_seed_tasks.jsonl",
                                  "gsm8k_train.jsonl")]


def build_crawl() -> Path:
    crawl = WORK / "crawl"
    crawl.mkdir(parents=True, exist_ok=True)
    for f in sorted((REPO / "sample" / "crawl").iterdir()):
        _link(f, crawl / f.name)
    for name in SHARED_WEB:
        _link(SHARED / "web" / name, crawl / name)
    pages = crawl / "trafilatura-gold-990.warc.gz"
    if not pages.exists():
        sys.path.insert(0, str(HERE))
        import bench_extract

        tmp = pages.with_suffix(".tmp")
        bench_extract.write_warc(bench_extract.load_pages(), tmp)
        tmp.rename(pages)
    return crawl


def _link(src: Path, dst: Path) -> None:
    if not dst.exists():
        dst.symlink_to(src.resolve())


def train_quality_model(gm: Path, crawl: Path) -> Path:
    out = WORK / "quality-model"
    if (out / "model.bin").is_file():
        return out
    negatives = [str(p) for p in sorted(crawl.iterdir()) if p.name.endswith((".jsonl", ".jsonl.gz", ".jsonl.zst"))]
    cmd = [str(gm), "quality", "train", "--positive", *map(str, QUALITY_POSITIVE), "--negative", *negatives,
           "--output", str(out)]
    subprocess.run(cmd, check=True)
    return out


# ---------------------------------------------------------------------------------------------
# datatrove's FineWeb-style recipe (child, in bench/.venv-bench)
# ---------------------------------------------------------------------------------------------


def run_datatrove(dt_python: Path, crawl: Path, workers: int) -> dict:
    out = WORK / "datatrove"
    done = out / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    if out.exists():
        shutil.rmtree(out)  # datatrove skips finished tasks: start from nothing
    t0 = time.perf_counter()
    proc = subprocess.run([str(dt_python), str(Path(__file__).resolve()), "--datatrove-child", "--crawl", str(crawl),
                           "--workers", str(workers)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"datatrove failed:\n{proc.stderr[-4000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith(RESULT_MARK))
    result = {**json.loads(line[len(RESULT_MARK):]), "seconds": round(time.perf_counter() - t0, 1)}
    done.write_text(json.dumps(result, indent=1) + "\n")
    return result


def datatrove_child(args) -> int:
    sys.path.insert(0, str(HERE))
    import logging

    import bench_clean
    from bench_corpus import _total, utf8_minhash_signature
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import URLFilter
    from datatrove.pipeline.readers import JsonlReader, ParquetReader, WarcReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    from gristmill.pipelines.langid import default_model_path

    logging.disable(logging.WARNING)

    class URLFilterNoUrlPasses(URLFilter):
        """The OSCAR records carry no URL (datatrove's URLFilter asserts one): nothing to judge, they pass."""

        def filter(self, document):
            if not document.metadata.get("url"):
                return True
            return super().filter(document)

    Utf8MinhashDedupSignature = utf8_minhash_signature()

    base = WORK / "datatrove"
    crawl = Path(args.crawl)
    w = args.workers
    # FineWeb's filters as bench_clean builds them (English-only language ID, as FineWeb ran it)
    _, quality, repetition, language, c4, fineweb = bench_clean.make_datatrove(default_model_path())
    mh = MinhashConfig(hash_config=HashConfig(precision=64))  # FineWeb's: 5-grams, 14 buckets x 8 hashes
    extracted, filtered, sigs, buckets, remove = (str(base / d) for d in
                                                  ("extracted", "filtered", "signatures", "buckets", "remove_ids"))
    stages = [
        ("html: read + trafilatura", LocalPipelineExecutor(
            [WarcReader(str(crawl), glob_pattern="*.warc.gz"), Trafilatura(favour_precision=True, timeout=5),
             JsonlWriter(extracted, output_filename="html_${rank}.jsonl.gz")],
            tasks=1, workers=1, logging_dir=str(base / "logs" / "0a"))),
        ("text: read", LocalPipelineExecutor(
            [WarcReader(str(crawl), glob_pattern="*.wet.gz"),
             JsonlReader(str(crawl), glob_pattern="*.jsonl*"),
             ParquetReader(str(crawl), glob_pattern="*.parquet"),
             JsonlWriter(extracted, output_filename="text_${rank}.jsonl.gz")],
            tasks=1, workers=1, logging_dir=str(base / "logs" / "0b"))),
        ("filters + signatures", LocalPipelineExecutor(
            [JsonlReader(extracted, glob_pattern="*.jsonl.gz"), URLFilterNoUrlPasses(), language, repetition,
             quality, c4, fineweb,
             JsonlWriter(filtered), Utf8MinhashDedupSignature(output_folder=sigs, config=mh)],
            tasks=w, workers=w, logging_dir=str(base / "logs" / "1"))),
        ("buckets", LocalPipelineExecutor(
            [MinhashDedupBuckets(input_folder=sigs, output_folder=buckets, config=mh)],
            tasks=mh.num_buckets, workers=w, logging_dir=str(base / "logs" / "2"))),
        ("cluster", LocalPipelineExecutor(
            [MinhashDedupCluster(input_folder=buckets, output_folder=remove, config=mh)],
            tasks=1, workers=1, logging_dir=str(base / "logs" / "3"))),
        ("dedup + write", LocalPipelineExecutor(
            [JsonlReader(filtered, glob_pattern="*.jsonl.gz"), MinhashDedupFilter(input_folder=remove),
             JsonlWriter(str(base / "output"))],
            tasks=w, workers=w, logging_dir=str(base / "logs" / "4"))),
    ]
    stats = {}
    for name, ex in stages:
        st = ex.run()
        stats[name] = json.loads(st.to_json()) if st is not None else []
    counts = {}
    for name, ss in stats.items():
        for s in ss:
            st = s.get("stats", {})
            key = f"{name} / {s['name']}"
            counts[key] = {k: _total(st[k]) for k in ("documents", "total", "forwarded", "dropped") if k in st}
    from importlib.metadata import version

    print(RESULT_MARK + json.dumps({"steps": counts, "output": str(base / "output"),
                                    "versions": {d: version(d) for d in ("datatrove", "trafilatura")}},
                                   ensure_ascii=False), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# The ablation
# ---------------------------------------------------------------------------------------------


def ablate_config(crawl: Path, quality_model: Path, dt_output: str, args) -> Path:
    import yaml

    tree = {
        "langid": {"keep": ["en"]},
        "tokenizer": {"vocab_size": 4000},
        "tokenize": {"seq_len": 128, "val_fraction": 0.02},
        "model": {"preset": "small", "d_model": 128, "n_head": 4},  # 4 layers: ~1.4M parameters
        "pretrain": {"num_workers": 1, "cpus_per_worker": 1, "batch_size": 16, "micro_batch_size": 16,
                     "lr": 0.003, "min_lr": 0.0003, "warmup_steps": 20, "log_every": 25, "eval_batches": 4},
        "ablate": {
            "output": str(WORK / "ablation"),
            "inputs": [str(crawl / "*")],
            "variants": [
                {"name": "raw", "base": "raw"},
                {"name": "default"},
                {"name": "quality", "set": {"clean.quality.enabled": True,
                                            "clean.quality.model": str(quality_model / "model.bin"),
                                            "clean.quality.top_fraction": args.quality_top_fraction}},
                {"name": "datatrove", "base": "raw", "inputs": [f"{dt_output}/*.jsonl.gz"]},
                # gristmill's default before FineWeb's recipe (issue 28): C4 with its terminal-punctuation
                # line rule, no FineWeb quality filter (its English-only rule sets: the same here, English kept)
                {"name": "old_default", "set": {"clean.c4_lines.require_terminal_punctuation": True,
                                                "clean.fineweb_quality.enabled": False}},
                # the ablation's own power check: the default with half its documents word-shuffled
                {"name": "damaged", "damage": 0.5},
            ],
            "baseline": "default",
            "seeds": args.seeds,
            "tokens": args.tokens,
            "max_epochs": args.max_epochs,
            "eval_points": args.eval_points,
            "crawl_heldout": args.crawl_heldout,
            "heldout": [str(p) for p in HELDOUT],
            "heldout_max_tokens": 30_000,
            "mc": [str(REPO / "sample" / "eval" / "genesis_next_sentence_mc.jsonl")],
        },
    }
    path = WORK / "ablate.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=None,
                    help="training tokens per run (default: the smallest variant's training split, read once)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--eval-points", type=int, default=4)
    ap.add_argument("--max-epochs", type=float, default=1.0)
    ap.add_argument("--crawl-heldout", type=float, default=0.05, help="share of the crawl held out by id")
    ap.add_argument("--quality-top-fraction", type=float, default=0.5)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="datatrove workers")
    ap.add_argument("--dt-python", type=Path, default=HERE / ".venv-bench" / "bin" / "python")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--datatrove-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--crawl", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.datatrove_child:
        return datatrove_child(args)
    gm = Path(sys.executable).parent / "gristmill"
    crawl = build_crawl()
    print(f"crawl: {crawl} ({len(list(crawl.iterdir()))} files)", flush=True)
    qmodel = train_quality_model(gm, crawl)
    dt = run_datatrove(args.dt_python, crawl, args.workers)
    print(f"datatrove FineWeb-style recipe: {dt['seconds']} s → {dt['output']}", flush=True)
    config = ablate_config(crawl, qmodel, dt["output"], args)
    t0 = time.perf_counter()
    subprocess.run([str(gm), "ablate", "--config", str(config), "--no-progress"], check=True)
    seconds = time.perf_counter() - t0
    res = json.loads((WORK / "ablation" / "results.json").read_text())
    res.pop("config", None)
    report = {"ablation": res, "datatrove": dt, "ablate_seconds": round(seconds, 1),
              "quality_model": json.loads((qmodel / "metadata.json").read_text()).get("holdout"),
              "heldout_sets": [p.name for p in HELDOUT]}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        shutil.copyfile(WORK / "ablation" / "heldout_loss.png", args.json.with_suffix(".png"))
        shutil.copyfile(WORK / "ablation" / "results.md", args.json.with_suffix(".md"))
    print((WORK / "ablation" / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
