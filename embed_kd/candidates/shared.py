"""Fitted retrievers, loaded models and embeddings shared by candidate sources and teachers.

``score-teacher --candidates bm25:100 --teacher bm25`` fits BM25 once; ``dense:minilm-l6:30`` plus a
``minilm-l6`` bi-encoder teacher load MiniLM once, read its document embeddings once from the
embedding cache of ``embed-kd eval`` (:func:`~embed_kd.index.encoding.encode_corpus`)
and encode each query of a chunk once.

``prepare_bi_encoder`` runs on every bi-encoder loaded here — dense candidate sources and bi-encoder
teachers alike: ``score-teacher --bi-backend openvino|onnx`` passes
:func:`~embed_kd.teachers.bi_backend.with_backend` (exact-grade float32 graphs, converted once and
cached by model fingerprint); :func:`bi_backend_name` is the runtime a loaded model actually uses
(``torch`` for a model with no transformer to convert). The embedding cache keys on that runtime, so
document embeddings of two runtimes never mix.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np

from embed_kd.candidates.bm25 import BM25Config, BM25Retriever
from embed_kd.data.beir import BeirDataset
from embed_kd.encode import encode_texts, uses_cosine
from embed_kd.index.cache import EmbeddingCache
from embed_kd.index.encoding import encode_corpus
from embed_kd.models import fingerprint_model, load_sentence_transformer

logger = logging.getLogger(__name__)


def bi_backend_name(model) -> str:
    """The runtime ``model`` encodes with: ``torch``, ``openvino`` or ``onnx``.

    >>> class M: pass
    >>> m = M(); bi_backend_name(m)
    'torch'
    >>> m.embed_kd_backend = "openvino-f32"; bi_backend_name(m)
    'openvino'
    """
    return (getattr(model, "embed_kd_backend", None) or "torch").removesuffix("-f32")


class SharedResources:
    """A per-run registry: one BM25 index, one model per spec, one doc-embedding matrix per model."""

    def __init__(self, dataset: BeirDataset, *, cache: EmbeddingCache | None = None, batch_size: int = 32,
                 show_progress: bool = False, prepare_bi_encoder: Callable | None = None):
        self.dataset = dataset
        self.prepare_bi_encoder = prepare_bi_encoder
        self.cache = cache or EmbeddingCache()
        self.batch_size = batch_size
        self.show_progress = show_progress
        self._bm25 = {}
        self._bi = {}
        self._docs = {}
        self._queries: dict[str, tuple[tuple[str, ...], np.ndarray]] = {}

    def bm25(self, config=None):
        config = config or BM25Config()
        key = config.fingerprint()
        if key not in self._bm25:
            logger.info("fitting BM25 on %d documents", len(self.dataset.corpus))
            self._bm25[key] = BM25Retriever.fit(self.dataset.corpus, config, show_progress=False)
        return self._bm25[key]

    def bi_encoder(self, spec: str):
        if spec not in self._bi:
            model = load_sentence_transformer(spec, role=f"a dense source / teacher ({spec})")
            self._bi[spec] = self.prepare_bi_encoder(model) if self.prepare_bi_encoder else model
        return self._bi[spec]

    def doc_embeddings(self, model) -> tuple[np.ndarray, list[str], dict[str, int]]:
        """``(embeddings, doc_ids, row_of_doc)`` for the whole corpus, from the embedding cache if valid."""
        fp = fingerprint_model(model)
        if fp not in self._docs:
            emb, ids, res = encode_corpus(model, self.dataset, cache=self.cache, batch_size=self.batch_size,
                                          normalize=uses_cosine(model), show_progress=self.show_progress)
            logger.info("document embeddings (%s): %s", "cache hit" if res.hit else "encoded", res.path)
            self._docs[fp] = (emb, ids, {d: i for i, d in enumerate(ids)})
        return self._docs[fp]

    def query_embeddings(self, model, qids: Sequence[str]) -> np.ndarray:
        """Embeddings of ``qids`` (in that order); the last call per model is memoised, so a candidate
        source and a teacher sharing a model encode a chunk's queries once."""
        fp = fingerprint_model(model)
        key = tuple(qids)
        hit = self._queries.get(fp)
        if hit is not None and hit[0] == key:
            return hit[1]
        emb = encode_texts(model, [self.dataset.queries[q] for q in qids], batch_size=self.batch_size,
                           normalize=uses_cosine(model), role="query", show_progress=False)
        self._queries[fp] = (key, emb)
        return emb
