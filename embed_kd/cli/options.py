"""``--cache-dir`` / ``--no-cache`` / ``--threads`` / ``--no-progress``: the encoding-run flags that
``score-teacher run``, ``train-teacher`` and ``index build|add`` share."""

from __future__ import annotations

import click


def encoding_options(fn):
    """Add the four flags; the command receives ``cache_dir``, ``no_cache``, ``threads`` and ``no_progress``."""
    fn = click.option("--no-progress", is_flag=True, help="No progress bars.")(fn)
    fn = click.option("--threads", type=click.IntRange(1), help="torch CPU threads (default: torch's choice).")(fn)
    fn = click.option("--no-cache", is_flag=True, help="Do not read or write the document-embedding cache.")(fn)
    fn = click.option("--cache-dir", type=click.Path(file_okay=False),
                      help="Embedding cache root (default $EMBED_KD_CACHE or ~/.cache/embed_kd).")(fn)
    return fn
