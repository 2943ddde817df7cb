"""gristmill: from raw web crawls to a trained language model.

The package is one namespace. Its core (this folder) is what every stage shares: the typed config
(:mod:`gristmill.config`), logging (:mod:`gristmill.log`), files and Arrow I/O (:mod:`gristmill.io`),
the corpus contract (:mod:`gristmill.documents`) and the error base class
(:mod:`gristmill.errors`). The stages import the core and only the stages below them::

    gristmill.pipelines  (Beam: corpus, refresh, tokenize)  →  gristmill.dedupe, gristmill.tokenizer
    gristmill.trainer    (Ray Train: pretrain, SFT, classification, eval, generation, export)  →  gristmill.tokenizer

On top: the Python API (:mod:`gristmill.api`, whose functions are also available here, e.g.
``gristmill.run_corpus``) and the command line (:mod:`gristmill.cli`). See docs/api.md.
"""

__version__ = "0.1.0"

_API = ("run_corpus", "refresh", "add_filter", "train_tokenizer", "load_tokenizer", "decode", "tokenize", "pretrain",
        "sft", "finetune_cls", "evaluate", "generate", "SamplingConfig", "export_hf", "load_config", "verify", "plot",
        "ablate", "quality_params", "train_quality")

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    # the API on first use: `import gristmill` imports no stage (and neither Beam nor Ray nor torch)
    if name in _API:
        from gristmill import api

        return getattr(api, name)
    raise AttributeError(f"module 'gristmill' has no attribute {name!r}")
