"""Model, token-shard data, the Ray Train loop, checkpoints (trainer/README in docs/trainer.md)."""


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or inf; the run stopped and its last good checkpoint is kept."""
