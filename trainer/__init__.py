"""Training on token shards with Ray Train: the transformer (:mod:`.model`), the data order
(:mod:`.data`), the loop (:mod:`.loop`) for pretraining and fine-tuning, checkpoints, evaluation,
generation and Hugging Face export. Imports the core and the token-shard format of
:mod:`gristmill.tokenizer`; see docs/trainer.md."""

from gristmill.errors import ExitCode, GristmillError


class TrainingDivergedError(GristmillError, RuntimeError):
    """The loss became NaN or inf; the run stopped and its last good checkpoint is kept."""

    exit_code = ExitCode.DIVERGED
    label = "training diverged"
