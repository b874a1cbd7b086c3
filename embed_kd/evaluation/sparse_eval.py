r"""Evaluate a sparse (SPLADE) model exactly on an inverted index: a SciPy sparse matrix product.

Documents and queries are encoded by a sentence-transformers ``SparseEncoder`` into vocabulary-sized
vectors with few non-zeros and stored as ``scipy.sparse.csr_matrix`` (rows = texts, columns =
vocabulary terms). A CSR document matrix *is* an inverted index once transposed (its CSC form keeps,
per term, the documents that contain it — a posting list — with their weights), so the exact
retrieval score of every document

.. math::

    s(q, d) = \sum_{t} w_t(q)\, w_t(d)

for a block of queries is one sparse product ``Q @ D.T`` (SciPy's SpGEMM touches only the postings
of the query's terms), followed by a top-k per query (``numpy.argpartition``). No hand-rolled
posting lists. Metrics then go through the same pytrec_eval path as dense retrieval
(:func:`embed_kd.runs.evaluate_run`).

Efficiency statistics (``sparse`` block of the result):

================================  ==================================================================
``avg_query_nnz``                 mean non-zeros per query vector
``avg_doc_nnz``                   mean non-zeros per document vector (after ``doc_top_k`` pruning)
``flops``                         SPLADE's FLOPS (Formal et al. 2021, arXiv:2107.05720, after Paria
                                  et al. 2020): :math:`\sum_t p_q(t)\,p_d(t)`, where :math:`p_q(t)`
                                  (:math:`p_d(t)`) is the share of queries (documents) whose vector
                                  has term :math:`t`, estimated on the evaluated queries and corpus:
                                  the expected number of multiply-adds for one (query, document) pair
``postings_per_query``            the exact number of multiply-adds the inverted index does per
                                  query: :math:`\frac{1}{|Q|}\sum_q \sum_{t \in q} \mathrm{df}(t)`
                                  (≈ ``flops`` × number of documents)
================================  ==================================================================

Top-k pruning (``doc_top_k`` / ``query_top_k``): keep each vector's k largest weights
(:func:`prune_top_k`), the static index pruning of SPLADE papers; it caps the index size and the
postings each query walks, at some cost in quality (measured in ``eval/results/scifact-sparse.md``).

The result is an ``embed-kd/eval@1`` dict (``mode: "sparse"``) with the extra ``sparse`` block::

    "sparse": {"avg_query_nnz", "avg_doc_nnz", "avg_doc_nnz_unpruned", "flops", "postings_per_query",
               "vocab_size", "doc_top_k", "query_top_k", "query_length", "document_length",
               "index_bytes"}

``index_bytes`` is the memory of the CSR document matrix (data float32 + indices + indptr).

>>> import scipy.sparse as sp
>>> D = sp.csr_matrix([[1.0, 0, 2.0, 0], [0, 3.0, 0, 0], [0.5, 0, 0, 4.0]])
>>> Q = sp.csr_matrix([[1.0, 0, 1.0, 0], [0, 0, 0, 1.0]])
>>> sparse_search(Q, D, k=2)
(array([[3. , 0.5],
       [4. , 0. ]], dtype=float32), array([[0, 2],
       [2, 0]]))
>>> round(flops(Q, D), 4), postings_per_query(Q, D)
(0.6667, 2.0)
>>> prune_top_k(D, 1).toarray().tolist()
[[0.0, 0.0, 2.0, 0.0], [0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 0.0, 4.0]]
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np

from embed_kd.data.beir import BeirDataset, doc_text
from embed_kd.errors import EmbedKDError
from embed_kd.evaluation.retrieval_eval import eval_result, EvalOptions, score_run
from embed_kd.models import fingerprint_model, model_name

logger = logging.getLogger(__name__)


def to_csr(embeddings):
    """A ``scipy.sparse.csr_matrix`` (float32) from a torch sparse/dense tensor or a numpy array."""
    import scipy.sparse as sp
    import torch

    if sp.issparse(embeddings):
        return sp.csr_matrix(embeddings, dtype=np.float32)
    if isinstance(embeddings, torch.Tensor):
        t = embeddings.detach().cpu()
        if t.dim() != 2:
            raise EmbedKDError(f"sparse embeddings: expected a 2-D matrix (texts x vocabulary), got shape {tuple(t.shape)}")
        if t.is_sparse:
            t = t.coalesce()
            rows, cols = t.indices().numpy()
            return sp.csr_matrix((t.values().numpy().astype(np.float32), (rows, cols)), shape=tuple(t.shape))
        return sp.csr_matrix(t.to(torch.float32).numpy())
    arr = np.asarray(embeddings, dtype=np.float32)
    if arr.ndim != 2:
        raise EmbedKDError(f"sparse embeddings: expected a 2-D matrix, got shape {arr.shape}")
    return sp.csr_matrix(arr)


def encode_sparse(model, texts: Sequence[str], *, role: str = "document", batch_size: int = 32,
                  show_progress: bool = True):
    """Encode ``texts`` with a ``SparseEncoder`` (``encode_query`` / ``encode_document``) into CSR."""
    import scipy.sparse as sp

    if not texts:
        dim = model.get_embedding_dimension() or 0
        return sp.csr_matrix((0, dim), dtype=np.float32)
    fn = getattr(model, f"encode_{role}")
    emb = fn(list(texts), batch_size=batch_size, show_progress_bar=show_progress, convert_to_tensor=True,
             convert_to_sparse_tensor=True)
    return to_csr(emb)


def prune_top_k(matrix, k: int | None):
    """Keep the ``k`` largest weights of each row of a CSR matrix (ties: the lower term id wins).

    ``k=None`` returns the matrix unchanged. Rows with at most ``k`` non-zeros are kept as they are.
    """
    import scipy.sparse as sp

    if k is None:
        return matrix
    if k < 1:
        raise EmbedKDError(f"top-k pruning: k must be >= 1, got {k}")
    m = sp.csr_matrix(matrix, dtype=np.float32)
    m.sort_indices()
    lengths = np.diff(m.indptr)
    if lengths.size == 0 or lengths.max() <= k:
        return m
    keep = np.zeros(m.nnz, dtype=bool)
    for r in np.nonzero(lengths > k)[0]:
        lo, hi = m.indptr[r], m.indptr[r + 1]
        order = np.lexsort((m.indices[lo:hi], -m.data[lo:hi]))[:k]  # largest weight, then lowest term id
        keep[lo + order] = True
    small = np.repeat(lengths <= k, lengths)
    keep |= small
    rows = np.repeat(np.arange(m.shape[0]), lengths)[keep]
    return sp.csr_matrix((m.data[keep], (rows, m.indices[keep])), shape=m.shape, dtype=np.float32)


def sparse_search(queries, docs, k: int = 100, *, block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by dot product: ``(scores, rows)``, each ``(n_queries, min(k, n_docs))``, best first.

    ``queries`` (n_q × V) and ``docs`` (n_d × V) are CSR matrices over the same vocabulary. Scores
    of a block of queries come from one SciPy sparse product ``Q_block @ D.T``; documents sharing no
    term with the query score 0 and rank after every matching document (ties: lower row first).
    """
    import scipy.sparse as sp

    if queries.shape[1] != docs.shape[1]:
        raise EmbedKDError(f"sparse search: query vectors have {queries.shape[1]} dimensions, document vectors "
                           f"{docs.shape[1]}; they must share one vocabulary")
    n_q, n_d = queries.shape[0], docs.shape[0]
    k = min(int(k), n_d)
    d_t = sp.csr_matrix(docs, dtype=np.float32).T.tocsr()  # V x n_d: row t = the posting list of term t
    q = sp.csr_matrix(queries, dtype=np.float32)
    all_scores = np.zeros((n_q, k), dtype=np.float32)
    all_rows = np.zeros((n_q, k), dtype=np.int64)
    for start in range(0, n_q, block):
        s = (q[start:start + block] @ d_t).toarray()
        if k < n_d:
            part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        else:
            part = np.tile(np.arange(n_d), (s.shape[0], 1))
        part_scores = np.take_along_axis(s, part, axis=1)
        order = np.lexsort((part, -part_scores), axis=1)  # score desc, then row asc
        all_rows[start:start + block] = np.take_along_axis(part, order, axis=1)
        all_scores[start:start + block] = np.take_along_axis(part_scores, order, axis=1)
    return all_scores, all_rows


