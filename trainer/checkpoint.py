"""Checkpoints: everything needed to continue a run exactly, loadable without unpickling.

A checkpoint directory holds
- ``model.safetensors``: the full (unsharded) weights; a tied output matrix is stored once;
- ``optimizer.pt``: the optimizer state keyed by parameter name (tensors and numbers only, read back
  with ``torch.load(weights_only=True)``, which refuses arbitrary objects);
- ``rng.safetensors``: every rank's torch CPU (and CUDA) generator state;
- ``trainer_state.json``: step, data position (samples consumed), tokens seen, the schedule's position
  and the last metrics; ``model_config.json``; ``run_config.json`` (the run's gristmill config);
- the tokenizer files, so a checkpoint alone is enough to generate, evaluate or export.

``trainer_state.json`` is written last, with the size and SHA-256 of every other file, and the
directory is renamed into place. A checkpoint is complete when its state file parses and every file it
lists has that size (cheap: what a run polls): a copy that was cut short (Ray Train persisting a
checkpoint to storage file by file when the process was killed) is never taken for a checkpoint. It
*verifies* when every file also has its SHA-256 (:func:`verify`): a resumed run takes the newest
checkpoint that verifies and says which it skipped and why (damage of the same size: a flipped byte
in a header or inside the optimizer state). A checkpoint a run diverged right after resuming from,
before any step with a finite loss, is marked (:data:`SUSPECT_FILE`) and skipped from then on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from gristmill.errors import GristmillError
from gristmill.io import follow_umask
from gristmill.trainer.model import GPT, RNG_LOCK, ModelArgs, build_model

STATE_FILE = "trainer_state.json"
#: in a checkpoint directory: the run diverged right after resuming from it (its content is why)
SUSPECT_FILE = "SUSPECT.json"
#: config.json of a native checkpoint: not a transformers model; transformers' error quotes model_type
NATIVE_SIGNPOST = {
    "model_type": "gristmill-native-checkpoint (not a transformers model: run `gristmill export-hf --checkpoint "
                  "THIS_DIR --output HF_DIR` and load HF_DIR)",
    "gristmill": "a native gristmill checkpoint; its run config is run_config.json, its dimensions model_config.json",
}
RUN_CONFIG = "run_config.json"  # the gristmill config of the run that wrote the checkpoint
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "tokenizer_meta.json")


def full_state(model, optimizer) -> tuple[dict, dict | None]:
    """Unsharded model and optimizer state on CPU (a collective under FSDP: every rank calls it)."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=opts)
    osd = get_optimizer_state_dict(model, optimizer, options=opts) if optimizer is not None else None
    return msd, osd


def gather_rng() -> dict[str, torch.Tensor]:
    """Every rank's generator states, gathered on all ranks (same order as ranks)."""
    mine = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        mine["cuda"] = torch.cuda.get_rng_state()
    states = [mine]
    if dist.is_available() and dist.is_initialized():
        states = [None] * dist.get_world_size()
        dist.all_gather_object(states, mine)
    return {f"rank{r}.{k}": v.cpu() for r, s in enumerate(states) for k, v in s.items()}


