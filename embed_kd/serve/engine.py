"""The search engine behind ``embed-kd serve``: a query model over a persisted index, checked at startup.

The query model must live in the index's embedding space: :func:`embed_kd.students.alignment.query_model_alignment`
refuses (one clear sentence) a query model of another dimension, or one that declares another
embedding teacher than the index's doc model (``--allow-teacher-mismatch``: a warning instead);
how it was established is ``alignment`` in ``GET /info``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embed_kd.encode import encode_texts
from embed_kd.index.store import index_summary, open_index
from embed_kd.models import load_sentence_transformer, model_info
from embed_kd.students.alignment import check_fingerprint_flag, query_model_alignment
from embed_kd.students.asym import query_route

logger = logging.getLogger(__name__)


@dataclass
class SearchEngine:
    """A query model + an opened index. ``search_items`` is what the micro-batcher calls."""

    model: Any
    index: Any  # embed_kd.index.store.PersistedIndex
    query_info: dict
    alignment: str
    load_s: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, index_dir: str | Path, query_model: str | None = None, *,
             expect_teacher_fingerprint: str | None = None, verify: bool = True,
             allow_teacher_mismatch: bool = False, compression=None, backend: str = "torch") -> "SearchEngine":
        """Open the index, load the query model (default: the index's doc model) and check they match.

        ``compression`` (:class:`embed_kd.index.compression.Compression`): search the index truncated /
        quantized (:meth:`embed_kd.index.store.PersistedIndex.compress`). ``backend``: the query encoder's
        runtime (:func:`embed_kd.teachers.bi_backend.with_backend`; the fingerprint, so the alignment check, stays).
        """
        check_fingerprint_flag(expect_teacher_fingerprint)
        t = time.perf_counter()
        index = open_index(index_dir, verify=verify)
        if compression is not None:
            index.compress(compression)
        index_s = time.perf_counter() - t
        spec = query_model or index.doc_model["spec"]
        t = time.perf_counter()
        model = query_route(load_sentence_transformer(spec, role="serve --query-model"))  # asym: its query route
        if backend != "torch":
            from embed_kd.teachers.bi_backend import with_backend

            model = with_backend(model, backend)
        model_s = time.perf_counter() - t
        info = model_info(model)
        alignment = query_model_alignment(spec, info, index.doc_model,
                                          expect_teacher_fingerprint=expect_teacher_fingerprint,
                                          allow_mismatch=allow_teacher_mismatch)
        logger.info("serving %d docs (%s, dim %d) of '%s' with query model '%s' (alignment: %s)",
                    index.n, index.manifest["kind"], index.dim, index.doc_model["spec"], info["spec"], alignment)
        return cls(model, index, info, alignment, {"open_index_s": index_s, "load_query_model_s": model_s})

    def encode(self, texts: list[str]) -> np.ndarray:
        return encode_texts(self.model, texts, batch_size=max(1, len(texts)), normalize=self.index.normalize,
                            role="query", show_progress=False)

    def search_items(self, items: list[tuple[str, int]]) -> list[tuple[list[str], list[float], list[int]]]:
        """``items``: ``(query text, k)`` pairs → per item ``(doc ids, scores, rows)``, best first."""
        if not items:
            return []
        with self._lock:  # one encoder call at a time, whoever calls
            emb = self.encode([text for text, _ in items])
            hits = self.index.search(emb, max(k for _, k in items))
        return [(ids[:k], scores[:k], rows[:k]) for (ids, scores, rows), (_, k) in zip(hits, items)]

    def info(self) -> dict:
        return {
            "query_model": self.query_info,
            "doc_model": self.index.doc_model,
            "alignment": self.alignment,
            "index": {"path": str(self.index.path),
                      **{k: v for k, v in index_summary(self.index.manifest).items() if k != "doc_model"}},
            "load_s": self.load_s,
        }