def nnz_per_row(matrix) -> np.ndarray:
    """Non-zeros of each row of a CSR matrix."""
    return np.diff(matrix.indptr)


def flops(queries, docs) -> float:
    r"""SPLADE's FLOPS: :math:`\sum_t p_q(t)\, p_d(t)` (share of queries / documents activating term t)."""
    if queries.shape[0] == 0 or docs.shape[0] == 0:
        return 0.0
    p_q = np.bincount(queries.indices, minlength=queries.shape[1]) / queries.shape[0]
    p_d = np.bincount(docs.indices, minlength=docs.shape[1]) / docs.shape[0]
    return float(np.dot(p_q, p_d))


def postings_per_query(queries, docs) -> float:
    r"""Mean multiply-adds of an inverted-index query: :math:`\frac{1}{|Q|}\sum_q\sum_{t\in q}\mathrm{df}(t)`."""
    if queries.shape[0] == 0:
        return 0.0
    df = np.bincount(docs.indices, minlength=docs.shape[1])
    return float(df[queries.indices].sum() / queries.shape[0])


def sparse_stats(queries, docs, *, docs_unpruned=None) -> dict:
    """The efficiency block (see the module docstring) for query and document CSR matrices."""
    return {
        "avg_query_nnz": float(nnz_per_row(queries).mean()) if queries.shape[0] else 0.0,
        "avg_doc_nnz": float(nnz_per_row(docs).mean()) if docs.shape[0] else 0.0,
        "avg_doc_nnz_unpruned": float(nnz_per_row(docs_unpruned).mean()) if docs_unpruned is not None
        and docs_unpruned.shape[0] else None,
        "flops": flops(queries, docs),
        "postings_per_query": postings_per_query(queries, docs),
        "vocab_size": int(docs.shape[1]),
        "index_bytes": int(docs.data.nbytes + docs.indices.nbytes + docs.indptr.nbytes),
    }


