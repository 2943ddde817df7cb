"""A worker's place in its group: the model wrapped for DDP or FSDP2, the node it runs on, and Ray Train's
per-report log lines quieted (gristmill's own lines say the same)."""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from gristmill.trainer.model import GPT

log = logging.getLogger("gristmill.trainer")


def quiet_ray_train_reports() -> None:
    """Ray Train logs every ``ray.train.report`` at INFO with the whole report, on a logger named by its
    file path (so its LoggingConfig does not reach it); gristmill's own lines already say the same."""
    if log.isEnabledFor(logging.DEBUG):
        return
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def node_ip() -> str | None:
    try:
        import ray.util

        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - local mode without a Ray node
        return None


def wrap(model: GPT, parallel: str, world: int, device: torch.device, bf16: bool) -> torch.nn.Module:
    """The model as the process group trains it: itself alone, DDP (gradients averaged, every rank whole) or
    FSDP2 (each block's parameters sharded by rows; bf16 parameters with fp32 reductions under autocast)."""
    if not (dist.is_available() and dist.is_initialized()) or world == 1:
        return model
    if parallel == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy()
        if bf16:
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in model.layers:
            fully_shard(block, mp_policy=mp)
        return fully_shard(model, mp_policy=mp)
    from torch.nn.parallel import DistributedDataParallel as DDP

    # a classifier never uses an untied output matrix: DDP must not wait for its gradient
    unused = bool(model.args.n_classes) and not model.args.tie_embeddings
    device_ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=device_ids, find_unused_parameters=unused)
