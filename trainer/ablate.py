"""``gristmill ablate``: does a pipeline choice train a better model? FineWeb's method, in one command.

For each data variant (a corpus directory, or a corpus run over the same crawl with other settings —
e.g. ``raw``: extraction and language ID only, the defaults, the defaults with the quality classifier):

1. the corpus (``gristmill corpus``), skipped for a variant given as a directory;
2. one shared tokenizer (trained on one variant's corpus, or given), every variant tokenized with it;
3. the same model pretrained with the same settings for the same number of tokens, once per seed
   (Ray Train, as ``gristmill pretrain``; several runs at once when Ray has the CPUs or GPUs for them);
4. every run's evenly spaced checkpoints evaluated on the same held-out sets — bits per UTF-8 byte of
   held-out clean text never trained on (comparable across tokenizers; the mean over sets is the
   headline), loss per token, and multiple-choice accuracy — as Ray tasks;
5. ``results.json``, ``results.md`` (variant × metric, mean ± standard deviation over seeds, the
   difference from the baseline paired by seed with its corrected interval, and a verdict) and
   ``heldout_loss.png`` (held-out loss against training tokens).

A variant is called better (or worse) than the baseline on a metric only when the 95 % t-interval of
its difference, paired by seed and Holm-corrected over every variant × metric comparison of the table,
excludes 0 (trainer/ablation_stats.py); otherwise "no difference detectable". A multiple-choice set on
which every variant is within chance ± 2 binomial standard errors gets no verdict ("at chance").

Each finished step is recorded (``steps.json``: a fingerprint of what it read and its settings);
run again, the command skips what is done and resumes training runs from their last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gristmill import io
from gristmill.config import ConfigError, GristmillConfig, _set_dotted
from gristmill.errors import GristmillError
from gristmill.outputs import begin_output, check_output
from gristmill.trainer import ablation_stats, ablation_time, floor, leaks

log = logging.getLogger("gristmill.ablate")

#: ``base: raw``: what is left of the corpus job is reading, main-text extraction and language ID
RAW_OVERRIDES = {
    "clean.normalize.fix_unicode": False,
    "clean.normalize.unicode_form": "none",
    "clean.url_blocklist.enabled": False,
    "clean.gopher_repetition.enabled": False,
    "clean.gopher_quality.enabled": False,
    "clean.c4_lines.enabled": False,
    "clean.fineweb_quality.enabled": False,
    "clean.pii.enabled": False,
    "clean.quality.enabled": False,
    "clean.custom_filters": [],
    "exact_dedup.enabled": False,
    "near_dedup.enabled": False,
    "decontaminate.files": [],
}


#: the held-out set drawn from the crawl (``ablate.crawl_heldout``): its name in tables and metrics
CRAWL_SET = "crawl"
#: a crawl held-out document sharing more than this share of its 13-grams with a variant's corpus is a copy of a
#: training document (the same page under another id, a mirror): it leaves the held-out set, counted
NEAR_COPY_SHARE = 0.5

#: pipelines/damage.py's filter, named by its import path (the trainer imports no pipeline module)
DAMAGE_FUNCTION = "gristmill.pipelines.damage:shuffle_words"


class AblationError(GristmillError):
    """An ablation that cannot run as configured; the message names the variant or key and the fix."""


@dataclass
class Variant:
    name: str
    cfg: GristmillConfig  # the corpus settings it is built with (the file's, for a given directory)
    inputs: tuple[str, ...]  # empty for a given corpus directory
    corpus: str
    tokens: str


# ---------------------------------------------------------------------------------------------
# Checks and plan, before any work
# ---------------------------------------------------------------------------------------------


def variant_config(cfg: GristmillConfig, base: str, overrides: dict, name: str) -> GristmillConfig:
    """The file's config with the variant's base and overrides applied."""
    tree = cfg.model_dump(mode="json")
    tree.pop("ablate", None)
    for key, value in {**(RAW_OVERRIDES if base == "raw" else {}), **overrides}.items():
        try:
            _set_dotted(tree, key, value)
        except ConfigError as e:
            raise AblationError(f"ablate variant {name!r}: {e}") from None
    try:
        return GristmillConfig.model_validate(tree)
    except Exception as e:  # pydantic's ValidationError: name the variant
        raise AblationError(f"ablate variant {name!r}: its settings are not a valid config: {e}") from None


def plan_variants(cfg: GristmillConfig, out: str) -> list[Variant]:
    a = cfg.ablate
    if not a.variants:
        raise AblationError("ablate.variants is empty: name at least two data variants to compare, e.g. "
                            "[{name: raw, base: raw}, {name: default}] (see configs/ablate.yaml)")
    names = [v.name for v in a.variants]
    if len(set(names)) != len(names):
        raise AblationError(f"ablate variant names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    for key in ("baseline", "tokenizer_from"):
        if getattr(a, key) is not None and getattr(a, key) not in names:
            raise AblationError(f"ablate.{key} {getattr(a, key)!r} is not a variant ({', '.join(names)})")
    if not a.seeds or len(set(a.seeds)) != len(a.seeds):
        raise AblationError(f"ablate.seeds {list(a.seeds)} must be one or more distinct seeds")
    if not a.heldout and not a.mc and not crawl_heldout_on(cfg):
        raise AblationError("ablate.heldout and ablate.mc are both empty and no share of the crawl is held out "
                            "(ablate.crawl_heldout with ablate.inputs): name held-out clean text (.txt/.jsonl) "
                            "and/or multiple-choice files to compare the variants on")
    if crawl_heldout_on(cfg) and CRAWL_SET in {Path(p).stem for p in a.heldout}:
        raise AblationError(f"ablate.heldout: a file named {CRAWL_SET!r} would share its name with the held-out set "
                            "drawn from the crawl (ablate.crawl_heldout); rename it")
    variants = []
    for v in a.variants:
        root = io.join(out, "variants", v.name)
        if v.corpus is not None:
            if v.inputs or v.set or v.base != "default" or v.damage is not None:
                raise AblationError(f"ablate variant {v.name!r} gives a corpus directory and corpus settings "
                                    "(inputs/base/set): a given corpus is used as it is; drop one")
            corpus = os.path.abspath(v.corpus)
            manifest_path = os.path.join(corpus, "manifest.json")
            if not os.path.isfile(manifest_path):
                raise AblationError(f"ablate variant {v.name!r}: {corpus} is not a corpus directory (no manifest.json;"
                                    " a finished `gristmill corpus` output)")
            kind = json.loads(Path(manifest_path).read_text()).get("kind")
            if kind != "corpus":
                raise AblationError(f"ablate variant {v.name!r}: {corpus} holds {kind or 'no gristmill output'}, "
                                    "not a corpus: give the directory `gristmill corpus` wrote")
            variants.append(Variant(v.name, cfg, (), corpus, io.join(root, "tokens")))
            continue
        inputs = v.inputs or a.inputs
        if not inputs:
            raise AblationError(f"ablate variant {v.name!r} has no corpus and no inputs: set ablate.inputs (the "
                                "crawl every variant runs on) or the variant's corpus/inputs")
        overrides = dict(v.set)
        if crawl_heldout_on(cfg):  # the same documents out of every variant's corpus, whatever its recipe
            overrides.update({"holdout.fraction": a.crawl_heldout, "holdout.keep": "rest"})
        if v.damage is not None:  # a custom filter after the variant's own (pipelines/damage.py)
            own = overrides.get("clean.custom_filters", [f.model_dump(mode="json") for f in cfg.clean.custom_filters])
            overrides["clean.custom_filters"] = [*own, {"name": "planted_damage", "function": DAMAGE_FUNCTION,
                                                        "params": {"fraction": v.damage}}]
        variants.append(Variant(v.name, variant_config(cfg, v.base, overrides, v.name), tuple(inputs),
                                io.join(root, "corpus"), io.join(root, "tokens")))
    return variants


def crawl_heldout_on(cfg: GristmillConfig) -> bool:
    return bool(cfg.ablate.crawl_heldout and cfg.ablate.inputs)


def plan_crawl_heldout(cfg: GristmillConfig, out: str) -> Variant | None:
    """The corpus job that keeps only the crawl's held-out documents (``ablate.crawl_heldout``), processed as
    ``ablate.crawl_heldout_base`` says; None when no share is held out."""
    a = cfg.ablate
    if not crawl_heldout_on(cfg):
        return None
    overrides = {"holdout.fraction": a.crawl_heldout, "holdout.keep": "held_out"}
    hcfg = variant_config(cfg, a.crawl_heldout_base, overrides, f"{CRAWL_SET} (held out)")
    return Variant(CRAWL_SET, hcfg, tuple(a.inputs), io.join(out, "heldout", CRAWL_SET), "")


def crawl_heldout_texts(texts, max_chars: int) -> list[str]:
    """The held-out documents to score, up to ``max_chars`` (they are a hash sample of the crawl already, so
    the first ones are as good a sample as any; the rest would only be cut to ``heldout_max_tokens``)."""
    out, total = [], 0
    for t in texts:
        if t.strip():
            out.append(t)
            total += len(t)
            if total >= max_chars:
                break
    return out


_GUTENBERG_START = re.compile(r"^\*\*\* ?START OF (?:THIS|THE) PROJECT GUTENBERG EBOOK[^\n]*\n", re.I | re.M)
_GUTENBERG_END = re.compile(
    r"^(?:\*\*\* ?END OF (?:THIS|THE) PROJECT GUTENBERG EBOOK|End of (?:the )?Project Gutenberg)", re.I | re.M)


def normalize_heldout(text: str) -> str:
    """Held-out text as the corpus holds text: Unicode line ends, a Project Gutenberg header and footer
    (licence boilerplate, not the book) cut off, and hard-wrapped lines joined into their paragraphs (a
    printed book's line breaks are typesetting; C4's line rules judge web lines, and a model is scored
    on prose, not on where a printer broke it). Paragraphs stay separated by a blank line."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    start = _GUTENBERG_START.search(text)
    end = _GUTENBERG_END.search(text, start.end()) if start else None
    if start and end and start.end() < end.start():
        text = text[start.end():end.start()]
    paragraphs = (" ".join(line.strip() for line in block.splitlines() if line.strip())
                  for block in re.split(r"\n\s*\n", text))
    return "\n\n".join(p for p in paragraphs if p)


