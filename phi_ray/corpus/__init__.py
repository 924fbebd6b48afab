"""The corpus (ingest) stage: raw code sources -> a filtered, deduplicated Parquet corpus.

Laid out as the pipeline reads (datatrove style): :mod:`readers` (``.py`` trees, listed in
Ray tasks by :mod:`listing`; :mod:`stack` for The Stack Parquet and the hub;
:mod:`stackoverflow` records, HTML by :mod:`html_text`) -> :mod:`process` (checks and prefilters of
:mod:`filters`, ids, token counts, :mod:`minhash` band keys) -> :mod:`dedup` (exact and
near, distributed) -> :mod:`stage` (``run``: passes, counts, atomic output).
"""

from phi_ray.corpus.readers import CorpusError

__all__ = ["CorpusError"]
