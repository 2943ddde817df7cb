"""``gristmill ablate``: the verdict rule, ablations refused before any work, and one end to end on a
tiny budget (real corpus runs on the DirectRunner, a shared tokenizer, Ray Train runs in parallel,
checkpoints evaluated as Ray tasks)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gristmill import api
from gristmill.config import load_config
from gristmill.trainer.ablate import AblationError, heldout_tokens, normalize_heldout, summarise

from .conftest import shared

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample"
CRAWL = SAMPLE / "crawl" / "dolma-cc-main-2019-30.jsonl.gz"
MC = SAMPLE / "eval" / "genesis_next_sentence_mc.jsonl"


def _runs(values: dict[str, list[float]], metric: str = "bpb:book") -> list[dict]:
    return [{"variant": v, "seed": s, "curve": [{"tokens": 1, metric: x}]}
            for v, xs in values.items() for s, x in enumerate(xs)]


def test_a_verdict_needs_a_corrected_paired_interval_that_excludes_zero():
    data = {n: {"documents": 1, "train_tokens": 1, "epochs": 1.0} for n in ("raw", "clean", "noisy")}
    table = summarise(_runs({"raw": [3.0, 3.1, 3.2], "clean": [2.5, 2.55, 2.6], "noisy": [2.5, 2.9, 3.3]}),
                      ["raw", "clean", "noisy"], "raw", data)
    by = {r["variant"]: r["metrics"]["bpb:book"] for r in table}
    assert "verdict" not in by["raw"]
    # paired by seed: -0.5, -0.55, -0.6; 2 comparisons, Holm: the smaller p-value is tested at 0.025
    assert by["clean"]["verdict"] == "better"
    assert by["clean"]["difference"] == pytest.approx(-0.55)
    lo, hi = by["clean"]["interval"]
    assert lo < -0.55 < hi < 0 and by["clean"]["confidence"] == pytest.approx(1 - 0.05 / 2)
    assert by["noisy"]["verdict"] == "no difference detectable"  # -0.5, -0.2, +0.1
    assert by["noisy"]["interval"][0] < 0 < by["noisy"]["interval"][1]
    assert by["clean"]["std"] == pytest.approx(0.05)
    from types import SimpleNamespace

    from gristmill.config import GristmillConfig
    from gristmill.trainer.ablate import markdown

    md = markdown(table, "raw", 1000, SimpleNamespace(seeds=[0, 1, 2]), GristmillConfig())
    assert "| clean | 1 | 1.00 | 2.5500 ± 0.0500 (-0.5500 [" in md and ", better) |" in md
    one = summarise(_runs({"raw": [3.0], "clean": [2.5]}), ["raw", "clean"], "raw", data)
    assert "one seed: no interval, no difference detectable" in markdown(one, "raw", 1000, SimpleNamespace(seeds=[0]),
                                                                         GristmillConfig())
    # loss per token beside bits per byte: shown with its interval, not tested (the same ranking)
    both = summarise([{**r, "curve": [{**r["curve"][0], "heldout:book": 2 * r["curve"][0]["bpb:book"]}]}
                      for r in _runs({"raw": [3.0, 3.1, 3.2], "clean": [2.5, 2.55, 2.6]})], ["raw", "clean"], "raw",
                     data)
    assert both[1]["metrics"]["heldout:book"]["verdict"] == "secondary"
    assert both[1]["metrics"]["bpb:book"]["confidence"] == pytest.approx(0.95)  # a family of one
    # accuracy: higher is better
    acc = summarise(_runs({"raw": [0.5, 0.52], "clean": [0.4, 0.41]}, "mc:x"), ["raw", "clean"], "raw", data)
    assert acc[1]["metrics"]["mc:x"]["verdict"] == "worse"
    # ... unless every variant is at chance (200 four-way items: chance 0.25 ± 2 × 0.031)
    chance = summarise(_runs({"raw": [0.25, 0.27], "clean": [0.22, 0.21]}, "mc:x"), ["raw", "clean"], "raw", data,
                       {"x": (200, 0.25)})
    assert chance[1]["metrics"]["mc:x"]["verdict"] == "at chance"
    assert chance[0]["metrics"]["mc:x"]["binomial_se"] == pytest.approx((0.26 * 0.74 / 200) ** 0.5)


def test_bits_per_byte_have_a_macro_average_over_held_out_sets():
    data = {n: {"documents": 1, "train_tokens": 1, "epochs": 1.0} for n in ("raw", "clean")}
    runs = [{"variant": v, "seed": s, "curve": [{"tokens": 1, "bpb:a": a, "bpb:b": b}]}
            for v, rows in {"raw": [(1.0, 2.0), (1.1, 2.1)], "clean": [(0.9, 1.9), (1.0, 2.0)]}.items()
            for s, (a, b) in enumerate(rows)]
    table = summarise(runs, ["raw", "clean"], "raw", data)
    assert list(table[0]["metrics"])[0] == "bpb:macro"
    assert table[0]["metrics"]["bpb:macro"]["seeds"] == pytest.approx([1.5, 1.6])
    assert table[1]["metrics"]["bpb:macro"]["difference"] == pytest.approx(-0.1)


def _config(tmp_path: Path, **ablate) -> Path:
    tree = {
        "langid": {"keep": ["en"]},
        "tokenizer": {"vocab_size": 1000, "input_sentence_size": 200_000},
        "tokenize": {"seq_len": 64, "val_fraction": 0.05},
        "model": {"preset": "tiny"},
        # no Ray: the runs two at a time in threads of this process (on Ray: test_ablate_on_ray_...)
        "pretrain": {"num_workers": 0, "cpus_per_worker": 1, "batch_size": 8, "micro_batch_size": 8,
                     "warmup_steps": 2, "log_every": 5, "eval_batches": 2, "peak_tflops": 1.0},
        "ablate": {"output": str(tmp_path / "ablation"), "inputs": [str(CRAWL)],
                   "variants": [{"name": "raw", "base": "raw"}, {"name": "default"}],
                   "seeds": [0, 1], "tokens": 10_240, "eval_points": 2,
                   "heldout": [str(shared("text/pg84_frankenstein.txt"))], "heldout_max_tokens": 4000,
                   "mc": [str(MC)],
                   # two runs at a time in threads of this process (each trains what it would alone:
                   # test_ablate_threads.py; the Ray test below compares its numbers with a run per Ray task)
                   "runs_per_process": 2, **ablate},
    }
    path = tmp_path / "ablate.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.mark.parametrize("ablate, message", [
    ({"variants": []}, "ablate.variants is empty"),
    ({"variants": [{"name": "a"}, {"name": "a"}]}, "names repeat"),
    ({"variants": [{"name": "a", "corpus": "/nonexistent/corpus"}]}, "is not a corpus directory"),
    ({"variants": [{"name": "a", "corpus": "/tmp", "set": {"clean.pii.enabled": False}}]}, "drop one"),
    ({"variants": [{"name": "a", "set": {"clean.no_such_filter.enabled": False}}]}, "ablate variant 'a'"),
    ({"baseline": "nope"}, "ablate.baseline 'nope' is not a variant"),
    ({"inputs": []}, "has no corpus and no inputs"),
    ({"heldout": ["/nonexistent.txt"]}, "is not a file"),
    ({"heldout": [], "mc": [], "crawl_heldout": 0}, "both empty"),
    ({"heldout": [str(shared("text/pg84_frankenstein.txt")).replace("pg84_frankenstein", "crawl")]}, "rename it"),
    ({"tokens": 1024, "eval_points": 5}, "exceeds the 2 training steps"),
    ({"seeds": [1, 1]}, "distinct seeds"),
])
def test_ablations_that_cannot_run_are_refused_before_any_work(tmp_path, ablate, message):
    cfg = load_config(_config(tmp_path, **ablate))
    with pytest.raises(AblationError, match=message):
        api.ablate(cfg)
    assert not (tmp_path / "ablation").exists()  # nothing written


def _ablate(config: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GRISTMILL_LOG_LEVEL": "INFO"}
    return subprocess.run([sys.executable, "-m", "gristmill", "ablate", "--config", str(config), *extra],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=1200)


@pytest.fixture(scope="module")
def tiny_ablation(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The tiny ablation on the command line, its runs in threads of its process: (config, first invocation)."""
    config = _config(tmp_path_factory.mktemp("ablate"))
    return config, _ablate(config)


