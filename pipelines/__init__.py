"""Corpus pipelines on Apache Beam: web text → clean, deduplicated, language-partitioned Arrow
shards (``corpus``, ``refresh``), and corpus shards → packed token shards (``tokenize``).

Steps as public Beam transforms: :mod:`gristmill.pipelines.transforms`; the cleaning filters as
pure functions: :mod:`gristmill.pipelines.filters`.
"""
