"""The driver: check and resolve a run's config (:func:`prepare`), then launch the per-worker loop
(trainer/loop.py) with Ray Train — on the cluster of RAY_ADDRESS (``ray job submit``), a Ray started in this
process, or in this process alone (``num_workers: 0``, Ray Train's local mode; several under torchrun) — and
wait for it in a way that lets SIGTERM and Ctrl-C through (:func:`wait_interruptibly`). Also Ray's
workarounds for a Ray started here (quiet loggers, the autoscaling coordinator started ahead).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from gristmill.config import GristmillConfig, LoopConfig
from gristmill.errors import at_stop, reinstall_stop_handlers
from gristmill.outputs import recorded_run
from gristmill.tokenizer.cache import token_manifest
from gristmill.trainer import TrainingDivergedError, run_store
from gristmill.trainer import checkpoint as ckpt
from gristmill.trainer.data import BatchPlan, DataError
from gristmill.trainer.loop import DIVERGED_FILE, train_loop
from gristmill.trainer.mfu import driver_cpu_peak
from gristmill.trainer.model import ModelArgs, resolve_model_args
from gristmill.trainer.tasks import TASK_SECTIONS

log = logging.getLogger("gristmill.trainer")


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path | None
    metrics: dict
    seconds: float


def _abs(path: str) -> str:
    return os.path.abspath(path) if "://" not in path else path


def mask_token_id(tokenizer_dir: str) -> int:
    """The <mask> id of a tokenizer directory, or an error saying how to get a tokenizer that has one."""
    import sentencepiece as spm

    from gristmill.tokenizer.train import MASK

    sp = spm.SentencePieceProcessor(model_file=str(Path(tokenizer_dir) / "tokenizer.model"))
    mask_id = sp.piece_to_id(MASK)
    if mask_id == sp.unk_id():  # SentencePiece's answer for a piece it does not have
        raise DataError(f"model.objective: mlm needs a tokenizer with a {MASK} token, and {tokenizer_dir} has none "
                        "(trained before gristmill reserved it): train the tokenizer again (`gristmill tokenizer "
                        "train`, which reserves <mask>) and tokenize again, or pretrain with model.objective: clm")
    return mask_id


def cls_pooling(pooling: str, objective: str, init) -> str:
    """finetune_cls.pooling resolved for the checkpoint's objective (auto: last for causal, mean for MLM)."""
    if pooling == "auto":
        return "mean" if objective == "mlm" else "last"
    if objective == "mlm" and pooling == "last":
        raise DataError(f"finetune_cls.pooling: last is for causal checkpoints; {init} is an MLM encoder: use first "
                        "or mean (or auto)")
    if objective != "mlm" and pooling != "last":
        raise DataError(f"finetune_cls.pooling: {pooling} is for MLM encoders; {init} is a causal model, whose last "
                        "token is the one that has read the text: use last (or auto)")
    return pooling


def _prepare_mixture(p, section_tree: dict, section: str) -> tuple[str, dict]:
    """Check a mixture before any training: every source a token directory, all with one tokenizer and
    seq_len, weights usable, and no epoch cap exceeded by the run's token budget (max_steps × batch_size
    sequences). Logs MassiveText's table and writes it to STORAGE/NAME/mixture.json. Returns the first
    source's directory and manifest (the tokenizer and shape of all)."""
    from gristmill.trainer.mixture import MixedStream, MixtureSource, check_compatible, format_plan, plan

    if p.data:
        raise DataError(f"{section}.data and {section}.mixture are both set: a run reads one token directory or a "
                        f"mixture; unset one (--set {section}.data=null)")
    manifests, sources = {}, []
    for k, src in enumerate(p.mixture):
        path = _abs(src.data)
        section_tree["mixture"][k]["data"] = path
        try:
            manifests[src.name] = token_manifest(path)
        except (OSError, ValueError) as e:
            raise DataError(f"{section}.mixture source {src.name!r}: {e}") from None
        sources.append(MixtureSource(src.name, src.weight, int(manifests[src.name]["splits"]["train"]["sequences"]),
                                     src.max_epochs))
    check_compatible(manifests)
    first = next(iter(manifests.values()))
    rows = plan(MixedStream(sources, p.seed), p.max_steps * p.batch_size, int(first["seq_len"]))
    log.info("mixture over %d steps × %d sequences of %d tokens:\n%s", p.max_steps, p.batch_size,
             int(first["seq_len"]), format_plan(rows))
    run_dir = Path(section_tree["storage_path"]) / p.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "mixture.json").write_text(json.dumps({"sources": rows, "steps": p.max_steps,
                                                      "batch_size": p.batch_size}, indent=1) + "\n")
    return section_tree["mixture"][0]["data"], first


