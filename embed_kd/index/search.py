"""Dense search of a query matrix against a document matrix, as a TREC-style run.

A run is ``{query_id: {doc_id: score}}`` (what :func:`embed_kd.runs.evaluate_run`
scores and every run file holds). Exact search is a FAISS flat inner-product index (on the GPU of
the selected device when FAISS can, :func:`embed_kd.index.faiss_index.on_device`); a
:class:`~embed_kd.index.compression.Compression` truncates / quantizes first.

>>> import numpy as np
>>> docs = np.eye(3, dtype="float32"); queries = np.array([[0, 1, 0]], dtype="float32")
>>> dense_run(queries, ["q"], docs, ["a", "b", "c"], k=2)["q"]["b"]
1.0
"""

from __future__ import annotations

import numpy as np

from embed_kd.index.compression import CompressedSearch, Compression
from embed_kd.index.faiss_index import build_faiss_index, on_device, search_index

Run = dict[str, dict[str, float]]


def dense_run(query_emb: np.ndarray, qids: list[str], doc_emb: np.ndarray, doc_ids: list[str], *,
              k: int = 100, index: str = "flat", compression: Compression | None = None,
              normalize: bool = True) -> Run:
    """Search ``doc_emb`` with FAISS and return a TREC-style run (top ``k`` per query).

    ``compression``: truncate / quantize documents and queries first (:mod:`embed_kd.index.compression`;
    ``normalize``: renormalise truncated vectors).
    """
    if compression is not None and (compression.active or compression.rescore):
        scores, rows = CompressedSearch.build(doc_emb, compression, normalize=normalize, kind=index).search(query_emb, k)
    else:
        searcher, _ = on_device(build_faiss_index(doc_emb, index))
        scores, rows = search_index(searcher, query_emb, k)
    return {
        q: {doc_ids[int(r)]: float(s) for r, s in zip(rows[i], scores[i]) if r >= 0}
        for i, q in enumerate(qids)
    }