@pytest.mark.slow
def test_ablate_end_to_end_on_a_tiny_budget(tiny_ablation):
    config, first = tiny_ablation
    assert first.returncode == 0, first.stderr[-4000:]
    out = config.parent / "ablation"
    assert "| raw |" in first.stdout and "| default |" in first.stdout
    assert "4 training run(s), 2 at once (in this process), 2 per process in threads" in first.stderr
    # said before the first run trains: how long it will take; then progress over all runs as each ends
    assert 0 <= first.stderr.index("estimated time: ") < first.stderr.index(": training")
    assert "1/4 runs evaluated, ETA" in first.stderr and "4/4 runs evaluated" in first.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["tokens_per_run"] == 20 * 8 * 64 and res["steps"] == 20
    assert res["time"]["estimated_s"] > 0 and res["time"]["step_s"] > 0 and res["time"]["train_and_evaluate_s"] > 0
    docs = {n: v["documents"] for n, v in res["variants"].items()}
    assert docs["raw"] > docs["default"] > 0  # the default's filters and dedup remove documents raw keeps
    runs = {(r["variant"], r["seed"]): r for r in res["runs"]}
    assert set(runs) == {("raw", 0), ("raw", 1), ("default", 0), ("default", 1)}
    for r in runs.values():
        assert [c["tokens"] for c in r["curve"]] == [5120, 10240]  # every checkpoint evaluated
        for c in r["curve"]:
            assert 0 < c["heldout:pg84_frankenstein"] < math.log(1000)  # learnt something: below uniform
        # multiple choice at the last checkpoint (the verdicts'): accuracy, and the right answer's bits per byte
        assert "mc:genesis_next_sentence_mc" not in r["curve"][0]
        assert 0 <= r["curve"][-1]["mc:genesis_next_sentence_mc"] <= 1
        assert 0 < r["curve"][-1]["mc_bpb:genesis_next_sentence_mc"] < math.log2(1000)
        assert r["curve"][1]["heldout:pg84_frankenstein"] < r["curve"][0]["heldout:pg84_frankenstein"]
    # seeds differ; the table is their mean
    assert runs[("raw", 0)]["curve"][-1] != runs[("raw", 1)]["curve"][-1]
    table = {row["variant"]: row for row in res["table"]}
    m = table["raw"]["metrics"]["heldout:pg84_frankenstein"]
    assert m["mean"] == pytest.approx(sum(runs[("raw", s)]["curve"][-1]["heldout:pg84_frankenstein"]
                                          for s in (0, 1)) / 2)
    assert table["default"]["metrics"]["bpb:pg84_frankenstein"]["verdict"] in (
        "better", "worse", "no difference detectable")
    assert table["default"]["metrics"]["heldout:pg84_frankenstein"]["verdict"] == "secondary"
    for r in runs.values():  # bits per byte of the held-out text: the loss per token times tokens per byte
        c = r["curve"][-1]
        assert 0 < c["bpb:pg84_frankenstein"] < c["heldout:pg84_frankenstein"] / math.log(2)
    # the floor: each variant's count models on the same held-out tokens; a model this small is near it
    floors = res["count_model_floor"]
    assert set(floors) == {"raw", "default"}
    for f in floors.values():
        assert 0 < f["pg84_frankenstein"]["bigram_bpb"] < f["pg84_frankenstein"]["unigram_bpb"]
    assert any("per parameter" in w for w in res["scale_warnings"])  # 10,240 tokens for a tiny model
    assert "scale too small" in (out / "results.md").read_text()
    assert res["leak_check"] and not any(r["leak"] for r in res["leak_check"])
    assert (out / "heldout_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "results.md").read_text().startswith("Each run: 10,240 training tokens")

    # the crawl's held-out set: drawn by id before any filter, in no variant's corpus, scored like the book
    crawl = res["crawl_heldout"]
    held = _corpus_ids(out / "heldout" / "crawl")
    assert crawl["documents"] == len(held) > 0 and crawl["base"] == "raw"
    held_out_read = _manifest_counts(out / "heldout" / "crawl")
    for name in ("raw", "default"):
        assert not held & _corpus_ids(out / "variants" / name / "corpus")
        counts = _manifest_counts(out / "variants" / name / "corpus")
        assert counts["read"] == held_out_read["read"]
        # what one job holds out, the other keeps as its only documents: one split, whatever the recipe
        assert counts["dropped"]["holdout:held_out"] == held_out_read["read"] - held_out_read["dropped"][
            "holdout:not_held_out"]
    for r in runs.values():
        c = r["curve"][-1]
        assert c["bpb:crawl"] > 0
        assert c["bpb:macro"] == pytest.approx((c["bpb:crawl"] + c["bpb:pg84_frankenstein"]) / 2)
    assert "Held-out set **crawl**" in (out / "results.md").read_text()

    # again: every step is done; nothing is retrained, the evaluation gives the same numbers
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.safetensors")}
    assert stamps
    again = _ablate(config)
    assert again.returncode == 0, again.stderr[-4000:]
    assert ": training" not in again.stderr and "corpus job over" not in again.stderr
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.safetensors")} == stamps
    assert json.loads((out / "results.json").read_text())["table"] == res["table"]

    # a budget the smallest variant cannot give without over-repeating it: refused before training
    big = _ablate(config, "--set", "ablate.tokens=50000000")
    assert big.returncode != 0
    assert "ablate.max_epochs" in big.stderr and "'default'" in big.stderr
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.safetensors")} == stamps


def _corpus_ids(corpus: Path) -> set[str]:
    from gristmill.documents import open_corpus

    return set(open_corpus(str(corpus)).to_table(columns=["id"]).column("id").to_pylist())


def _manifest_counts(corpus: Path) -> dict:
    return json.loads((corpus / "manifest.json").read_text())["counts"]


@pytest.mark.slow
def test_ablate_on_ray_trains_in_parallel_and_gives_the_in_process_numbers(tiny_ablation, tmp_path):
    """The same ablation (seed 0, the variants' corpora and tokenizer from the in-process one) with a Ray task
    per run (Ray Train's local mode in it, the default), two runs at once: the same curves as in process (runs
    sharing a process in threads compute the weights each computes alone)."""
    config, first = tiny_ablation
    assert first.returncode == 0, first.stderr[-4000:]
    local = config.parent / "ablation"
    variants = [{"name": n, "corpus": str(local / "variants" / n / "corpus")} for n in ("raw", "default")]
    tree = yaml.safe_load(config.read_text())
    tree["pretrain"]["num_workers"] = 1
    tree["ablate"].update(output=str(tmp_path / "ablation"), variants=variants, seeds=[0], crawl_heldout=0,
                          tokenizer=str(local / "tokenizer"), runs_per_process=1)
    ray_config = tmp_path / "ray.yaml"
    ray_config.write_text(yaml.safe_dump(tree))
    # stopped by the scheduler while its runs train in driver threads: it ends at once and cleanly ...
    proc = subprocess.Popen([sys.executable, "-m", "gristmill", "ablate", "--config", str(ray_config)],
                            stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "GRISTMILL_LOG_LEVEL": "INFO"})
    seen = []
    for line in proc.stderr:  # the state to stop in: a run is training
        seen.append(line)
        if ": training" in line:
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=300)[1]
    assert proc.returncode == 143, "".join(seen)[-3000:] + rest[-3000:]
    assert "interrupted by SIGTERM: stopped" in rest
    # ... and the same command resumes it (training: the stop did not wait for the runs to end)
    r = _ablate(ray_config)
    assert r.returncode == 0, r.stderr[-4000:]
    assert ": training" in r.stderr
    # the runs' Ray tasks print the loop's lines, not the import-time noise of Beam's optional extras
    assert "Failed to import" not in r.stderr and "Traceback" not in r.stderr
    assert "2 training run(s), 2 at once" in r.stderr
    curves = {(x["variant"], x["seed"]): x["curve"] for x in json.loads((tmp_path / "ablation" / "results.json")
                                                                       .read_text())["runs"]}
    expected = {(x["variant"], x["seed"]): x["curve"] for x in json.loads((local / "results.json").read_text())["runs"]
                if x["seed"] == 0}
    assert curves.keys() == expected.keys() == {("raw", 0), ("default", 0)}
    for key, curve in curves.items():
        assert [c["tokens"] for c in curve] == [c["tokens"] for c in expected[key]]
        for got, want in zip(curve, expected[key]):
            numbers = {k: v for k, v in want.items()  # without the crawl's held-out set here (nor its macro)
                       if isinstance(v, float) and not k.endswith((":crawl", ":macro"))}
            assert numbers and {k: got[k] for k in numbers} == pytest.approx(numbers, rel=1e-6), key