def prepare(cfg: GristmillConfig, task: str = "pretrain") -> tuple[GristmillConfig, ModelArgs, dict]:
    """Check the data and resolve paths (absolute: workers on other nodes see the same) and dimensions.
    Returns the resolved config, the model dimensions and what else the workers need."""
    section = TASK_SECTIONS[task]
    p = getattr(cfg, section)
    tree = cfg.model_dump(mode="json")
    extra: dict = {"task": task, "tokenizer_dir": None, "init_checkpoint": None, "remote_run": None}
    if "://" in p.storage_path:  # an object store: the run works in a local mirror (trainer/run_store.py)
        tree[section]["storage_path"] = str(run_store.mirror_of(p.storage_path))
        extra["remote_run"] = p.storage_path.rstrip("/") + "/" + p.name
    else:
        tree[section]["storage_path"] = _abs(p.storage_path)
    if task == "pretrain":
        if p.mixture:
            data, manifest = _prepare_mixture(p, tree[section], section)
        elif not p.data:
            raise DataError("pretrain.data is not set: give a config with a pretrain: section (e.g. configs/demo.yaml) "
                            "or --set pretrain.data=TOKENS (a directory written by `gristmill tokenize`)")
        else:
            data = _abs(p.data)
            manifest = token_manifest(data)
            tree[section]["data"] = data
        args = resolve_model_args(cfg.model, vocab_size=int(manifest["vocab_size"]), seq_len=int(manifest["seq_len"]))
        if manifest["splits"]["train"]["sequences"] == 0:
            raise DataError(f"{data}: the train split has no sequences (corpus smaller than one sequence of "
                            f"{manifest['seq_len'] + 1} tokens)")
        tok = manifest.get("tokenizer")
        if tok and "://" not in tok:
            tok_path = Path(tok) if Path(tok).is_dir() else Path(tok).parent
            extra["tokenizer_dir"] = str(tok_path.resolve()) if (tok_path / "tokenizer.model").is_file() else None
        if extra["tokenizer_dir"] is None:  # checkpoints are still complete for training, not for generation
            if args.objective == "mlm":
                raise DataError(f"model.objective: mlm needs the tokenizer of {data} (its <mask> id), and {tok} was "
                                "not found: tokenize again with a tokenizer directory this machine can read")
            log.warning("the tokenizer of %s (%s) was not found: checkpoints will not carry it", data, tok)
        if args.objective == "mlm":
            args = dataclasses.replace(args, mask_id=mask_token_id(extra["tokenizer_dir"]))
        if args.document_mask:
            eos = (manifest.get("special_tokens") or {}).get("eos", -1)
            if eos is None or eos < 0:
                raise DataError(f"model.document_mask needs the eos id of the tokenizer of {data}, and its token "
                                "manifest names none: tokenize with a tokenizer that has an eos piece")
            args = dataclasses.replace(args, eos_id=int(eos))
    else:
        if not p.init_checkpoint:
            raise DataError(f"{section}.init_checkpoint is not set: give a config with a {section}: section "
                            f"(e.g. configs/demo.yaml) or --set {section}.init_checkpoint=CHECKPOINT "
                            "(a checkpoint_NNNNNNNN directory of `gristmill pretrain`)")
        try:
            init = ckpt.resolve_checkpoint(_abs(p.init_checkpoint))
        except ckpt.CheckpointError as e:
            raise DataError(f"{section}.init_checkpoint: {e}") from None
        if not (init / "tokenizer.model").is_file():
            raise DataError(f"{init} carries no tokenizer.model: fine-tuning needs the pretraining tokenizer")
        tree[section]["init_checkpoint"] = str(init)
        tree[section]["files"] = [_abs(f) for f in p.files]
        if not p.files:
            raise DataError(f"{section}.files is empty: name the JSONL/JSON/TSV files to fine-tune on")
        extra.update(tokenizer_dir=str(init), init_checkpoint=str(init))
        args = ckpt.load_model_args(init)
        if task == "sft" and args.objective == "mlm":
            raise DataError(f"{init} is a masked-language-model encoder (model.objective: mlm): SFT trains a model to "
                            "generate, which an encoder cannot. Fine-tune it for classification with `gristmill "
                            "finetune-cls`, or run SFT from a causal checkpoint (model.objective: clm)")
        if p.seq_len > args.max_seq_len:
            raise DataError(f"{section}.seq_len {p.seq_len} exceeds the model's max_seq_len {args.max_seq_len}")
        if task == "cls":
            import sentencepiece as spm

            from gristmill.trainer.finetune_data import cls_examples

            pooling = cls_pooling(p.pooling, args.objective, init)
            tree[section]["pooling"] = pooling
            sp = spm.SentencePieceProcessor(model_file=str(init / "tokenizer.model"))
            cfg_abs = GristmillConfig.model_validate(tree)
            classes = cls_examples(sp, cfg_abs.finetune_cls, "train", p.seed).classes
            if len(classes) < 2:
                raise DataError(f"finetune_cls: {len(classes)} class(es) in the training split; need at least 2")
            args = dataclasses.replace(args, n_classes=len(classes), pooling=pooling)
            extra["classes"] = classes
    cfg = GristmillConfig.model_validate(tree)
    BatchPlan(p.batch_size, p.micro_batch_size, max(1, p.num_workers) if p.num_workers else local_world_size()).check()
    return cfg, args, extra


