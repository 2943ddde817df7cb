"""The Python API: what each ``gristmill`` command does, as a function (docs/api.md).

The command line and the demo are thin layers over these functions. Each takes the typed config
(:class:`~gristmill.config.GristmillConfig`, from :func:`load_config` or built in Python; ``None``
means the defaults) and returns what the command reports. Stages are imported when a function
is called, so ``import gristmill`` stays light.

    import gristmill
    cfg = gristmill.load_config("configs/demo.yaml")
    corpus = gristmill.run_corpus(["sample/crawl/*"], "runs/api/corpus", cfg)
    print(corpus.manifest["counts"])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gristmill.config import ConfigError, CustomFilterConfig, GristmillConfig, load_config
from gristmill.errors import GristmillError
from gristmill.log import quiet_library_noise
from gristmill.sampling import SamplingConfig

quiet_library_noise()  # the API prints what the CLI prints: not Beam's import-time noise, not gRPC's fork lines

__all__ = [
    "SamplingConfig",
    "ablate",
    "add_filter",
    "count_parameters",
    "decode",
    "demo_config_path",
    "evaluate",
    "export_hf",
    "finetune_cls",
    "generate",
    "latest_checkpoint",
    "load_config",
    "load_tokenizer",
    "plot",
    "pretrain",
    "print_corpus_summary",
    "print_training_summary",
    "quality_params",
    "refresh",
    "resolve_checkpoint",
    "run_corpus",
    "sample_path",
    "sft",
    "tokenize",
    "train_quality",
    "train_tokenizer",
    "verify",
]


def _cfg(config: GristmillConfig | None) -> GristmillConfig:
    return config if config is not None else GristmillConfig()


# --- corpus ----------------------------------------------------------------------------------------


def run_corpus(inputs: Sequence[str], output: str, config: GristmillConfig | None = None,
               beam_args: Sequence[str] | None = None, *, skip_bad_files: bool = False, overwrite: bool = False,
               progress: bool = True, fresh: bool = False):
    """``gristmill corpus``: crawl files (paths or globs; WARC/WET, JSONL, Parquet) → clean,
    deduplicated Arrow shards under ``output`` with ``manifest.json``. ``beam_args`` are Beam
    pipeline options (``["--runner", "DataflowRunner", ...]``; default: the in-process DirectRunner).
    Run again after a crash, it reuses the per-file work already done (``fresh`` ignores it).
    Returns a ``RunResult`` (manifest, manifest_path, report_path, seconds)."""
    from gristmill.pipelines.corpus import run_corpus as _run

    return _run(list(inputs), output, _cfg(config), list(beam_args or []), skip_bad_files=skip_bad_files,
                overwrite=overwrite, progress=progress, fresh=fresh)


def refresh(published: str, inputs: Sequence[str], output: str, config: GristmillConfig | None = None,
            beam_args: Sequence[str] | None = None, *, skip_bad_files: bool = False, overwrite: bool = False,
            progress: bool = True, fresh: bool = False):
    """``gristmill refresh``: a new crawl → a new corpus version under ``output`` without the
    documents that duplicate the ``published`` corpus (any of its versions). ``config`` None: the
    published corpus's own config. Returns a ``RunResult``; ``manifest["versions"]`` lists every version."""
    from gristmill import io
    from gristmill.pipelines.corpus import run_corpus as _run
    from gristmill.pipelines.refresh_index import PublishedCorpus
    from gristmill.pipelines.runner import check_runner

    check_runner(list(beam_args or []))
    _check_apart(published, output)
    io.configure(beam_args)
    corpus = PublishedCorpus.open(published)
    cfg = config if config is not None else corpus.default_config()
    corpus.check_compatible(cfg)
    return _run(list(inputs), output, cfg, list(beam_args or []), skip_bad_files=skip_bad_files,
                overwrite=overwrite, progress=progress, published=corpus, fresh=fresh)


def _check_apart(published: str, output: str) -> None:
    """A refresh writes a new version beside the published corpus, never into it (nor the published
    corpus inside the new one): refused as a usage error before anything is written."""
    from gristmill import io

    def norm(p: str) -> str:
        return (p if io.is_remote(p) else str(Path(p).resolve())).rstrip("/") + "/"

    a, b = norm(published), norm(output)
    if a == b:
        raise ConfigError(f"--output {output} is the published corpus: a refresh writes a new version into a new "
                          "directory (e.g. the next month's), and the published one stays as it is")
    if a.startswith(b) or b.startswith(a):
        raise ConfigError(f"--output {output} and --published {published} are inside one another: give the new "
                          "version a directory of its own")