def test_heldout_text_is_normalised_like_the_corpus():
    book = ("\ufeffProject Gutenberg's Book, by Someone\r\n\r\nLicence text.\r\n"
            "*** START OF THIS PROJECT GUTENBERG EBOOK BOOK ***\r\n\r\n"
            "It was a dark and stormy\r\nnight; the rain fell in\r\ntorrents.\r\n\r\n"
            "Then it stopped.\r\n\r\n"
            "End of the Project Gutenberg EBook of Book\r\n"
            "*** END OF THIS PROJECT GUTENBERG EBOOK BOOK ***\r\nMore licence.\r\n")
    assert normalize_heldout(book) == "It was a dark and stormy night; the rain fell in torrents.\n\nThen it stopped."
    assert normalize_heldout("no header here\njust wrapped") == "no header here just wrapped"
    real = normalize_heldout(Path(shared("text/pg84_frankenstein.txt")).read_text(encoding="utf-8"))
    assert "Gutenberg" not in real and "\r" not in real
    assert real.endswith("lost in darkness and distance.")
    assert max(map(len, real.split("\n\n"))) > 1000  # paragraphs, not 70-character printed lines


def test_a_long_heldout_set_is_sampled_over_its_whole_length():
    class Chars:  # a "tokenizer": one token per character
        def encode(self, t):
            return [ord(c) for c in t]

        def eos_id(self):
            return 0

    text = "".join(chr(65 + i // 1000) for i in range(26_000))  # A×1000, B×1000, ..., Z×1000
    toks = heldout_tokens(Chars(), [text], max_tokens=5000, window=1000)
    assert len(toks) == 5000
    firsts = [chr(t) for t in toks[::1000]]
    assert firsts[0] == "A" and firsts[-1] >= "Y"  # from the start to the end, not the head only
    assert len(set(firsts)) == 5
    short = heldout_tokens(Chars(), ["ab", "c"], max_tokens=100)
    assert list(short) == [97, 98, 0, 99, 0]


def test_planted_damage_shuffles_a_fraction_of_documents_deterministically():
    from gristmill.pipelines import damage

    assert damage.FUNCTION == __import__("gristmill.trainer.ablate", fromlist=["x"]).DAMAGE_FUNCTION
    docs = [f"line one of document {i} has words\nand a second line {i} here" for i in range(2000)]
    out = [damage.shuffle_words(d, {"fraction": 0.3}).text for d in docs]
    changed = [o != d for o, d in zip(out, docs)]
    assert 0.25 < sum(changed) / len(docs) < 0.35
    assert out == [damage.shuffle_words(d, {"fraction": 0.3}).text for d in docs]  # the same documents, the same way
    for o, d in zip(out, docs):
        assert sorted(o.split()) == sorted(d.split())  # the same words ...
        assert [len(x.split()) for x in o.split("\n")] == [len(x.split()) for x in d.split("\n")]  # ... and lines
    assert all(damage.shuffle_words(d, {"fraction": 1.0}).text != d for d in docs[:50])


def test_a_damaged_variant_is_the_variant_with_the_damage_filter_last(tmp_path):
    from gristmill.trainer.ablate import plan_variants

    cfg = load_config(_config(tmp_path, variants=[
        {"name": "default"}, {"name": "damaged", "damage": 0.5},
        {"name": "custom", "set": {"clean.pii.enabled": False}, "damage": 0.2}]))
    v = {x.name: x for x in plan_variants(cfg, str(tmp_path / "out"))}
    assert not v["default"].cfg.clean.custom_filters
    f = v["damaged"].cfg.clean.custom_filters[-1]
    assert (f.name, f.function, f.params) == ("planted_damage", "gristmill.pipelines.damage:shuffle_words",
                                              {"fraction": 0.5})
    assert not v["custom"].cfg.clean.pii.enabled and v["custom"].cfg.clean.custom_filters[-1].params["fraction"] == 0.2


def test_a_run_directory_of_other_settings_is_started_over_before_anything_counts_it(tmp_path):
    """A run directory holding a run of another config or data is removed up front: its checkpoints would
    otherwise count as trained in the estimate and the progress (seen: "ETA 1 min" with 24 of 30 runs to go)."""
    from gristmill.config import GristmillConfig
    from gristmill.trainer.ablate import _start_over_if_stale, _Steps

    tokens = tmp_path / "tokens"
    tokens.mkdir()
    (tokens / "manifest.json").write_text('{"a": 1}')
    steps = _Steps(str(tmp_path))

    def cfg(lr: float) -> GristmillConfig:
        return GristmillConfig.model_validate({"pretrain": {"storage_path": str(tmp_path / "runs"), "name": "r",
                                                            "data": str(tokens), "lr": lr}})

    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint_00000010").mkdir()  # an earlier invocation's, of unknown settings
    _start_over_if_stale(cfg(1e-3), steps)
    assert not run_dir.exists()
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("{}\n")
    _start_over_if_stale(cfg(1e-3), _Steps(str(tmp_path)))  # the same run, a later invocation: kept
    assert (run_dir / "metrics.jsonl").exists()
    _start_over_if_stale(cfg(2e-3), _Steps(str(tmp_path)))  # another learning rate: started over
    assert not run_dir.exists()
    (run_dir).mkdir(parents=True)
    (tokens / "manifest.json").write_text('{"a": 2}')  # the same settings, other data: started over
    _start_over_if_stale(cfg(2e-3), _Steps(str(tmp_path)))
    assert not run_dir.exists()


def test_a_run_recorded_when_adamw_was_the_default_is_started_over_under_muon(tmp_path):
    """A config dump leaves the optimizer out at its default, so an ablation recorded when AdamW was the default
    has the fingerprint a Muon run's dump would give: its AdamW runs must not count as this version's runs."""
    from gristmill.config import GristmillConfig
    from gristmill.trainer.ablate import _manifest_sha, _sha, _start_over_if_stale, _Steps

    tokens = tmp_path / "tokens"
    tokens.mkdir()
    (tokens / "manifest.json").write_text('{"a": 1}')
    cfg = GristmillConfig.model_validate({"pretrain": {"storage_path": str(tmp_path / "runs"), "name": "r",
                                                       "data": str(tokens)}})
    assert cfg.pretrain.optimizer == "muon" and "optimizer" not in cfg.model_dump(mode="json")["pretrain"]
    before = _sha({"config": cfg.model_dump(mode="json"), "data": _manifest_sha(str(tokens))})  # as recorded then
    _Steps(str(tmp_path)).record("run:r", before)
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("{}\n")
    _start_over_if_stale(cfg, _Steps(str(tmp_path)))
    assert not run_dir.exists()
    run_dir.mkdir(parents=True)
    _start_over_if_stale(cfg, _Steps(str(tmp_path)))  # recorded now under Muon: kept
    assert run_dir.exists()