def heldout_texts(path: str) -> list[str]:
    """A held-out set's documents (normalised: :func:`normalize_heldout`): a .txt file is one, a .jsonl
    file one per record (its ``text``)."""
    p = Path(path)
    if not p.is_file():
        raise AblationError(f"ablate.heldout: {path} is not a file")
    if p.suffix == ".jsonl":
        texts = []
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    texts.append(str(json.loads(line)["text"]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise AblationError(f"ablate.heldout: {path}:{n} is not a JSON record with a text field") from None
    else:
        texts = [p.read_text(encoding="utf-8", errors="replace")]
    texts = [t for t in map(normalize_heldout, texts) if t.strip()]
    if not texts:
        raise AblationError(f"ablate.heldout: {path} holds no text")
    return texts


def heldout_tokens(sp, texts: list[str], max_tokens: int, window: int = 1024) -> np.ndarray:
    """The set as training sees text (each document's tokens followed by eos, concatenated), and of a set
    longer than ``max_tokens``, windows of ``window`` tokens evenly spaced over all of it: the whole
    book or every record is sampled, never only its head (a book's first chapters are not the book)."""
    ids: list[int] = []
    for t in texts:
        ids.extend(sp.encode(t))
        ids.append(sp.eos_id())
    if len(ids) <= max_tokens:
        return np.asarray(ids, dtype=np.int64)
    count = max(1, round(max_tokens / window))
    window = max_tokens // count  # count windows of about ``window`` tokens, max_tokens in all (less a remainder)
    stride = (len(ids) - window) / max(count - 1, 1)
    picked = [ids[round(i * stride): round(i * stride) + window] for i in range(count)]
    return np.asarray([x for w in picked for x in w], dtype=np.int64)


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class _Steps:
    """steps.json: the fingerprint of every finished step; a step is redone when its fingerprint changed."""

    def __init__(self, out: str):
        self.path = io.join(out, "steps.json")
        self.done = io.read_json(self.path) if io.exists(self.path) else {}
        self.lock = threading.Lock()

    def finished(self, step: str, fingerprint: str) -> bool:
        return self.done.get(step) == fingerprint

    def record(self, step: str, fingerprint: str) -> None:
        with self.lock:  # training runs record from several threads
            self.done[step] = fingerprint
            io.write_json_atomic(self.path, dict(self.done))


# ---------------------------------------------------------------------------------------------
# Evaluation of one run's checkpoints (a Ray task)
# ---------------------------------------------------------------------------------------------


def scored_targets(tokens: np.ndarray, seq_len: int, stride: int = 1) -> np.ndarray:
    """The tokens :func:`heldout_loss` predicts: the last seq_len of every ``stride``-th window."""
    rows = heldout_windows(tokens, seq_len, stride)
    return rows[:, 1:].reshape(-1) if len(rows) else tokens[:0]


def heldout_windows(tokens: np.ndarray, seq_len: int, stride: int = 1) -> np.ndarray:
    """Non-overlapping windows of seq_len + 1 tokens (the remainder is not scored), every ``stride``-th."""
    n = (len(tokens) - 1) // seq_len
    if n == 0:
        return np.zeros((0, seq_len + 1), dtype=tokens.dtype)
    return np.stack([tokens[i * seq_len: i * seq_len + seq_len + 1] for i in range(0, n, stride)])


def heldout_loss(model, tokens: np.ndarray, seq_len: int, batch_size: int = 8, stride: int = 1) -> float:
    """Mean next-token loss over :func:`heldout_windows` (on the model's device)."""
    import torch

    device = next(model.parameters()).device
    rows = heldout_windows(tokens, seq_len, stride)
    if len(rows) == 0:
        raise AblationError(f"a held-out set of {len(tokens)} tokens is shorter than one sequence of {seq_len + 1}")
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(rows), batch_size):
            x = torch.from_numpy(rows[s: s + batch_size]).to(device)
            logits = model(x[:, :-1]).float()
            total += float(torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="sum"))
            count += x[:, 1:].numel()
    return total / count


