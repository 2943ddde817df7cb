"""The ablation's leak check (trainer/leaks.py): held-out text in a variant's corpus or in its quality
classifier's training inputs stops the ablation before any training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gristmill import api
from gristmill.config import GristmillConfig
from gristmill.pipelines import quality
from gristmill.trainer import leaks
from gristmill.trainer.ablate import AblationError, DataSteps, Variant, _check_leaks, normalize_heldout

from .conftest import REPO, shared

BOOK = shared("text/pg84_frankenstein.txt")
OTHER_BOOK = shared("text/pg1342_pride_and_prejudice.txt")
CRAWL = REPO / "sample" / "crawl" / "dolma-cc-main-2019-30.jsonl.gz"


def _text(path) -> str:
    return normalize_heldout(Path(path).read_text(encoding="utf-8"))


def test_a_copy_is_a_leak_and_another_book_is_not():
    book, other = _text(BOOK), _text(OTHER_BOOK)
    paragraphs = book.split("\n\n")
    heldout = {"book": ([book], None)}
    rows = leaks.check(heldout, [
        leaks.Source("a crawl holding a third of the book", lambda: paragraphs[: len(paragraphs) // 3]),
        leaks.Source("another book", lambda: [other]),
        leaks.Source("a crawl quoting one sentence", lambda: ["He said: " + paragraphs[40][:200]]),
    ], max_share=0.01)
    third, other_book, quote = rows
    assert third["leak"] and 0.2 < third["share"] < 0.5
    assert not other_book["leak"] and other_book["shared_ngrams"] < 5
    assert not quote["leak"] and quote["shared_ngrams"] > 0
    # a source that cannot be read here is compared by SHA-256 with the held-out file
    sha = leaks.check({"book": ([book], "abc")}, [leaks.Source("gone", None, "abc"), leaks.Source("x", None, "def")],
                      0.01)
    assert [r["leak"] for r in sha] == [True, False] and sha[0]["checked"] == "sha256"


class _A:  # the ablate settings _check_leaks reads
    def __init__(self, heldout, allow=False):
        self.heldout, self.allow_overlap, self.max_heldout_overlap = heldout, allow, 0.01


def test_overlap_stops_the_ablation_naming_both_files_unless_allowed(tmp_path):
    variant = Variant("raw", GristmillConfig(), ("crawl",), str(tmp_path / "corpus"), str(tmp_path / "tokens"))
    data = DataSteps(run_corpus=None, train_tokenizer=None, tokenize=None,
                     corpus_texts=lambda corpus: [_text(BOOK)[:20_000]])
    heldout = {"pg84_frankenstein": [_text(BOOK)]}
    with pytest.raises(AblationError, match=r"'pg84_frankenstein' in variant 'raw'.s corpus .*--allow-overlap"):
        _check_leaks([variant], heldout, {"pg84_frankenstein": str(BOOK)}, _A([str(BOOK)]), data)
    rows = _check_leaks([variant], heldout, {"pg84_frankenstein": str(BOOK)}, _A([str(BOOK)], allow=True), data)
    assert rows[0]["leak"] and rows[0]["share"] > 0.01


def test_the_shipped_quality_classifier_was_not_trained_on_the_shipped_held_out_sets():
    """configs/ablate.yaml holds out Frankenstein and the State of the Union addresses and asks
    multiple-choice questions of Genesis: the classifier a `quality` variant uses must not have seen them."""
    import yaml

    shipped = yaml.safe_load((REPO / "configs" / "ablate.yaml").read_text())["ablate"]
    inputs = json.loads((quality.SHIPPED_MODEL.parent / "metadata.json").read_text())["inputs"]
    names = {Path(i["path"]).name for i in inputs}
    for held in shipped["heldout"] + shipped["mc"]:
        assert Path(held).name not in names, held
    assert "nltk_genesis_multilingual.jsonl" not in names  # the multiple-choice set's source
    # and by content, as the ablation checks it
    sources = [leaks.Source(path, texts) for path, _, texts in api._quality_inputs(None) if texts is not None]
    heldout = {Path(p).stem: ([_text(REPO / p)], None) for p in shipped["heldout"] if p.endswith(".txt")}
    assert sources and heldout
    assert not [r for r in leaks.check(heldout, sources, 0.01) if r["leak"]]


@pytest.mark.slow
def test_a_planted_overlap_is_refused_before_any_training(tmp_path):
    """The held-out book planted in the crawl (raw variant) and in a classifier's recorded inputs (quality
    variant): the ablation stops after the corpora, naming both, and trains nothing."""
    planted = tmp_path / "planted.jsonl"
    paragraphs = [p for p in _text(BOOK).split("\n\n") if len(p) > 400][:60]
    planted.write_text("".join(json.dumps({"id": f"p{i}", "text": p}) + "\n" for i, p in enumerate(paragraphs)))
    model_dir = tmp_path / "classifier"
    model_dir.mkdir()
    shutil.copy(quality.SHIPPED_MODEL, model_dir / "model.bin")
    (model_dir / "metadata.json").write_text(json.dumps({"inputs": [
        {"path": str(BOOK), "label": "hq", "sha256": "x"}]}))
    cfg = GristmillConfig.model_validate({
        "langid": {"keep": ["en"]},
        "ablate": {"output": str(tmp_path / "ablation"), "inputs": [str(CRAWL), str(planted)],
                   "variants": [{"name": "raw", "base": "raw"},
                                {"name": "q", "set": {"clean.quality.enabled": True,
                                                      "clean.quality.model": str(model_dir / "model.bin")}}],
                   "seeds": [0], "tokens": 10_240, "eval_points": 1, "heldout": [str(BOOK)], "crawl_heldout": 0},
        "tokenize": {"seq_len": 64}, "pretrain": {"batch_size": 8, "micro_batch_size": 8, "num_workers": 0}})
    with pytest.raises(AblationError) as e:
        api.ablate(cfg, ["--runner", "DirectRunner"])
    message = str(e.value)
    assert "variant 'raw'" in message and str(BOOK) in message and "quality classifier" in message
    assert not (tmp_path / "ablation" / "runs").exists() and not (tmp_path / "ablation" / "tokenizer").exists()