def print_corpus_summary(manifest: dict, seconds: float | None = None) -> None:
    """What ``gristmill corpus`` prints when it ends: the funnel (read, kept, dropped by reason) and the
    languages of a corpus's ``manifest`` (``RunResult.manifest``), as a table on standard output."""
    from gristmill.pipelines.report import print_summary

    print_summary(manifest, seconds)


def add_filter(config: GristmillConfig | None, name: str, function: Callable | str, *,
               languages: Sequence[str] = ("*",), params: dict[str, Any] | None = None) -> GristmillConfig:
    """A copy of ``config`` with your own filter appended to the cleaning chain (``clean.custom_filters``).

    ``function(text, params) -> gristmill.pipelines.filters.Verdict``: a pure function with the
    contract of the built-in filters, defined at the top level of an importable module (workers
    import it by name), or its dotted name ``"package.module:function"``. Documents it drops are
    counted under ``<name>:<reason>``."""
    if callable(function):
        path = f"{function.__module__}:{function.__qualname__}"
        if "<" in path:
            raise ConfigError(f"filter {name!r}: {path} is not importable by name (a lambda or a nested function); "
                              "define it at the top level of a module")
    else:
        path = function
    cfg = _cfg(config)
    entry = CustomFilterConfig(name=name, function=path, languages=tuple(languages), params=dict(params or {}))
    tree = cfg.model_dump(mode="json")
    tree["clean"]["custom_filters"] = [*tree["clean"].get("custom_filters", []), entry.model_dump(mode="json")]
    return GristmillConfig.model_validate(tree)


# --- tokenizer -------------------------------------------------------------------------------------


def train_tokenizer(corpus: str | Sequence[str], output: str, config: GristmillConfig | None = None, *,
                    progress: bool = True, overwrite: bool = False):
    """``gristmill tokenizer train``: SentencePiece (``config.tokenizer``) trained on a corpus
    directory (or an equal mix of several), written to ``output`` with tokenizer.json. Returns a
    ``TrainResult`` (meta, seconds)."""
    from gristmill.tokenizer.train import train_tokenizer as _train

    return _train(corpus if isinstance(corpus, str) else list(corpus), output, _cfg(config).tokenizer,
                  progress=progress, overwrite=overwrite)


def load_tokenizer(path: str):
    """A SentencePiece processor from a tokenizer directory or ``.model`` file."""
    from gristmill.tokenizer.train import load

    return load(path)


def decode(tokenizer, ids: Sequence[int | str]) -> str:
    """``gristmill tokenizer decode``: token ids → text. ``tokenizer``: a processor from
    :func:`load_tokenizer`, or its path. An id that is not a whole number (ids given as text) or lies
    outside the vocabulary raises ``TokenizerError`` naming it, before anything is decoded."""
    from gristmill.tokenizer.train import TokenizerError

    sp = load_tokenizer(str(tokenizer)) if isinstance(tokenizer, str | Path) else tokenizer
    n, out = sp.get_piece_size(), []
    for x in map(str, ids):
        if not x.isdigit():
            raise TokenizerError(f"{x!r} is not a token id: decode takes whole numbers 0..{n - 1}, separated by spaces")
        if int(x) >= n:
            raise TokenizerError(f"token id {x} is out of range: this tokenizer has {n:,} pieces (ids 0..{n - 1})")
        out.append(int(x))
    return sp.decode(out)


def tokenize(corpus: str, tokenizer: str, output: str, config: GristmillConfig | None = None,
             beam_args: Sequence[str] | None = None, *, overwrite: bool = False, fresh: bool = False):
    """``gristmill tokenize``: a corpus → packed token shards (``config.tokenize``) under ``output``.
    Run again after a crash, it reuses the shards already encoded (``fresh`` ignores them).
    Returns a ``TokenizeResult`` (manifest, manifest_path, seconds)."""
    from gristmill.pipelines.tokenize import run_tokenize

    return run_tokenize(corpus, tokenizer, output, _cfg(config).tokenize, list(beam_args or []),
                        overwrite=overwrite, fresh=fresh)


# --- training --------------------------------------------------------------------------------------


def _train(task: str, config: GristmillConfig, progress: bool):
    from gristmill.trainer.launch import run_training

    return run_training(config, task, progress=progress)