def local_world_size() -> int:
    """The processes of a local-mode run (``num_workers: 0``): one, or as many as torchrun started (its
    WORLD_SIZE; Ray Train's local mode joins them in one process group)."""
    return int(os.environ.get("WORLD_SIZE", "1")) if "RANK" in os.environ else 1


def is_rank_zero() -> bool:
    """Whether this process speaks for the run: always, but for the other ranks torchrun started."""
    return os.environ.get("RANK", "0") == "0"



def _quiet_placement_group_cleaner() -> None:
    """Worker setup when gristmill starts Ray itself, without its dashboard, on this machine:
    - Ray Train's placement-group cleaner asks the State API (served by the dashboard) about the
      controller every second and warns each time it cannot; the run is not affected (gristmill's
      Ray ends with the run);
    - the controller's autoscaling requests time out when the CPUs are busy training (a warning with
      a GetTimeoutError traceback, "safe to ignore" by its own words): a Ray started in-process has
      no autoscaler to ask;
    - with two such Rays on one machine (two runs at once), the cleaner's State API client looks for
      "the" local Ray, finds both, and its thread dies with a traceback: each worker is told its own
      cluster's address."""
    for name in ("ray.train.v2._internal.execution.controller.placement_group_cleaner",
                 "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import ray

        os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    except Exception as e:  # noqa: BLE001 - only a traceback in the log is at stake
        log.debug("could not tell the worker its cluster's address: %s", e)


def _start_autoscaling_coordinator() -> None:
    """Start, and wait for, the actor Ray Train's controller sends its resource requests to. Created
    on the controller's first request, while the CPUs are busy starting the run, it is often not up
    within the request's 5 s timeout, and the controller logs a GetTimeoutError traceback ("safe to
    ignore") into every run. Ray's internal API: if it changes, the warning may come back, nothing else."""
    import ray

    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )

        ray.get(get_or_create_autoscaling_coordinator().__ray_ready__.remote(), timeout=120)
    except Exception as e:  # noqa: BLE001 - only a warning is at stake
        log.debug("could not start Ray's autoscaling coordinator ahead of the run: %s", e)


def ensure_ray(p: LoopConfig) -> None:
    """Join the cluster of RAY_ADDRESS (``ray job submit``), or start a Ray in this process; no-op when
    Ray is up."""
    import ray

    if ray.is_initialized():
        return
    if not os.environ.get("RAY_ADDRESS"):
        # a Ray of our own keeps Ray's default for a new local cluster, token authentication, without
        # Ray's warning on every run that it is on (RAY_AUTH_MODE=token said explicitly is not the
        # same: Ray then makes no token for the new cluster and cannot connect to it)
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    if not os.environ.get("RAY_ADDRESS"):
        # Ray Train's preemption watcher (an actor per worker group) polls for node drains: a Ray of our own
        # is one node that lives as long as the run, with nothing to drain. Its constructor arguments go
        # through the object store, and with max_restarts set Ray's core worker prints an "E" line saying
        # so when the machine is busy (ray-project/ray#53727; gristmill issue 33): one process less, and no
        # error line that is not one. A user's explicit RAY_TRAIN_ENABLE_PREEMPTION_WATCHER wins.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    no_dashboard = not (p.local_dashboard or os.environ.get("RAY_ADDRESS"))
    quiet = {"worker_process_setup_hook": _quiet_placement_group_cleaner}
    ray.init(logging_level=logging.WARNING, log_to_driver=True,
             **({"include_dashboard": False, "runtime_env": quiet} if no_dashboard else {}))
    # ray.init installs a handler that aborts the process on SIGTERM (exit 134, a C++ stack dump): the
    # command's own handlers stop the run cleanly instead (gristmill.errors), and a Ray started here is
    # shut down before the process exits, so none of its processes is left behind
    reinstall_stop_handlers()
    if not os.environ.get("RAY_ADDRESS"):
        at_stop(ray.shutdown)
        _start_autoscaling_coordinator()


