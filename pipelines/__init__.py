"""gristmill corpus pipelines: web text → clean, deduplicated, language-partitioned Arrow shards."""

__version__ = "0.1.0"