def pretrain(config: GristmillConfig, *, progress: bool = False):
    """``gristmill pretrain``: the ``model`` on the token shards of ``config.pretrain.data``, with
    Ray Train (on the cluster of RAY_ADDRESS, or a Ray started here). Returns a ``TrainResult``
    (run_dir, checkpoint, metrics, seconds)."""
    return _train("pretrain", config, progress)


def sft(config: GristmillConfig, *, progress: bool = False):
    """``gristmill sft``: instruction / chat fine-tuning of ``config.sft.init_checkpoint`` on
    ``config.sft.files``, loss on assistant tokens only. Returns a ``TrainResult``."""
    return _train("sft", config, progress)


def finetune_cls(config: GristmillConfig, *, progress: bool = False):
    """``gristmill finetune-cls``: a classification head on ``config.finetune_cls.init_checkpoint``
    fine-tuned on ``config.finetune_cls.files``; validation accuracy and macro-F1 in the metrics."""
    return _train("cls", config, progress)


def print_training_summary(task: str, result) -> None:
    """What ``gristmill pretrain`` / ``sft`` / ``finetune-cls`` print when a run ends (``task``: pretrain,
    sft or cls): its last metrics, the loss curve's ends, where the metrics and the checkpoint are."""
    from gristmill.trainer.launch import print_summary

    print_summary(task, result)


