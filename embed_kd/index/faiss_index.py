"""Build and search FAISS indexes over embedding matrices.

Index kinds (``--index``):

============  =====================================================  ==================================
kind          FAISS index                                            when
============  =====================================================  ==================================
``flat``      ``IndexFlatIP`` (exact inner product)                   default; exact up to ~1M docs
``hnsw``      ``IndexHNSWFlat`` (M=32, efConstruction=200,            large corpora, RAM for full vectors
              efSearch=max(128, k))
``ivfpq``     ``IndexIVFPQ`` (nlist≈4·√n, m=dim/8 sub-quantisers of    very large corpora, compressed
              8 bits, nprobe=16)
============  =====================================================  ==================================

Scores are inner products: with normalised embeddings they are cosine similarities.

>>> import numpy as np
>>> docs = np.eye(4, dtype="float32")
>>> index = build_faiss_index(docs, "flat")
>>> scores, rows = search_index(index, docs[:1], k=2)
>>> rows[0].tolist()[0], float(scores[0][0])
(0, 1.0)
"""

from __future__ import annotations

import logging
import math

import numpy as np

from embed_kd.errors import EmbedKDError

logger = logging.getLogger(__name__)
INDEX_KINDS = ("flat", "hnsw", "ivfpq")


def build_faiss_index(emb: np.ndarray, kind: str = "flat", *, hnsw_m: int = 32, nlist: int | None = None,
                      pq_m: int | None = None, nprobe: int = 16, seed: int = 0):
    import faiss

    if kind not in INDEX_KINDS:
        raise EmbedKDError(f"--index {kind}: unknown index kind (choose one of {', '.join(INDEX_KINDS)})")
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    n, dim = emb.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 200
    else:
        nlist = nlist or max(1, min(int(4 * math.sqrt(n)), n // 39 or 1))
        pq_m = pq_m or next(m for m in (dim // 8, dim // 4, dim // 2, dim) if m and dim % m == 0)
        nbits = 8 if n >= 256 * 39 else max(4, min(8, int(math.log2(max(n // 39, 16)))))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, nbits, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(emb)
        index.nprobe = min(nprobe, nlist)
    index.add(emb)
    return index


def search_index(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, row numbers) per query; rows of -1 (fewer than k docs) are dropped later."""
    import faiss

    k = min(k, index.ntotal)
    if isinstance(index, faiss.IndexHNSWFlat):
        index.hnsw.efSearch = max(128, k)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