def run_from_search(scores: np.ndarray, rows: np.ndarray, qids: list[str], doc_ids: list[str]) -> dict:
    """TREC-style run ``{qid: {doc_id: score}}``; documents with score 0 (no shared term) are dropped."""
    return {q: {doc_ids[int(r)]: float(s) for r, s in zip(rows[i], scores[i]) if s > 0}
            for i, q in enumerate(qids)}


def sparse_model_info(model) -> dict:
    """``{"spec", "fingerprint", "dim", "max_seq_length", "query_length", "document_length"}`` of a SparseEncoder."""
    first = model[0]
    return {"spec": model_name(model), "fingerprint": fingerprint_model(model),
            "dim": model.get_embedding_dimension(), "max_seq_length": getattr(model, "max_seq_length", None),
            "query_length": getattr(first, "query_length", None),
            "document_length": getattr(first, "document_length", None)}


def evaluate_sparse(dataset: BeirDataset, model, *, options=None, doc_top_k: int | None = None,
                    query_top_k: int | None = None, doc_matrix=None, query_matrix=None) -> dict:
    """Encode (or reuse ``doc_matrix`` / ``query_matrix``), prune, search exactly, score with pytrec_eval.

    Returns an ``embed-kd/eval@1`` result with ``mode: "sparse"`` and the ``sparse`` block, plus
    ``run`` (popped by the CLI) and, under ``_matrices``, the unpruned query/doc CSR matrices so that a
    caller can evaluate several prunings from one encoding.
    """
    opt = options or EvalOptions()
    t0 = time.perf_counter()
    doc_ids = list(dataset.corpus)
    qids = list(dataset.queries)
    t = time.perf_counter()
    if doc_matrix is None:
        doc_matrix = encode_sparse(model, [doc_text(dataset.corpus[d]) for d in doc_ids], role="document",
                                   batch_size=opt.batch_size, show_progress=opt.show_progress)
    encode_docs_s = time.perf_counter() - t
    t = time.perf_counter()
    if query_matrix is None:
        query_matrix = encode_sparse(model, [dataset.queries[q] for q in qids], role="query",
                                     batch_size=opt.batch_size, show_progress=opt.show_progress)
    encode_queries_s = time.perf_counter() - t
    if doc_matrix.shape[0] != len(doc_ids) or query_matrix.shape[0] != len(qids):
        raise EmbedKDError(f"sparse eval: {doc_matrix.shape[0]} document / {query_matrix.shape[0]} query vectors "
                           f"for {len(doc_ids)} documents / {len(qids)} queries")
    docs = prune_top_k(doc_matrix, doc_top_k)
    queries = prune_top_k(query_matrix, query_top_k)
    t = time.perf_counter()
    scores, rows = sparse_search(queries, docs, k=opt.top_k)
    run = run_from_search(scores, rows, qids, doc_ids)
    search_s = time.perf_counter() - t
    scored, timings = score_run(dataset, run, opt, t0, encode_docs_s=encode_docs_s,
                                encode_queries_s=encode_queries_s, search_s=search_s)
    info = sparse_model_info(model)
    result = eval_result("sparse", dataset, scored, timings, query_model=info, doc_model=info,
                         index={"kind": "scipy-csr", "top_k": opt.top_k, "normalize": False},
                         cache={"docs": "off"})
    result["sparse"] = {**sparse_stats(queries, docs, docs_unpruned=doc_matrix if doc_top_k else None),
                        "doc_top_k": doc_top_k, "query_top_k": query_top_k,
                        "query_length": info["query_length"], "document_length": info["document_length"]}
    result["throughput"] = {
        "docs_per_s": len(doc_ids) / encode_docs_s if encode_docs_s > 0.5 else None,
        "queries_per_s": len(qids) / encode_queries_s if encode_queries_s > 0.05 else None,
    }
    result["run"] = run
    result["_matrices"] = {"queries": query_matrix, "docs": doc_matrix}
    return result