def resolve_checkpoint(path: str | Path) -> Path:
    """``path`` if it is a complete checkpoint (a ``checkpoint_NNNNNNNN`` directory); anything else (a run
    directory, an incomplete checkpoint, a typo) raises a ``GristmillError`` that says what it is and what
    to give instead."""
    from gristmill.trainer.checkpoint import resolve_checkpoint as _resolve

    return _resolve(path)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a training run directory (``STORAGE_PATH/NAME``), or None."""
    from gristmill.trainer.checkpoint import latest_checkpoint as _latest

    return _latest(Path(run_dir))


def count_parameters(checkpoint: str | Path) -> int:
    """The number of parameters of the model a checkpoint holds."""
    from gristmill.trainer.checkpoint import load_model

    return load_model(checkpoint).num_params()


def ablate(config: GristmillConfig, beam_args: Sequence[str] | None = None, *, overwrite: bool = False,
           progress: bool = False):
    """``gristmill ablate``: the same model trained on each data variant of ``config.ablate`` (corpus
    directories or corpus settings run on one crawl), several seeds each, evaluated on the same held-out
    sets. Returns an ``AblationResult`` (output, table, results_path, markdown, plot_path, seconds)."""
    from gristmill.trainer.ablate import DataSteps, run_ablation

    data = DataSteps(run_corpus=run_corpus, train_tokenizer=train_tokenizer, tokenize=tokenize,
                     corpus_texts=_corpus_texts, quality_inputs=_quality_inputs)
    return run_ablation(config, data, list(beam_args or []), overwrite=overwrite, progress=progress)


def _corpus_texts(directory: str):
    """Every kept document's text of a corpus, batch by batch (the ablation's leak check)."""
    from gristmill.documents import open_corpus

    for batch in open_corpus(directory).to_batches(columns=["text"]):
        yield from batch.column("text").to_pylist()


def _quality_inputs(model: str | None) -> list[tuple[str, str | None, object]]:
    """(path, sha256, a reader of its texts or None) of every input a quality classifier was trained on,
    from the metadata.json beside it (the shipped one: pipelines/resources/quality)."""
    import json
    import os

    from gristmill.pipelines import quality, quality_model

    meta_path = os.path.join(os.path.dirname(os.path.abspath(model or str(quality.SHIPPED_MODEL))), "metadata.json")
    if not os.path.isfile(meta_path):
        return []
    with open(meta_path, encoding="utf-8") as f:
        inputs = json.load(f).get("inputs", [])
    out = []
    for entry in inputs:
        path = entry["path"]
        readable = os.path.isfile(path)
        out.append((path, entry.get("sha256"),
                    (lambda p=path: quality_model.read_documents(p)) if readable else None))
    return out


# --- the quality classifier ---------------------------------------------------------------------------


def quality_params(**values):
    """The quality classifier's training parameters (``gristmill.pipelines.quality_model.TrainParams``:
    seed, holdout, epochs, lr, dim, bucket, min_count, max_words, ...): the defaults, with ``values`` set."""
    from gristmill.pipelines.quality_model import TrainParams

    return TrainParams(**values)


def train_quality(positive: Sequence[str], negative: Sequence[str], output: str, params=None, *,
                  overwrite: bool = False, on_epoch: Callable[[int, int, float], None] | None = None) -> dict:
    """``gristmill quality train``: a fastText-format quality classifier, high-quality ``positive`` files
    against crawl ``negative`` files (paths or globs), written to ``output`` (model.bin, metadata.json,
    report.md). ``params``: from :func:`quality_params`. ``on_epoch(epoch, epochs, loss)`` after each
    epoch. Returns the metadata (counts, held-out precision, recall and ROC AUC)."""
    from gristmill.outputs import begin_output, check_output
    from gristmill.pipelines import quality_model

    check_output(output, "quality", overwrite)
    begin_output(output, "quality")
    return quality_model.train_from_files(list(positive), list(negative), output,
                                          params if params is not None else quality_model.TrainParams(), on_epoch)


# --- what ships with gristmill --------------------------------------------------------------------------


def _shipped(*parts: str) -> Path:
    """A file or folder shipped with gristmill: package data of an installed wheel (gristmill/sample,
    gristmill/configs: pyproject.toml's package-data), else the top-level folder of a checkout."""
    from importlib.resources import files

    packaged = Path(str(files("gristmill").joinpath(*parts)))
    if packaged.exists():
        return packaged
    checkout = Path(__file__).resolve().parent.parent.joinpath(*parts)
    if checkout.exists():
        return checkout
    raise GristmillError(f"{'/'.join(parts)} is not installed with gristmill (looked for {packaged} and {checkout}): "
                         "reinstall gristmill from its wheel, or run from a checkout of the repository")


def sample_path(*parts: str) -> Path:
    """The bundled sample data (``sample_path("crawl")``: the sample crawl, every input format; ``"sft"``:
    the demo's chat files), from an installed wheel or a checkout."""
    return _shipped("sample", *parts)


def demo_config_path() -> Path:
    """The config of ``gristmill demo`` (configs/demo.yaml), from an installed wheel or a checkout."""
    return _shipped("configs", "demo.yaml")


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def evaluate(checkpoint: str, *, data: str | None = None, mc: Sequence[str] = (), shots: int = 0, limit: int = 0,
             max_batches: int = 0, device: str = "auto", on_result: Callable[[str, dict], None] | None = None) -> dict:
    """``gristmill eval``: perplexity on the val split of the token directory ``data`` and accuracy
    on multiple-choice JSONL files ``mc`` ({question, choices, answer}), k-shot. Returns the
    report; ``on_result(name, result)`` is called as each part is done."""
    from gristmill.trainer.checkpoint import load_model, require_causal
    from gristmill.trainer.checkpoint import read_state as ckpt_state
    from gristmill.trainer.evaluate import masked_perplexity, multiple_choice, perplexity, read_mc
    from gristmill.trainer.generate import load_tokenizer as checkpoint_tokenizer

    if not data and not mc:
        raise ConfigError("nothing to evaluate: give a token directory (data) and/or multiple-choice files (mc)")
    model = load_model(checkpoint, _device(device))
    if mc:  # before any work: multiple choice scores choices by next-token log-likelihood
        require_causal(model.args, checkpoint, "multiple choice (scored by next-token log-likelihood)")
    report: dict = {"checkpoint": str(Path(checkpoint).resolve())}
    if data and model.args.objective == "mlm":  # masked-token perplexity, the masks from the checkpoint's tokenizer
        sp = checkpoint_tokenizer(checkpoint)
        specials = tuple(i for i in (sp.bos_id(), sp.eos_id(), sp.pad_id()) if i >= 0)
        seed = ckpt_state(checkpoint).get("seed", 0)  # the run's: the masks its validation used
        report["perplexity"] = masked_perplexity(model, data, specials, sp.eos_id(), max_batches=max_batches,
                                                 seed=seed)
        if on_result:
            on_result("perplexity", report["perplexity"])
    elif data:
        report["perplexity"] = perplexity(model, data, max_batches=max_batches)
        if on_result:
            on_result("perplexity", report["perplexity"])
    if mc:
        sp = checkpoint_tokenizer(checkpoint)
        report["multiple_choice"] = {}
        for path in mc:
            items = read_mc(path)
            items = items[:limit] if limit else items
            result = report["multiple_choice"][Path(path).name] = multiple_choice(model, sp, items, shots=shots)
            if on_result:
                on_result(Path(path).name, result)
    return report


def generate(checkpoint: str, prompt: str, sampling=None, *, chat: bool = False, system: str | None = None,
             on_text: Callable[[str], None] | None = None, device: str = "auto") -> str:
    """``gristmill generate``: a completion of ``prompt`` (with ``chat``: the assistant's answer to
    it as a user message, through the ChatML template). ``sampling``: a :class:`SamplingConfig`
    (``gristmill.api.SamplingConfig``: temperature, top-k, top-p, stops, seed; None: its defaults).
    ``on_text`` receives the text as it grows (streaming)."""
    from gristmill.trainer.checkpoint import load_model, require_causal
    from gristmill.trainer.finetune_data import encode_chat
    from gristmill.trainer.generate import default_stop_ids, generate_text
    from gristmill.trainer.generate import load_tokenizer as checkpoint_tokenizer

    model = load_model(checkpoint, _device(device))
    require_causal(model.args, checkpoint, "generation")
    sp = checkpoint_tokenizer(checkpoint)
    cfg = sampling or SamplingConfig()
    if not cfg.stop_ids:
        cfg = SamplingConfig(**{**cfg.__dict__, "stop_ids": default_stop_ids(sp)})
    if chat:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        ids = encode_chat(sp, messages, add_generation_prompt=True)[0]
    else:
        ids = sp.encode(prompt)
    return generate_text(model, sp, ids, cfg, on_text=on_text)


def verify(directory: str, beam_args: Sequence[str] | None = None) -> list[str]:
    """``gristmill verify``: re-check a corpus or token directory against its manifest (every shard
    present, checksums and row counts equal, the counts balanced). ``beam_args``: filesystem options
    of an object store (``--s3_endpoint_url`` ...). Returns the problems ([] = sound); a directory that is
    no corpus or token output at all (an export, a typo) raises ``GristmillError`` (exit 2)."""
    import json
    from pathlib import Path

    from gristmill import io

    io.configure(beam_args)

    path = io.join(directory, "manifest.json")
    if not io.exists(path):
        from gristmill.outputs import MARKERS

        marker = io.join(directory, io.OUTPUT_MARKER)
        if not (io.exists(marker) and io.read_bytes(marker) in (MARKERS["corpus"], MARKERS["tokens"])):
            # not a corpus or token output at all (an export, a checkpoint, an ablation, a typo): a usage
            # error, not a damaged output
            raise GristmillError(f"{directory} is not a corpus or token directory (no manifest.json, no corpus or "
                                 "token marker): give the directory `gristmill corpus`, `refresh` or `tokenize` "
                                 "wrote")
        return [f"{directory} has no manifest.json: it is not a finished gristmill output (a run may have failed "
                "or still be writing it; its run.json says)"]
    kind = io.read_json(path).get("kind")
    if kind not in ("corpus", "tokens"):
        raise GristmillError(f"{path} is {json.dumps(kind)}, not a corpus or token directory: `gristmill verify` "
                             "checks what `gristmill corpus`, `refresh` or `tokenize` wrote")
    if kind == "corpus":
        from gristmill.documents import verify_corpus

        return verify_corpus(directory)
    from gristmill.tokenizer.tokens import verify_tokens

    return verify_tokens(Path(directory))


def plot(runs: Sequence[str], output: str = "training.png") -> Path:
    """``gristmill plot``: the metrics.jsonl of training runs overlaid in one PNG (loss and validation loss,
    learning rate, tokens per second against tokens seen). Returns its path."""
    from gristmill.trainer.plots import plot_runs

    missing = [r for r in runs if not (Path(r) / "metrics.jsonl").is_file()]
    if missing:
        raise GristmillError(f"no metrics.jsonl in {', '.join(missing)}: give training run directories "
                             "(STORAGE_PATH/NAME of a pretrain, sft or finetune-cls run)")
    return plot_runs(list(runs), output)


def export_hf(checkpoint: str, output: str, tokenizer: str | None = None, *, overwrite: bool = False) -> Path:
    """``gristmill export-hf``: a checkpoint → a directory ``transformers`` loads
    (``AutoModelForCausalLM``, ``AutoTokenizer``; chat generation stops at <|im_end|>; an MLM checkpoint:
    ``AutoModelForMaskedLM``, its classification fine-tune ``AutoModelForSequenceClassification``). Returns its path."""
    from gristmill.trainer.export import export_hf as _export

    return _export(checkpoint, output, tokenizer, overwrite=overwrite)