def run_training(cfg: GristmillConfig, task: str = "pretrain", progress: bool = False) -> TrainResult:
    """Launch the loop with Ray Train: on the cluster of RAY_ADDRESS (``ray job submit``), or a Ray started
    in-process. A ``storage_path`` on an object store: the run works in a local mirror, pulled from the store
    first and pushed to it at every checkpoint and at the end (trainer/run_store.py)."""
    t0 = time.time()
    if not is_rank_zero():  # under torchrun, rank 0 speaks for the run; the others only warn
        log.setLevel(max(log.getEffectiveLevel(), logging.WARNING))
    cfg, args, extra = prepare(cfg, task)
    p = getattr(cfg, TASK_SECTIONS[task])
    run_dir = Path(p.storage_path) / p.name
    with run_store.mirrored(extra["remote_run"], run_dir, pushes=is_rank_zero()):
        return _fit(cfg, args, extra, task, progress, t0)


def _fit(cfg: GristmillConfig, args: ModelArgs, extra: dict, task: str, progress: bool, t0: float) -> TrainResult:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    p = getattr(cfg, TASK_SECTIONS[task])
    run_dir = Path(p.storage_path) / p.name
    finished = _finished(run_dir, p.max_steps)
    if finished is not None:  # resubmitted after it ended: say so, start nothing
        state = ckpt.read_state(finished)
        log.info("%s is already complete at step %d (max_steps %d): nothing to train; its last checkpoint is %s",
                 run_dir, state["step"], p.max_steps, finished)
        return TrainResult(run_dir, finished, state.get("metrics") or {}, time.time() - t0)
    if not (p.use_gpu or p.peak_tflops or ray.is_initialized() or os.environ.get("RAY_ADDRESS")):
        threads = torch.get_num_threads() if p.num_workers == 0 else p.cpus_per_worker
        extra["cpu_peak"] = driver_cpu_peak(p, threads)
    local_mode = p.num_workers == 0
    if local_mode:
        # Ray Train's local mode runs the loop in this process and needs no cluster: starting one cost
        # every in-process run (the demo's SFT, the API's examples) seconds and a node's worth of processes.
        # Ray's own loggers stay at the level a started Ray would set (its INFO lines would say, per
        # checkpoint, what gristmill's lines already say)
        logging.getLogger("ray").setLevel(logging.WARNING)
    else:
        ensure_ray(p)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"config": cfg.model_dump(mode="json"), "model_args": args.to_dict(),
                           "local_mode": local_mode, "progress": progress, **extra},
        torch_config=TorchConfig(backend="nccl" if p.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=p.num_workers, use_gpu=p.use_gpu, placement_strategy=p.placement_strategy,
            resources_per_worker={"CPU": p.cpus_per_worker, **({"GPU": 1} if p.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=p.name, storage_path=p.storage_path,
            failure_config=FailureConfig(max_failures=p.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=p.keep_checkpoints),
            # Ray Train's own INFO lines (one per report and rank) drown the loop's; its warnings stay
            logging_config=LoggingConfig(log_level="WARNING" if not log.isEnabledFor(logging.DEBUG) else "INFO"),
        ),
    )
    # STORAGE_PATH/NAME/run.json says how the run ended (as a corpus's does): interrupted by SIGTERM with
    # 143, diverged with 3, ...; rank zero speaks for a torchrun group
    with recorded_run(str(run_dir), task) if is_rank_zero() else contextlib.nullcontext({}) as record:
        result = trainer.fit() if local_mode else wait_interruptibly(trainer.fit)
        _check_diverged(run_dir, result)
        checkpoint = Path(result.checkpoint.path) if result.checkpoint is not None else ckpt.latest_checkpoint(run_dir)
        record.update(checkpoint=str(checkpoint) if checkpoint else None)
    return TrainResult(run_dir, checkpoint, result.metrics or {}, time.time() - t0)


#: how often a main thread that waits on other threads looks for a signal to handle
SIGNAL_POLL_SECONDS = 0.2


def _finished(run_dir: Path, max_steps: int) -> Path | None:
    """The run's final checkpoint when an earlier submission reached ``max_steps``, else None."""
    newest = ckpt.latest_checkpoint(run_dir) if run_dir.is_dir() else None  # sizes only: cheap
    if newest is None or ckpt.read_state(newest)["step"] < max_steps:
        return None  # not finished: resume() verifies what it resumes from
    return None if ckpt.verify(newest) else newest  # a damaged final checkpoint: train from an older one


def wait_interruptibly(fn):
    """``fn()`` in a helper thread while the main thread waits for it. Ray Train's ``fit`` blocks the
    main thread in Ray's C++ ``get`` until training ends, and Python runs signal handlers only between
    bytecodes of the main thread: SIGTERM or Ctrl-C would wait for the whole run. An Event's wait is
    interrupted by them (gristmill.errors stops the run, shutting down a Ray started here)."""
    if threading.current_thread() is not threading.main_thread():
        return fn()
    box: dict = {}
    done = threading.Event()

    def target():
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread as it is
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=target, name="gristmill-ray-train-fit", daemon=True).start()
    # with a timeout: the kernel may deliver the signal to another thread (Ray's), and then only the main
    # thread's next bytecode runs the handler; an endless wait would never return to one
    while not done.wait(SIGNAL_POLL_SECONDS):
        pass
    if "error" in box:
        raise box["error"]
    return box["result"]


