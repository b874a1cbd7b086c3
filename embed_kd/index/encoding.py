"""A model's document embeddings for a corpus, from the embedding cache when valid.

The one entry point every stage uses to embed a corpus (candidate mining, dense teachers,
training's teacher document embeddings, index building, evaluation): the cache key is the model
fingerprint, the corpus fingerprint, the maximum sequence length and the normalisation
(:mod:`embed_kd.index.cache`); encoding is block by block into the memory-mapped cache entry,
data-parallel under ``torchrun`` (:mod:`embed_kd.index.stream_encode`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embed_kd.data.fingerprint import fingerprint_corpus
from embed_kd.encode import uses_cosine
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
