"""``--truncate-dim`` / ``--precision`` / ``--rescore``: the compressed-output flags ``eval``, ``index build`` and ``serve`` share."""

from __future__ import annotations

import click

from embed_kd.index.compression import PRECISIONS


def compression_options(fn):
    """Add the three flags; the command receives ``truncate_dim``, ``precision`` and ``rescore``."""
    fn = click.option("--rescore", type=click.IntRange(1), metavar="K",
                      help="Quantized precisions: re-score the top K candidates with the float query against the "
                           "stored codes, then keep --top-k.")(fn)
    fn = click.option("--precision", type=click.Choice(PRECISIONS), default=None,
                      help="Store document vectors as float32 (default), int8/uint8 (1 byte a dimension, ranges "
                           "calibrated on the corpus) or binary/ubinary (1 bit; Hamming search).")(fn)
    fn = click.option("--truncate-dim", type=click.IntRange(1), metavar="N",
                      help="Keep the first N dimensions (Matryoshka-style; renormalised for cosine models).")(fn)
    return fn


def compression_from_flags(truncate_dim, precision, rescore):
    """The :class:`~embed_kd.index.compression.Compression` the flags ask for, or None when none is given."""
    from embed_kd.index.compression import Compression

    if truncate_dim is None and precision is None and rescore is None:
        return None
    return Compression(truncate_dim=truncate_dim, precision=precision or "float32", rescore=rescore)