#: the curve's checkpoints before the last are scored on every CURVE_STRIDE-th window of each held-out set: the
#: curve is for the plot, the verdicts read the last checkpoint (all windows); scoring every checkpoint in full
#: cost the shipped ablation three times its training
CURVE_STRIDE = 4


def evaluate_checkpoints(checkpoints: list[str], heldout: dict[str, np.ndarray], mc: dict[str, list[dict]],
                         seq_len: int, threads: int = 1, device: str = "cpu") -> list[dict]:
    """Every checkpoint: loss on each held-out set, accuracy on each multiple-choice file."""
    import torch

    from gristmill.log import drop_known_noise

    drop_known_noise()  # a Ray task: gristmill's logging is not set up here
    from gristmill.tokenizer.train import load
    from gristmill.trainer.checkpoint import load_model, read_state
    from gristmill.trainer.evaluate import multiple_choice

    torch.set_num_threads(threads)
    rows = []
    scored_bytes: dict[tuple[str, int, int], int] = {}
    for k, path in enumerate(checkpoints):
        model = load_model(path).eval().to(device)
        sp = load(path)
        state = read_state(Path(path))
        row = {"checkpoint": path, "step": int(state["step"]), "tokens": int(state["tokens_seen"])}
        for name, toks in heldout.items():
            n_ctx = min(seq_len, model.args.max_seq_len)
            # the last checkpoint on every window; the curve's earlier ones on a quarter (at least one window)
            stride = 1 if k == len(checkpoints) - 1 else max(1, min(CURVE_STRIDE, (len(toks) - 1) // n_ctx))
            loss = heldout_loss(model, toks, n_ctx, stride=stride)
            targets = scored_targets(toks, n_ctx, stride)
            if (name, n_ctx, stride) not in scored_bytes:  # the UTF-8 bytes of the text those tokens spell
                scored_bytes[(name, n_ctx, stride)] = len(sp.decode([int(t) for t in targets]).encode("utf-8"))
            row[f"bpb:{name}"] = ablation_stats.bits_per_byte(loss, len(targets), scored_bytes[(name, n_ctx, stride)])
            row[f"heldout:{name}"] = loss
        if mc and k == len(checkpoints) - 1:  # the verdicts read the last checkpoint; the plot shows held-out loss
            for name, items in mc.items():
                r = multiple_choice(model, sp, items)
                row[f"mc:{name}"] = r["accuracy"]
                row[f"mc_norm:{name}"] = r["accuracy_norm"]
                row[f"mc_bpb:{name}"] = r["answer_bpb"]
        rows.append(row)
    return rows


def train_and_evaluate_run(run_config: dict, heldout: dict[str, np.ndarray], mc: dict[str, list[dict]], seq_len: int,
                           threads: int) -> list[dict]:
    """One run of one worker as one Ray task: trained in Ray Train's local mode in this process (resuming
    from its newest checkpoint), then its checkpoints evaluated here, on its GPU when it has one. No Ray
    Train run starts per run (a controller and a worker group: ~10 s each on the development machine), and
    on a GPU several such tasks share the device (``ablate.runs_per_gpu``)."""
    from gristmill.trainer.launch import run_training

    return train_and_evaluate_runs([run_config], heldout, mc, seq_len, threads, run_training)[0]


def _train_and_evaluate_one_task(run_configs: list[dict], heldout: dict[str, np.ndarray], mc: dict[str, list[dict]],
                                 seq_len: int, threads: int) -> list[list[dict]]:
    """:func:`train_and_evaluate_run` as a Ray task of a group of one (what ``runs_per_process: 1`` runs)."""
    (run_config,) = run_configs
    return [train_and_evaluate_run(run_config, heldout, mc, seq_len, threads)]


def train_and_evaluate_runs(run_configs: list[dict], heldout: dict[str, np.ndarray], mc: dict[str, list[dict]],
                            seq_len: int, threads: int, train: Callable | None = None) -> list[list[dict]]:
    """Several runs of one worker in this process at once, a thread each (``ablate.runs_per_process``): each
    trained without Ray Train (``launch.train_in_this_thread``: its newest checkpoint resumed), then its
    checkpoints evaluated in its thread, on the GPU when there is one — several small models sharing one
    process and its device. ``train``: another way to train one run (one run as one Ray task: Ray Train's
    local mode). Returns each run's evaluation rows, in order."""
    import torch

    from gristmill.log import drop_known_noise

    drop_known_noise()  # a Ray task: gristmill's logging is not set up here (before anything imports Beam)
    from gristmill.trainer.checkpoint import is_complete, read_state
    from gristmill.trainer.launch import train_in_this_thread

    train = train or train_in_this_thread
    torch.set_num_threads(max(1, threads))

    def one(run_config: dict) -> list[dict]:
        tree = dict(run_config)
        tree["pretrain"] = {**tree["pretrain"], "num_workers": 0}
        cfg = GristmillConfig.model_validate(tree)
        p = cfg.pretrain
        run_dir = Path(p.storage_path) / p.name
        if not is_complete(run_dir / f"checkpoint_{p.max_steps:08d}"):
            train(cfg, "pretrain")
        checkpoints = sorted(str(d) for d in run_dir.glob("checkpoint_*") if is_complete(d)
                             and read_state(d)["step"] <= p.max_steps)
        device = "cuda" if p.use_gpu and torch.cuda.is_available() else "cpu"
        return evaluate_checkpoints(checkpoints, heldout, mc, seq_len, threads, device)

    if len(run_configs) == 1:
        return [one(run_configs[0])]
    with ThreadPoolExecutor(len(run_configs), thread_name_prefix="ablation-model") as pool:
        return list(pool.map(one, run_configs))


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


@dataclass
class AblationResult:
    output: str
    table: list[dict]
    results_path: str
    markdown: str
    plot_path: str | None
    seconds: float


@dataclass(frozen=True)
class DataSteps:
    """The data stages an ablation runs, given by the caller (``gristmill.api.ablate``): the trainer stage
    imports no stage above it (pipelines → tokenizer → trainer), yet an ablation starts from the crawl."""

    run_corpus: Callable  # (inputs, output, config, beam_args, overwrite=, progress=)
    train_tokenizer: Callable  # (corpus, output, config, progress=, overwrite=)
    tokenize: Callable  # (corpus, tokenizer, output, config, beam_args, overwrite=)
    #: the texts of a corpus directory (the leak check); None: corpora are not checked
    corpus_texts: Callable | None = None  # (corpus) -> Iterable[str]
    #: what a quality classifier was trained on: [(path, sha256, texts() or None)]; None: not checked
    quality_inputs: Callable | None = None  # (model path or None) -> list[tuple[str, str | None, Callable | None]]


def run_ablation(cfg: GristmillConfig, steps_of_data: DataSteps, beam_args: list[str] | None = None,
                 overwrite: bool = False, progress: bool = False) -> AblationResult:
    t0 = time.time()
    a = cfg.ablate
    out = os.path.abspath(a.output)
    variants = plan_variants(cfg, out)
    crawl = plan_crawl_heldout(cfg, out)
    baseline = a.baseline or variants[0].name
    heldout_docs = {Path(p).stem: heldout_texts(p) for p in a.heldout}
    heldout_files: dict[str, str | None] = {Path(p).stem: p for p in a.heldout}
    if len(heldout_docs) != len(a.heldout):
        raise AblationError(f"ablate.heldout: two files share a name ({list(a.heldout)}); each set is named by its "
                            "file name")
    from gristmill.trainer.evaluate import read_mc

    try:
        mc = {Path(p).stem: read_mc(p) for p in a.mc}
    except (OSError, ValueError) as e:
        raise AblationError(f"ablate.mc: {e}") from None
    if a.tokenizer is not None and not os.path.isfile(os.path.join(a.tokenizer, "tokenizer.model")):
        raise AblationError(f"ablate.tokenizer: {a.tokenizer} is not a tokenizer directory (no tokenizer.model)")
    seq_len, batch = cfg.tokenize.seq_len, cfg.pretrain.batch_size
    if a.tokens is not None:
        max_steps = math.ceil(a.tokens / (batch * seq_len))
        _check_eval_points(a, max_steps)
    check_output(out, "ablation", overwrite)
    begin_output(out, "ablation")
    steps = _Steps(out)

    # 1. corpora
    api = steps_of_data
    for v in variants + ([crawl] if crawl else []):
        if not v.inputs:
            continue
        what = "the crawl's held-out documents" if v is crawl else f"variant {v.name}"
        fp = _sha({"inputs": v.inputs, "config": v.cfg.fingerprint()})
        if steps.finished(f"corpus:{v.name}" if v is not crawl else "heldout:crawl", fp):
            log.info("%s: corpus done earlier (%s)", what, v.corpus)
            continue
        log.info("%s: corpus job over %s", what, ", ".join(v.inputs))
        api.run_corpus(v.inputs, v.corpus, v.cfg, beam_args, overwrite=True, progress=progress)
        steps.record(f"corpus:{v.name}" if v is not crawl else "heldout:crawl", fp)

    # 2. the crawl's held-out set; no held-out text in what any variant trains on (or was chosen by)
    crawl_info = None
    if crawl is not None:
        crawl_info = _crawl_heldout(crawl, variants, a, steps_of_data)
        heldout_docs = {CRAWL_SET: crawl_info.pop("texts"), **heldout_docs}
        heldout_files = {CRAWL_SET: None, **heldout_files}
    # the crawl's set was checked document by document above: pages of one site share their template's
    # 13-grams, which is the web's distribution, not a held-out page memorised
    leak_rows = _check_leaks(variants, {k: v for k, v in heldout_docs.items() if k != CRAWL_SET}, heldout_files, a,
                             steps_of_data)

    # 3. the shared tokenizer, every variant tokenized with it
    by_name = {v.name: v for v in variants}
    if a.tokenizer is not None:
        tokenizer = os.path.abspath(a.tokenizer)
    else:
        # by default an equal mix of every variant: a tokenizer trained on one variant fits its text best, and
        # loss per token (bits per byte less so) would favour that variant
        sources = [by_name[a.tokenizer_from]] if a.tokenizer_from else variants
        tokenizer = io.join(out, "tokenizer")
        fp = _sha({"corpus": [_manifest_sha(v.corpus) for v in sources],
                   "config": cfg.tokenizer.model_dump(mode="json")})
        if not steps.finished("tokenizer", fp):
            log.info("the shared tokenizer: trained on %s", f"variant {sources[0].name}'s corpus" if len(sources) == 1
                     else "an equal mix of the variants' corpora (" + ", ".join(v.name for v in sources) + ")")
            corpora = [v.corpus for v in sources]
            api.train_tokenizer(corpora[0] if len(corpora) == 1 else corpora, tokenizer, cfg, progress=progress,
                                overwrite=True)
            steps.record("tokenizer", fp)
    tok_sha = hashlib.sha256(Path(tokenizer, "tokenizer.model").read_bytes()).hexdigest()
    for v in variants:
        fp = _sha({"corpus": _manifest_sha(v.corpus), "tokenizer": tok_sha,
                   "config": cfg.tokenize.model_dump(mode="json")})
        if not steps.finished(f"tokens:{v.name}", fp):
            log.info("variant %s: tokenizing", v.name)
            api.tokenize(v.corpus, tokenizer, v.tokens, cfg, beam_args, overwrite=True)
            steps.record(f"tokens:{v.name}", fp)

    # 4. equal budgets, checked before any training: by default the smallest variant's train split, read
    # once (every variant then trains on as many unique tokens as the smallest has; a larger one on a subset)
    manifests = {v.name: io.read_json(io.join(v.tokens, "manifest.json")) for v in variants}
    for v in variants:
        if int(manifests[v.name]["splits"]["train"]["sequences"]) == 0:
            raise AblationError(f"variant {v.name!r} has no training sequences (its corpus keeps "
                                f"{manifests[v.name]['splits']['train']['documents']} documents): the budgets "
                                "cannot be equal")
    if a.tokens is None:
        smallest = min(int(m["splits"]["train"]["sequences"]) for m in manifests.values())
        max_steps = smallest // batch
        if max_steps == 0:
            raise AblationError(f"the smallest variant has {smallest} training sequences, fewer than one batch of "
                                f"pretrain.batch_size {batch}: lower batch_size or give the variants more input")
        _check_eval_points(a, max_steps)
        log.info("budget: the smallest variant's training split read once (%d steps; ablate.tokens sets another)",
                 max_steps)
    budget = max_steps * batch  # sequences of every run
    data, short = {}, []
    for v in variants:
        m = manifests[v.name]
        train = int(m["splits"]["train"]["sequences"])
        epochs = budget / train
        if epochs > a.max_epochs:
            short.append((v.name, train, epochs))
        data[v.name] = {"documents": int(m["splits"]["train"]["documents"]), "train_tokens": train * seq_len,
                        "epochs": round(epochs, 3)}
    if short:
        smallest = min(train for _, train, _ in short)
        raise AblationError(
            f"ablate.tokens {a.tokens or budget * seq_len:,} ({budget:,} sequences per run) would read "
            + ", ".join(f"variant {n!r} ({t * seq_len:,} training tokens) {e:.1f} times" for n, t, e in short)
            + f", more than ablate.max_epochs {a.max_epochs}: the budgets could only be equal by over-repeating. "
            f"Lower ablate.tokens (≤ {int(a.max_epochs * smallest) * seq_len:,}), raise ablate.max_epochs, or give "
            "those variants more input")
    log.info("every run: %d steps × %d sequences × %d tokens = %s tokens; %d variant(s) × %d seed(s)",
             max_steps, batch, seq_len, f"{budget * seq_len:,}", len(variants), len(a.seeds))

    # 5. training runs, then the evaluation of their checkpoints
    every = max(1, max_steps // a.eval_points)
    runs = [(v, seed) for v in variants for seed in a.seeds]
    train_cfgs = [(v.name, seed, _run_config(cfg, v.tokens, os.path.join(out, "runs"), f"{v.name}-seed{seed}",
                                            seed, max_steps, every)) for v, seed in runs]
    timing: dict = {}
    results = _train_and_evaluate(train_cfgs, heldout_docs, mc, tokenizer, a, cfg, steps, timing, progress)

    # 6. the table, the plot
    chance = {name: (len(items), sum(1 / len(it["choices"]) for it in items) / len(items))
              for name, items in mc.items() if items}
    controls = {v.name for v in a.variants if v.damage is not None}
    table = summarise(results, [v.name for v in variants], baseline, data, chance, controls)
    floors, warnings = _floor_and_scale(variants, tokenizer, heldout_docs, table, budget * seq_len, a, cfg)
    for w in warnings:
        log.warning("%s", w)
    md = markdown(table, baseline, budget * seq_len, a, cfg, floors, warnings, crawl_info)
    payload = {"kind": "ablation", "baseline": baseline, "tokens_per_run": budget * seq_len, "steps": max_steps,
               "seeds": list(a.seeds), "variants": data, "table": table, "runs": results, "leak_check": leak_rows,
               "crawl_heldout": crawl_info, "time": timing,
               "count_model_floor": floors, "scale_warnings": warnings,
               "config": cfg.model_dump(mode="json")}
    results_path = io.join(out, "results.json")
    io.write_json_atomic(results_path, payload)
    io.write_bytes_atomic(io.join(out, "results.md"), md.encode())
    plot_path = plot(results, [v.name for v in variants], io.join(out, "heldout_loss.png"))
    return AblationResult(out, table, results_path, md, plot_path, time.time() - t0)


def _floor_and_scale(variants: list[Variant], tokenizer: str, heldout_docs: dict[str, list[str]], table: list[dict],
                     tokens_per_run: int, a, cfg: GristmillConfig) -> tuple[dict, list[str]]:
    """Per variant and held-out set the unigram and bigram count models' bits per byte (trainer/floor.py),
    and the scale warnings of this ablation."""
    import torch

    from gristmill.tokenizer.tokens import TokenSplit
    from gristmill.tokenizer.train import load
    from gristmill.trainer.model import build_model, resolve_model_args

    if not heldout_docs:
        return {}, []
    sp = load(tokenizer)
    seq_len = cfg.tokenize.seq_len
    windows, nbytes = {}, {}
    for name, docs in heldout_docs.items():
        toks = heldout_tokens(sp, docs, a.heldout_max_tokens)
        n = (len(toks) - 1) // seq_len
        windows[name] = np.stack([toks[i * seq_len: i * seq_len + seq_len + 1] for i in range(n)])
        nbytes[name] = len(sp.decode([int(t) for t in scored_targets(toks, seq_len)]).encode("utf-8"))
    floors = {}
    for v in variants:
        rows = TokenSplit(v.tokens, "train").arrays
        floors[v.name] = {name: floor.count_model_bpb(rows, windows[name], sp.get_piece_size(), nbytes[name])
                          for name in heldout_docs}
    bigram = {v: sum(f["bigram_bpb"] for f in fs.values()) / len(fs) for v, fs in floors.items()}
    model = {}
    for row in table:
        bpb = [e["mean"] for m, e in row["metrics"].items() if m.startswith("bpb:") and m != "bpb:macro"]
        if bpb:
            model[row["variant"]] = sum(bpb) / len(bpb)
    with torch.device("meta"):
        n_params = build_model(resolve_model_args(cfg.model, sp.get_piece_size(), seq_len)).num_params()
    return floors, floor.scale_warnings(model, bigram, tokens_per_run, n_params)


def _check_eval_points(a, max_steps: int) -> None:
    if a.eval_points > max_steps:
        raise AblationError(f"ablate.eval_points {a.eval_points} exceeds the {max_steps} training steps of the "
                            "budget: lower eval_points or raise ablate.tokens (and ablate.max_epochs)")


def _crawl_heldout(crawl: Variant, variants: list[Variant], a, data: DataSteps) -> dict:
    """The crawl's held-out documents (read up to what scoring uses), less those that are copies of a document
    some variant trains on; what was done, for results.json (``texts``: the documents)."""
    if data.corpus_texts is None:
        raise AblationError("ablate.crawl_heldout needs the corpus reader the API gives (DataSteps.corpus_texts)")
    texts = crawl_heldout_texts(data.corpus_texts(crawl.corpus), a.heldout_max_tokens * 32)
    corpora = [leaks.Source(f"variant {v.name!r}'s corpus", lambda v=v: data.corpus_texts(v.corpus))
               for v in variants]
    kept, copies = leaks.drop_copies(texts, corpora, NEAR_COPY_SHARE)
    if not kept:
        raise AblationError(f"ablate.crawl_heldout {a.crawl_heldout}: none of the crawl's documents held out "
                            f"{'and kept by ' + a.crawl_heldout_base + ' processing ' if texts else ''}is left to "
                            f"score ({crawl.corpus}: {len(texts)} document(s), {copies} copies of training "
                            "documents): raise ablate.crawl_heldout, give more input, or set it to 0")
    log.info("the crawl's held-out set: %d document(s) (%s of ablate.inputs by id, processed as %s)%s", len(kept),
             f"{100 * a.crawl_heldout:g} %", a.crawl_heldout_base,
             f"; {copies} left out as copies of documents a variant trains on" if copies else "")
    return {"texts": kept, "fraction": a.crawl_heldout, "base": a.crawl_heldout_base, "corpus": crawl.corpus,
            "documents": len(kept), "copies_left_out": copies}


def _check_leaks(variants: list[Variant], heldout_docs: dict[str, list[str]], heldout_files: dict[str, str | None],
                 a, data: DataSteps) -> list[dict]:
    """trainer/leaks.py over every variant's corpus and every input of a variant's quality classifier;
    a leak stops the ablation (``ablate.allow_overlap``: reported, and the ablation goes on)."""
    if not heldout_docs:
        return []
    sources: list[leaks.Source] = []
    if data.corpus_texts is not None:
        sources += [leaks.Source(f"variant {v.name!r}'s corpus {v.corpus}", lambda v=v: data.corpus_texts(v.corpus))
                    for v in variants]
    if data.quality_inputs is not None:
        for v in variants:
            q = v.cfg.clean.quality
            if q.enabled and v.inputs:  # a given corpus directory was built elsewhere: its corpus is checked
                for path, sha, texts in data.quality_inputs(q.model):
                    name = f"{path} (trained variant {v.name!r}'s quality classifier)"
                    sources.append(leaks.Source(name, texts, sha))
    heldout = {name: (texts, _file_sha(heldout_files[name]) if heldout_files.get(name) else None)
               for name, texts in heldout_docs.items()}
    rows = leaks.check(heldout, sources, a.max_heldout_overlap)
    found = [r for r in rows if r["leak"]]
    if found:
        listing = "; ".join(f"held-out {r['heldout']!r} in {r['source']} ({100 * r['share']:.1f} % of its "
                            f"{leaks.NGRAM}-grams)" if r["checked"] != "sha256" else
                            f"held-out {r['heldout']!r} is {r['source']} (same SHA-256)" for r in found)
        if not a.allow_overlap:
            raise AblationError(f"held-out text is in what a variant trains on: {listing}. Its scores would measure "
                                "memorisation. Hold out other text (ablate.heldout), or pass --allow-overlap to "
                                "run anyway with the overlap reported in results.json")
        log.warning("held-out text overlaps training data (--allow-overlap): %s", listing)
    else:
        log.info("leak check: no held-out set overlaps a variant's corpus or quality-classifier inputs "
                 "(%d source(s), %d-grams)", len(sources), leaks.NGRAM)
    return rows


def _file_sha(path: str) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _manifest_sha(directory: str) -> str:
    return hashlib.sha256(Path(directory, "manifest.json").read_bytes()).hexdigest()


def _run_config(cfg: GristmillConfig, tokens: str, storage: str, name: str, seed: int, max_steps: int,
                every: int) -> GristmillConfig:
    tree = cfg.model_dump(mode="json")
    tree.pop("ablate", None)
    p = tree["pretrain"]
    p.update(data=tokens, mixture=[], storage_path=storage, name=name, seed=seed, max_steps=max_steps,
             checkpoint_every=every, eval_every=every, keep_checkpoints=None)
    p["warmup_steps"] = min(p.get("warmup_steps", 20), max(0, max_steps - 1))
    return GristmillConfig.model_validate(tree)


def _train_and_evaluate(train_cfgs, heldout_docs, mc, tokenizer, a, cfg, steps: _Steps, timing: dict,
                        progress: bool = False) -> list[dict]:
    """Train and evaluate every (variant, seed), ``parallel`` at once from driver threads. A run of one worker
    (``pretrain.num_workers: 1``, the usual ablation) is one Ray task that trains in Ray Train's local mode and
    evaluates in the same process (:func:`train_and_evaluate_run`; on GPUs ``ablate.runs_per_gpu`` of them
    share each device); a run of several workers is a Ray Train run (DDP or FSDP) whose checkpoints are then
    evaluated as a Ray task. With ``pretrain.num_workers: 0`` the runs go one after another in this process,
    evaluated here too, and no Ray starts: local-mode runs share this process, so they cannot overlap."""
    from gristmill.tokenizer.train import load
    from gristmill.trainer.checkpoint import is_complete, read_state
    from gristmill.trainer.launch import ensure_ray, run_training

    p = cfg.pretrain
    local, as_task = p.num_workers == 0, False
    # runs of one worker trained together in one process, a thread each (ablate.runs_per_process)
    together = a.runs_per_process if p.num_workers <= 1 else 1
    if together > 1 and any(c.model.dropout for _, _, c in train_cfgs):
        raise AblationError("ablate.runs_per_process > 1 needs model.dropout: 0 (dropout draws from the process's "
                            "random stream, which runs in threads of one process would share: not reproducible)")
    if not local:
        ensure_ray(p)
    sp = load(tokenizer)
    heldout = {k: heldout_tokens(sp, docs, a.heldout_max_tokens) for k, docs in heldout_docs.items()}
    seq_len = cfg.tokenize.seq_len
    if local:
        parallel = 1

        def evaluate(checkpoints: list[str]) -> list[dict]:
            return evaluate_checkpoints(checkpoints, heldout, mc, seq_len)
    else:
        import ray

        per_run = p.num_workers * (p.cpus_per_worker if not p.use_gpu else 0)
        as_task = p.num_workers == 1
        share = a.runs_per_gpu if as_task else 1
        if a.parallel:
            parallel = a.parallel
        elif p.use_gpu:
            parallel = max(1, int(ray.cluster_resources().get("GPU", 1)) * share // p.num_workers)
        else:
            parallel = max(1, int(ray.cluster_resources().get("CPU", 1)) // per_run)
        remote = ray.remote(num_cpus=1)(evaluate_checkpoints)
        heldout_ref, mc_ref = ray.put(heldout), ray.put(mc)
        if as_task:
            # a task whose process dies (OOM, node lost) is retried as pretrain.max_failures says, and resumes
            # from the run's newest checkpoint, as a Ray Train run restarts its worker group
            run_task = ray.remote(num_cpus=p.cpus_per_worker, num_gpus=1 / share if p.use_gpu else 0,
                                  max_retries=p.max_failures)(
                train_and_evaluate_runs if together > 1 else _train_and_evaluate_one_task)

        def evaluate(checkpoints: list[str]) -> list[dict]:
            return ray.get(remote.remote(checkpoints, heldout_ref, mc_ref, seq_len))
    parallel = min(parallel, math.ceil(len(train_cfgs) / together))
    log.info("%d training run(s), %d at once%s%s", len(train_cfgs), parallel * together,
             " (in this process)" if local else (" (Ray tasks" + (f", {share} per GPU" if p.use_gpu else "") + ")")
             if as_task else " (Ray Train runs)", f", {together} per process in threads" if together > 1 else "")
    max_steps = train_cfgs[0][2].pretrain.max_steps
    every = train_cfgs[0][2].pretrain.checkpoint_every
    import torch

    for _, _, run_cfg in train_cfgs:  # before the estimate and the progress count what earlier invocations trained
        _start_over_if_stale(run_cfg, steps)
    measured = ablation_time.probe(cfg, sp.get_piece_size(), torch.get_num_threads() if local else p.cpus_per_worker)
    trained = sum(is_complete(Path(c.pretrain.storage_path) / c.pretrain.name / f"checkpoint_{max_steps:08d}")
                  for _, _, c in train_cfgs)  # by an earlier invocation
    # the last checkpoint on every held-out token, the curve's earlier ones on every CURVE_STRIDE-th window
    scored = sum(len(t) for t in heldout.values()) * (1 + (math.ceil(max_steps / every) - 1) / CURVE_STRIDE)
    at_once = parallel * together if p.use_gpu else parallel  # threads on CPUs share the same cores
    guess = ablation_time.estimate(measured, len(train_cfgs), at_once, max_steps, scored,
                                   runs_to_train=len(train_cfgs) - trained,
                                   per_run_s=ablation_time.RUN_OVERHEAD_S[
                                       "local" if local else "ray_task" if as_task else "ray_train"])
    timing["estimated_s"] = round(guess.total_s, 1) if guess else None
    timing["step_s"] = round(measured.step_s, 4) if measured else None
    if guess is not None:
        log.info("estimated time: %s (training %s at %.3g s per step, measured here, and each run's start and "
                 "checkpoints; evaluation %s)",
                 ablation_time.duration(guess.total_s), ablation_time.duration(guess.train_s), guess.step_s,
                 ablation_time.duration(guess.eval_s))
    else:
        log.info("estimated time: after the first steps (the runs train on GPUs; the progress gives an ETA)")
    t_runs = time.time()

    def start(item) -> None:
        rp = item[2].pretrain
        if not is_complete(Path(rp.storage_path) / rp.name / f"checkpoint_{rp.max_steps:08d}"):
            log.info("run %s: training", rp.name)

    def finish(item, rows: list[dict]) -> dict:
        name, seed, run_cfg = item
        rp = run_cfg.pretrain
        log.info("run %s: %s", rp.name, "  ".join(f"{k} {v:.4f}" for k, v in rows[-1].items()
                                                  if isinstance(v, float)))
        tracker.run_finished(rp.name)
        return {"variant": name, "seed": seed, "run": str(Path(rp.storage_path) / rp.name), "curve": rows}

    def one_group(group: list) -> list[dict]:
        for item in group:
            start(item)
        trees = [c.model_dump(mode="json") for _, _, c in group]
        if as_task:
            rows = ray.get(run_task.remote(trees, heldout_ref, mc_ref, seq_len, p.cpus_per_worker))
        elif together > 1:  # threads of this process
            rows = train_and_evaluate_runs(trees, heldout, mc, seq_len, torch.get_num_threads())
        else:
            (_, _, run_cfg), = group
            rp = run_cfg.pretrain
            run_dir = Path(rp.storage_path) / rp.name
            if not is_complete(run_dir / f"checkpoint_{rp.max_steps:08d}"):
                run_training(run_cfg, "pretrain")
            rows = [evaluate(sorted(str(d) for d in run_dir.glob("checkpoint_*") if is_complete(d)
                                    and read_state(d)["step"] <= rp.max_steps))]
        return [finish(item, r) for item, r in zip(group, rows)]

    groups = [train_cfgs[i:i + together] for i in range(0, len(train_cfgs), together)]
    run_dirs = [Path(c.pretrain.storage_path) / c.pretrain.name for _, _, c in train_cfgs]
    bar = progress and sys.stderr.isatty()
    with ablation_time.RunsProgress(run_dirs, max_steps, guess.total_s if guess else None, bar) as tracker:
        if parallel == 1:
            done = [one_group(g) for g in groups]
        else:
            done = _in_threads(one_group, groups, parallel)
    timing["train_and_evaluate_s"] = round(time.time() - t_runs, 1)
    return [r for group in done for r in group]


def _start_over_if_stale(run_cfg: GristmillConfig, steps: _Steps) -> None:
    """A run directory resumes only the run it was started for: one holding another model's, data's or budget's
    run is removed (else its checkpoints would count as done in the estimate and the progress, and be resumed)."""
    rp = run_cfg.pretrain
    run_dir = Path(rp.storage_path) / rp.name
    key = {"config": run_cfg.model_dump(mode="json"), "data": _manifest_sha(rp.data)}
    if rp.optimizer == "muon":  # a dump without `optimizer` meant AdamW before Muon became the default: not one run
        key["optimizer"] = ["muon", rp.muon_lr]
    fp = _sha(key)
    if not steps.finished(f"run:{rp.name}", fp):
        if run_dir.exists():
            log.warning("run %s: its directory holds a run with other settings or data; starting it over", rp.name)
            shutil.rmtree(run_dir)
        steps.record(f"run:{rp.name}", fp)


def _in_threads(fn, items: list, parallel: int) -> list:
    """``[fn(x) for x in items]``, ``parallel`` at once in driver threads. The main thread waits with a timeout
    (Python runs a signal's handler only in the main thread, between bytecodes: a SIGTERM the kernel handed to
    one of Ray's threads would otherwise wait for every run), and on a stop or an error it leaves at once —
    the runs' threads are not waited for: the command's stop path shuts Ray down and exits."""
    from concurrent.futures import FIRST_EXCEPTION, wait

    from gristmill.trainer.launch import SIGNAL_POLL_SECONDS

    pool = ThreadPoolExecutor(parallel, thread_name_prefix="ablation-run")
    futures = [pool.submit(fn, x) for x in items]
    try:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=SIGNAL_POLL_SECONDS, return_when=FIRST_EXCEPTION)
            for f in done:
                if f.exception() is not None:
                    raise f.exception()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return [f.result() for f in futures]


def summarise(results: list[dict], names: list[str], baseline: str, data: dict,
              mc_chance: dict[str, tuple[int, float]] | None = None, controls: set[str] | None = None) -> list[dict]:
    """Per variant and metric (each run's last checkpoint): mean and standard deviation over seeds; for
    every variant but the baseline the difference paired by seed, its Holm-corrected 95 % t-interval and a
    verdict only where that interval excludes 0 (trainer/ablation_stats.py). ``mc_chance``: per
    multiple-choice set (items, chance accuracy): a metric at chance for every variant gets no verdict."""
    last = {(r["variant"], r["seed"]): r["curve"][-1] for r in results}
    seeds = sorted({s for _, s in last})
    metrics = [k for k in results[0]["curve"][-1] if k.startswith(("bpb:", "heldout:", "mc:", "mc_norm:", "mc_bpb:"))]
    bpb = [m for m in metrics if m.startswith("bpb:")]
    if len(bpb) > 1:  # the headline: the mean over held-out domains
        for row in last.values():
            row["bpb:macro"] = sum(row[m] for m in bpb) / len(bpb)
        metrics.insert(0, "bpb:macro")
    values = {n: {m: [last[(n, s)][m] for s in seeds] for m in metrics} for n in names}
    # loss per token ranks the variants exactly as bits per byte does (one tokenizer, the same text): shown, not tested
    no_verdict = {m: "secondary" for m in metrics if m.startswith("heldout:")}
    for m in metrics:
        kind, _, name = m.partition(":")
        if kind in ("mc", "mc_norm") and mc_chance and name in mc_chance:
            items, chance = mc_chance[name]
            if ablation_stats.at_chance([x for n in names for x in values[n][m]], items, chance):
                no_verdict[m] = "at chance"
    lower_is_better = {m: not m.startswith(("mc:", "mc_norm:")) for m in metrics}  # accuracy: higher
    compared = ablation_stats.compare(values, baseline, lower_is_better, no_verdict=no_verdict,
                                      controls=controls)
    table = []
    for n in names:
        row = {"variant": n, **data[n], "metrics": {}}
        for m in metrics:
            xs = np.asarray(values[n][m])
            entry = {"mean": float(xs.mean()), "std": float(xs.std(ddof=1)) if len(xs) > 1 else 0.0,
                     "seeds": [float(x) for x in xs]}
            if m.startswith(("mc:", "mc_norm:")) and mc_chance and m.partition(":")[2] in mc_chance:
                entry["binomial_se"] = ablation_stats.binomial_se(entry["mean"], mc_chance[m.partition(":")[2]][0])
            if n != baseline:
                entry.update(compared[(n, m)])
            row["metrics"][m] = entry
        table.append(row)
    return table


def markdown(table: list[dict], baseline: str, tokens: int, a, cfg: GristmillConfig, floors: dict | None = None,
             warnings: list[str] | None = None, crawl: dict | None = None) -> str:
    metrics = list(table[0]["metrics"])
    head = ["variant", "train tokens", "epochs"] + [_metric_title(m) for m in metrics]
    model = ", ".join(f"{k} {v}" for k, v in cfg.model.model_dump(mode="json", exclude_defaults=True).items()
                      if k != "preset")
    lines = [f"Each run: {tokens:,} training tokens, model preset {cfg.model.preset}"
             f"{f' ({model})' if model else ''}, seeds {list(a.seeds)}. "
             "Mean ± standard deviation over seeds at the last checkpoint; bpb: bits per UTF-8 byte of the "
             "held-out text (lower is better; macro: the mean over held-out sets), loss: nats per token; mc acc: "
             "multiple-choice accuracy, mc answer bpb: the right answer's bits per byte (lower is better). "
             f"Against **{baseline}**: the difference paired by seed with its 95 % t-interval, "
             "Holm-corrected over every comparison in this table; better/worse only where that interval "
             "excludes 0, else \"no difference detectable\" (\"at chance\": a multiple-choice set on which "
             "every variant is within chance ± 2 standard errors).", ""]
    if crawl:
        lines += [f"Held-out set **{CRAWL_SET}**: {crawl['documents']:,} documents of the crawl, "
                  f"{100 * crawl['fraction']:g} % of it drawn by a hash of the id before any filtering and left "
                  f"out of every variant built from it, processed as {crawl['base']!r} processes text"
                  + (f" ({crawl['copies_left_out']} left out as copies of a training document)"
                     if crawl["copies_left_out"] else "")
                  + f"; in-distribution for {'the raw variant' if crawl['base'] == 'raw' else 'the default recipe'}"
                  ", so read it beside the clean held-out sets.", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table:
        cells = [row["variant"], f"{row['train_tokens']:,}", f"{row['epochs']:.2f}"]
        for m in metrics:
            e = row["metrics"][m]
            cell = f"{e['mean']:.4f} ± {e['std']:.4f}"
            if "verdict" in e:
                lo, hi = e["interval"]
                finite = math.isfinite(lo) and math.isfinite(hi)
                interval = f"[{lo:+.4f}, {hi:+.4f}]" if finite else "one seed: no interval"
                cell += f" ({e['difference']:+.4f} {interval}, {e['verdict']})"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    if floors:
        sets = list(next(iter(floors.values())))
        lines += ["", "The floor: count models of each variant's training tokens on the same held-out tokens "
                  "(bits per byte; trainer/floor.py).", "",
                  "| variant | " + " | ".join(f"unigram: {s} | bigram: {s}" for s in sets) + " |",
                  "|---|" + "---|---|" * len(sets)]
        for v, fs in floors.items():
            lines.append(f"| {v} | " + " | ".join(f"{fs[s]['unigram_bpb']:.4f} | {fs[s]['bigram_bpb']:.4f}"
                                                  for s in sets) + " |")
    for w in warnings or []:
        lines += ["", f"**{w}.**"]
    return "\n".join(lines) + "\n"


def _metric_title(m: str) -> str:
    kind, name = m.split(":", 1)
    return {"bpb": f"bpb: {name}", "heldout": f"loss: {name}", "mc": f"mc acc: {name}",
            "mc_norm": f"mc acc (norm): {name}", "mc_bpb": f"mc answer bpb: {name}"}[kind]


def plot(results: list[dict], names: list[str], path: str) -> str | None:
    """Held-out loss (the mean over held-out sets) against training tokens: one line per run, one colour per
    variant, the mean over seeds bold."""
    curves = [r for r in results if any(k.startswith("heldout:") for k in r["curve"][0])]
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, n in enumerate(names):
        runs = [r for r in curves if r["variant"] == n]
        colour = colours[k % len(colours)]
        ys_all = []
        for r in runs:
            xs = [c["tokens"] for c in r["curve"]]
            ys = [float(np.mean([v for key, v in c.items() if key.startswith("heldout:")])) for c in r["curve"]]
            ys_all.append(ys)
            ax.plot(xs, ys, color=colour, alpha=0.3, linewidth=1)
        ax.plot(xs, np.mean(ys_all, axis=0), color=colour, linewidth=2.2, label=f"{n} (mean of {len(runs)})")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("held-out loss per token")
    ax.set_title("Held-out clean text: loss against training tokens")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    local = path if not io.is_remote(path) else None
    if local is None:
        import io as _io

        buf = _io.BytesIO()
        fig.savefig(buf, format="png")
        io.write_bytes_atomic(path, buf.getvalue())
    else:
        tmp = io.temporary_name(local)
        fig.savefig(tmp, format="png")
        os.replace(tmp, local)
    plt.close(fig)
    return path
