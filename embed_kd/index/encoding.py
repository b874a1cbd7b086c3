"""A model's embeddings of a corpus (or of a set of queries), from the embedding cache when valid.

The one entry point every stage uses to embed a corpus (candidate mining, dense teachers,
training's teacher document embeddings, index building, evaluation): the cache key is the model
fingerprint, the corpus fingerprint, the maximum sequence length and the normalisation
(:mod:`embed_kd.index.cache`); encoding is block by block into the memory-mapped cache entry,
data-parallel under ``torchrun`` (:mod:`embed_kd.index.stream_encode`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from embed_kd.data.fingerprint import fingerprint_corpus, fingerprint_queries
from embed_kd.encode import encode_texts, uses_cosine
from embed_kd.index.cache import EmbeddingCache
from embed_kd.index.stream_encode import encode_corpus_streamed
from embed_kd.models import fingerprint_model, model_name

if TYPE_CHECKING:  # pragma: no cover
    from embed_kd.data.beir import BeirDataset


def encode_corpus(model, dataset: "BeirDataset", *, cache: EmbeddingCache, batch_size: int = 32,
                  normalize: bool | None = None, show_progress: bool = True):
    """Document embeddings for ``dataset.corpus`` (row i = ``list(corpus)[i]``), from the cache if valid.

    Returns ``(embeddings, doc_ids, cache_result)``; the embeddings are a copy-on-write memory map.
    ``normalize`` defaults to the model's similarity (cosine → L2-normalised).
    """
    normalize = uses_cosine(model) if normalize is None else normalize
    key = cache.make_key(fingerprint_model(model), fingerprint_corpus(dataset.corpus),
                         getattr(model, "max_seq_length", None), normalize, getattr(model, "embed_kd_backend", None))
    res = encode_corpus_streamed(model, dataset.corpus, key, cache=cache, batch_size=batch_size, normalize=normalize,
                                 show_progress=show_progress, model_label=model_name(model))
    return res.embeddings, res.ids, res


def query_embeddings(model, queries: dict[str, str], qids: list[str], *, cache: EmbeddingCache, batch_size: int = 64,
                     show_progress: bool = True) -> np.ndarray:
    """Embeddings of ``qids`` (row order; ``queries`` maps id → text, encoded with the model's query
    prompt) through the shared embedding cache, keyed by the model and the texts' fingerprint."""
    normalize = uses_cosine(model)
    sub = {q: queries[q] for q in qids}
    key = cache.make_key(fingerprint_model(model), "queries:" + fingerprint_queries(sub),
                         getattr(model, "max_seq_length", None), normalize)
    res = cache.get_or_encode(key, qids, lambda: encode_texts(model, [sub[q] for q in qids], batch_size=batch_size,
                                                              normalize=normalize, role="query",
                                                              show_progress=show_progress),
                              model=model_name(model))
    return res.embeddings
