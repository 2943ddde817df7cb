"""How text is sampled from a model: the one definition of the sampling settings and their defaults,
used by ``gristmill generate`` (its options' defaults), the Python API (:func:`gristmill.api.generate`)
and the trainer's generation loop (:mod:`gristmill.trainer.generate`). Plain Python, so that the
command line's ``--help`` shows the defaults without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 128
    temperature: float = 0.8  # 0 = greedy
    top_k: int | None = 50  # None (or 0 on the command line) = off
    top_p: float | None = 0.95  # None (or 1 on the command line) = off
    #: generation ends before any of these strings (they are not returned)
    stop: tuple[str, ...] = ()
    #: generation ends at these token ids (eos, <|im_end|>); filled from the tokenizer by default
    stop_ids: tuple[int, ...] = field(default=())
    use_cache: bool = True
    seed: int = 0