def save_checkpoint(path: Path, msd: dict, osd: dict | None, rng: dict, state: dict, args: ModelArgs,
                    config: dict, tokenizer_dir: str | None) -> Path:
    """Write a complete checkpoint at ``path`` (atomically: a temporary sibling renamed into place)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {k: v.contiguous() for k, v in msd.items() if not (args.tie_embeddings and k == "lm_head.weight")}
    save_file(weights, tmp / "model.safetensors", metadata={"format": "pt", "gristmill": "gpt"})
    if osd is not None:
        torch.save(osd, tmp / "optimizer.pt")
    save_file(rng, tmp / "rng.safetensors")
    (tmp / "model_config.json").write_text(json.dumps(args.to_dict(), indent=1))
    # not config.json: transformers would take the directory for a model of its own and fail obscurely
    (tmp / RUN_CONFIG).write_text(json.dumps(config, indent=1, sort_keys=True))
    # ... and without any config.json transformers 5 still fails obscurely ("Should have a `model_type`
    # key"): a signpost whose model_type is the way out, which transformers quotes in its error
    (tmp / "config.json").write_text(json.dumps(NATIVE_SIGNPOST, indent=1))
    if tokenizer_dir:
        for name in TOKENIZER_FILES:
            src = Path(tokenizer_dir) / name
            if src.is_file():
                shutil.copyfile(src, tmp / name)
    files = {f.name: f.stat().st_size for f in sorted(tmp.iterdir())}
    sha256 = {f.name: _sha256(f) for f in sorted(tmp.iterdir())}
    (tmp / STATE_FILE).write_text(json.dumps({**state, "files": files, "sha256": sha256}, indent=1, sort_keys=True))
    follow_umask(str(tmp))  # safetensors writes 0600: unreadable to colleagues on shared storage
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


def _complete_state(path: Path) -> dict | None:
    """The checkpoint's state if the checkpoint is complete (see the module docstring), else None."""
    try:
        state = json.loads((Path(path) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    for name, size in state.get("files", {}).items():  # checkpoints before the list: the state file only
        f = Path(path) / name
        if not f.is_file() or f.stat().st_size != size:
            return None
    return state


def is_complete(path: Path) -> bool:
    return _complete_state(path) is not None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path) -> str | None:
    """Why the checkpoint cannot be resumed from (incomplete, a file whose SHA-256 differs from the one
    recorded, marked suspect), or None when it verifies. Checkpoints written before checksums were
    recorded verify by their sizes."""
    path = Path(path)
    state = _complete_state(path)
    if state is None:
        return "incomplete (a file is missing or cut short)"
    for name, digest in state.get("sha256", {}).items():
        if _sha256(path / name) != digest:
            return f"{name} differs from its recorded SHA-256 (damaged after it was written)"
    if (path / SUSPECT_FILE).is_file():
        return json.loads((path / SUSPECT_FILE).read_text()).get("why", "marked suspect")
    return None


def newest_verified_checkpoint(run_dir: Path, skipped: list[str] | None = None) -> Path | None:
    """The newest ``checkpoint_*`` of a run that :func:`verify` accepts; each newer one it passed over is
    appended to ``skipped`` with the reason."""
    found = []
    for d in Path(run_dir).glob("checkpoint_*"):
        if d.is_dir() and not d.name.endswith(".tmp") and (state := _complete_state(d)) is not None:
            found.append((state["step"], d))
    for _, d in sorted(found, reverse=True):
        problem = verify(d)
        if problem is None:
            return d
        if skipped is not None:
            skipped.append(f"{d.name}: {problem}")
    return None


def mark_suspect(path: Path, why: str) -> None:
    """Mark a checkpoint not to be resumed from again (:func:`verify` then names ``why``)."""
    (Path(path) / SUSPECT_FILE).write_text(json.dumps({"why": why}, indent=1))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete ``checkpoint_*`` directory of a run (by step), or None."""
    best, best_step = None, -1
    for d in Path(run_dir).glob("checkpoint_*"):
        if d.is_dir() and not d.name.endswith(".tmp") and (state := _complete_state(d)) is not None:
            if state["step"] > best_step:
                best, best_step = d, state["step"]
    return best


class CheckpointError(GristmillError):
    """A path that is not a usable checkpoint; the message says what to pass instead."""


def resolve_checkpoint(path: str | Path) -> Path:
    """``path`` if it is a complete checkpoint, else an error that says what it is and what to pass."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    if is_complete(p):
        return p
    latest = latest_checkpoint(p) if p.is_dir() else None
    if latest is not None:
        raise CheckpointError(f"{p} is a training run, not a checkpoint: its latest checkpoint is {latest}")
    if (p / STATE_FILE).is_file():
        raise CheckpointError(f"{p} is an incomplete checkpoint (a file is missing or was cut short): use another one")
    raise CheckpointError(f"{p} is not a gristmill checkpoint (no {STATE_FILE}): pass one of the checkpoint_NNNNNNNN "
                          "directories a training run writes")


def read_state(path: Path) -> dict:
    return json.loads((Path(path) / STATE_FILE).read_text())


def load_model_args(path: Path) -> ModelArgs:
    return ModelArgs.from_dict(json.loads((Path(path) / "model_config.json").read_text()))


def load_weights(path: Path, args: ModelArgs) -> dict[str, torch.Tensor]:
    sd = load_file(Path(path) / "model.safetensors")
    if args.tie_embeddings:
        sd["lm_head.weight"] = sd["embed.weight"]
    return sd


def restore(path: Path, model, optimizer, rank: int) -> dict:
    """Load weights, optimizer state and this rank's RNG state into a (possibly wrapped) model."""
    path = Path(path)
    args = load_model_args(path)
    full = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, load_weights(path, args), options=full)
    if optimizer is not None:
        osd = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
        set_optimizer_state_dict(model, optimizer, osd, options=full)
    rng = load_file(path / "rng.safetensors")
    if f"rank{rank}.cpu" in rng:  # a run resumed on more workers than it saved starts the new ranks fresh
        with RNG_LOCK:  # not while another run in this process seeds and builds its model
            torch.set_rng_state(rng[f"rank{rank}.cpu"])
            if f"rank{rank}.cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng[f"rank{rank}.cuda"])
    return read_state(path)


def require_causal(args: ModelArgs, path, what: str) -> None:
    """An error for a causal-only command (``what``) given an MLM encoder's checkpoint, naming what to use."""
    if args.objective == "mlm":
        raise CheckpointError(
            f"{path} is a masked-language-model encoder (model.objective: mlm): {what} needs a causal checkpoint "
            "(model.objective: clm). An encoder predicts masked tokens: `gristmill eval --data` reports its masked-"
            "token perplexity, `gristmill export-hf` gives a transformers fill-mask model, and `gristmill "
            "finetune-cls` fine-tunes it for classification")


def load_model(path: str | Path, device: str | torch.device = "cpu", with_classifier: bool = False) -> GPT:
    """A checkpoint's model, ready for inference (eval mode): the language model, or with
    ``with_classifier`` the classifier a classification fine-tuning trained (GPTClassifier)."""
    path = resolve_checkpoint(path)
    args = load_model_args(path)
    weights = load_weights(path, args)
    if not with_classifier:
        args = dataclasses.replace(args, n_classes=0)
        weights = {k: v for k, v in weights.items() if not k.startswith(("cls_head.", "cls_dense."))}
    elif not args.n_classes:
        raise ValueError(f"{path} is not a classifier checkpoint (it has no classification head)")
    model = build_model(args)
    model.load_state_dict(weights)
    return model.to(device).eval()
