"""Tokenizer benchmarks: training time against the `spm_train` command line, and encoding
throughput of the tokenize pipeline against Hugging Face `tokenizers` with the exported
tokenizer.json. Not a test: prints numbers and ratios.

    apt-get install sentencepiece          # spm_train (Debian's 0.1.97; the wheel is 0.2.3)
    .venv/bin/python bench/bench_tokenizer.py [--docs 20000] [--vocab 32000] [--json out.json]

Input: real web text (the shared Dolma CC JSONL, OSCAR, CCNet and the Gutenberg books split into
chapters), replicated to --docs documents with light deterministic perturbation, written once as a
corpus directory (Arrow shards + manifest, no cleaning: the tokenizer is what is measured).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("GRISTMILL_SHARED_DATA", REPO.parent / "shared" / "data"))
WORK = REPO / "bench" / "work" / "tokenizer"


def base_texts() -> list[str]:
    texts = []
    dolma = SHARED / "web/dolma_CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz"
    with gzip.open(dolma, "rt", encoding="utf-8") as f:
        texts += [json.loads(line)["text"] for line in f]
    with open(SHARED / "web/oscar2019_hf_dummy_multilingual.jsonl", encoding="utf-8") as f:
        texts += [json.loads(line)["text"] for line in f if line.strip()]
    for name in ("pg1342_pride_and_prejudice.txt", "pg2701_moby_dick.txt", "pg84_frankenstein.txt",
                 "pg1661_adventures_of_sherlock_holmes.txt"):
        book = (SHARED / "text" / name).read_text(encoding="utf-8").replace("\r\n", "\n")
        texts += [c.strip() for c in book.split("\n\n\n") if len(c.strip()) > 500]
    return [t for t in texts if t.strip()]


def build_corpus(n_docs: int, seed: int = 0) -> Path:
    from gristmill.documents import CORPUS_SCHEMA, new_document
    from gristmill.pipelines import shards

    out = WORK / f"corpus_{n_docs}"
    if (out / "manifest.json").exists():
        return out
    rng = random.Random(seed)
    base = base_texts()
    docs = []
    for i in range(n_docs):
        words = base[i % len(base)].split(" ")
        if i >= len(base):  # perturb the copies: drop and swap a few words
            for _ in range(max(1, len(words) // 50)):
                j = rng.randrange(len(words))
                words[j] = words[rng.randrange(len(words))]
        d = new_document(f"doc-{i:07d}", " ".join(words), "bench")
        d["lang"] = "xx"
        docs.append(d)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for k in range(0, n_docs, 5000):
        entries.append(shards.write_shard(str(out), "lang=xx", k // 5000, docs[k : k + 5000], "corpus", "file"))
    manifest = {"kind": "corpus", "counts": {"read": n_docs, "kept": n_docs, "dropped": {}}, "shards": entries,
                "schema": {f.name: str(f.type) for f in CORPUS_SCHEMA}}
    shards.write_json_atomic(str(out / "manifest.json"), manifest)
    return out


def spm_flags(opts: dict) -> list[str]:
    flags = []
    for k, v in opts.items():
        if k == "minloglevel":
            continue
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif isinstance(v, list):
            v = ",".join(v)
        flags.append(f"--{k}={v}")
    return flags


def bench_training(corpus: Path, vocab: int, reps: int) -> dict:
    from gristmill.config import TokenizerConfig
    from gristmill.tokenizer.train import iter_corpus_lines, train_tokenizer, trainer_options

    cfg = TokenizerConfig(vocab_size=vocab, input_sentence_size=10_000_000)
    text_file = WORK / "lines.txt"
    with open(text_file, "w", encoding="utf-8") as f:
        n_lines = 0
        for line in iter_corpus_lines(str(corpus), cfg):
            f.write(line.replace("\n", " ") + "\n")
            n_lines += 1
    mb = text_file.stat().st_size / 2**20
    import io

    import sentencepiece as spm

    ours, theirs, wheel = [], [], []
    for r in range(reps):
        out = WORK / f"tok_gm_{r}"
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        train_tokenizer(str(corpus), str(out), cfg)
        ours.append(time.perf_counter() - t)
        prefix = WORK / f"tok_spm_{r}"
        t = time.perf_counter()
        subprocess.run(["spm_train", f"--input={text_file}", f"--model_prefix={prefix}",
                        *spm_flags(trainer_options(cfg))], check=True, capture_output=True)
        theirs.append(time.perf_counter() - t)
        # the same 0.2.3 library as gristmill, reading the prepared file: separates the version
        # difference from the streaming
        t = time.perf_counter()
        spm.set_random_generator_seed(cfg.seed)
        spm.SentencePieceTrainer.train(input=str(text_file), model_writer=io.BytesIO(), **trainer_options(cfg))
        wheel.append(time.perf_counter() - t)
    return {"sentencepiece_0_2_from_file_s": round(min(wheel), 2), "lines": n_lines, "text_mb": round(mb, 1),
            "vocab_size": vocab,
            "gristmill_s": round(min(ours), 2), "spm_train_s": round(min(theirs), 2),
            "ratio_time_gristmill_over_spm_train": round(min(ours) / min(theirs), 3),
            "note": "gristmill time includes streaming the Arrow shards, training, writing the model, vocab, "
                    "tokenizer.json and meta; spm_train reads a prepared text file (not timed) and writes model "
                    "and vocab"}


def bench_encoding(corpus: Path, tok: Path, threads: int) -> dict:
    import sentencepiece as spm
    from tokenizers import Tokenizer

    from gristmill.config import TokenizeConfig
    from gristmill.pipelines import shards
    from gristmill.pipelines.tokenize import run_tokenize

    texts = []
    for e in shards.read_manifest(str(corpus))["shards"]:
        for b in shards.iter_batches(str(corpus / e["path"]), ["text"]):
            texts += b.column(0).to_pylist()
    out = WORK / "tokens"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    m = run_tokenize(str(corpus), str(tok), str(out), TokenizeConfig(seq_len=1024),
                     ["--runner", "DirectRunner", "--direct_num_workers", str(threads),
                      "--direct_running_mode", "multi_processing"]).manifest
    pipe_s = time.perf_counter() - t
    n_tokens = sum(s["tokens"] for s in m["splits"].values())
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    hf = Tokenizer.from_file(str(tok / "tokenizer.json"))
    t = time.perf_counter()
    enc = hf.encode_batch(texts, add_special_tokens=False)
    hf_s = time.perf_counter() - t
    hf_tokens = sum(len(e.ids) for e in enc) + len(texts)  # + one eos per document, as the pipeline counts
    sp = spm.SentencePieceProcessor(model_file=str(tok / "tokenizer.model"))
    t = time.perf_counter()
    sp_ids = sp.encode(texts, num_threads=threads)
    sp_s = time.perf_counter() - t
    assert hf_tokens == n_tokens == sum(map(len, sp_ids)) + len(texts), (hf_tokens, n_tokens)
    return {"documents": len(texts), "tokens": n_tokens, "threads": threads,
            "tokenize_pipeline_tokens_per_s": round(n_tokens / pipe_s), "tokenize_pipeline_s": round(pipe_s, 1),
            "hf_tokenizers_encode_batch_tokens_per_s": round(n_tokens / hf_s),
            "sentencepiece_encode_tokens_per_s": round(n_tokens / sp_s),
            "ratio_pipeline_over_hf": round(hf_s / pipe_s, 3),
            "note": "the pipeline figure is end to end (Beam start, reading shards, encoding, packing, writing Arrow); "
                    "the HF and SentencePiece figures are encoding in memory only"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--vocab", type=int, default=32_000)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    if not shutil.which("spm_train"):
        sys.exit("spm_train not found: apt-get install sentencepiece")
    WORK.mkdir(parents=True, exist_ok=True)
    corpus = build_corpus(args.docs)
    train = bench_training(corpus, args.vocab, args.reps)
    print(f"training ({train['text_mb']} MB, {train['lines']:,} lines, vocab {args.vocab:,}, BPE, 2 threads):")
    print(f"  gristmill tokenizer train  {train['gristmill_s']:8.2f} s")
    print(f"  spm_train 0.1.97           {train['spm_train_s']:8.2f} s")
    print(f"  sentencepiece 0.2.3, file  {train['sentencepiece_0_2_from_file_s']:8.2f} s  (same library as gristmill)")
    print(f"  ratio (time)               {train['ratio_time_gristmill_over_spm_train']:8.3f}x  (goal <= 1.1)")
    enc = bench_encoding(corpus, WORK / "tok_gm_0", args.threads)
    print(f"encoding ({enc['documents']:,} documents, {enc['tokens']:,} tokens, {args.threads} cores):")
    print(f"  gristmill tokenize (Beam, end to end)  {enc['tokenize_pipeline_tokens_per_s']:>12,} tokens/s")
    print(f"  HF tokenizers encode_batch             {enc['hf_tokenizers_encode_batch_tokens_per_s']:>12,} tokens/s")
    print(f"  SentencePiece encode (num_threads)     {enc['sentencepiece_encode_tokens_per_s']:>12,} tokens/s")
    print(f"  ratio pipeline / HF                    {enc['ratio_pipeline_over_hf']:>12.3f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"training": train, "encoding": enc}, indent=2))


if __name__ == "__main__":
    main()