def train_in_this_thread(cfg: GristmillConfig, task: str = "pretrain") -> TrainResult:
    """One run of one worker in the calling thread, without Ray Train (no controller, no worker group, no
    Ray at all): what trains several small models in one process, one thread each, sharing its device
    (``ablate.runs_per_process``). Resumes from the newest verified checkpoint on disk as local mode does;
    a failure is the caller's to retry. Each run's initial weights are those it gets alone (the global RNG
    is taken in turns); dropout's stream is not per thread, so runs that share a process need dropout 0."""
    t0 = time.time()
    cfg, args, extra = prepare(cfg, task)
    p = getattr(cfg, TASK_SECTIONS[task])
    run_dir = Path(p.storage_path) / p.name
    with run_store.mirrored(extra["remote_run"], run_dir):
        finished = _finished(run_dir, p.max_steps)
        if finished is not None:
            return TrainResult(run_dir, finished, ckpt.read_state(finished).get("metrics") or {}, time.time() - t0)
        loop_config = {"config": cfg.model_dump(mode="json"), "model_args": args.to_dict(), "local_mode": True,
                       "plain": True, "progress": False, **extra}
        with recorded_run(str(run_dir), task) as record:
            metrics = train_loop(loop_config)
            _check_diverged(run_dir, None)
            checkpoint = ckpt.latest_checkpoint(run_dir)
            record.update(checkpoint=str(checkpoint) if checkpoint else None)
    return TrainResult(run_dir, checkpoint, metrics, time.time() - t0)


def _check_diverged(run_dir: Path, result) -> None:
    diverged = run_dir / DIVERGED_FILE
    if diverged.exists():
        info = json.loads(diverged.read_text())
        reported = result.checkpoint.path if result is not None and result.checkpoint else None
        last_good = info.get("last_good_checkpoint") or reported
        raise TrainingDivergedError(f"{info['message']} ({last_good or 'no checkpoint was written before it'}); "
                                    "lower the learning rate, raise warmup_steps or check the data")


def print_summary(task: str, result) -> None:
    """What a finished training run printed: its last metrics, the loss curve's ends, where things are.
    Under torchrun (Ray Train's local mode in several processes) rank 0 prints for all."""
    if os.environ.get("RANK", "0") != "0":
        return
    m = result.metrics
    loss = f", loss {m['loss']:.4f}" if "loss" in m else ""
    val = f", val loss {m['val_loss']:.4f}" if "val_loss" in m else ""
    ppl = f" (perplexity {m['val_ppl']:.2f})" if "val_ppl" in m else ""
    # an MLM run's accuracy is over its masked tokens, a classifier's over its examples
    acc = f", val accuracy {m['val_accuracy']:.3f}" if "val_accuracy" in m else ""
    print(f"{task}: step {m.get('step', '?')}{loss}{val}{ppl}{acc} in {result.seconds:.0f} s")
    print(f"final:      {json.dumps(m)}")
    metrics_path = result.run_dir / "metrics.jsonl"
    curve = [json.loads(x) for x in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
    curve = [r for r in curve if "loss" in r]
    if len(curve) >= 2:
        first, last = curve[0], curve[-1]
        print(f"loss:       {first['loss']:.3f} at step {first['step']} → {last['loss']:.3f} at step {last['step']}")
    print(f"metrics:    {metrics_path} (TensorBoard: {result.run_dir / 'tensorboard'})")
    print(f"checkpoint: {result.checkpoint}")
