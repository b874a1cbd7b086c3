r"""Loyalty: how closely a student agrees with its embedding teacher (a diagnostic, not a quality metric).

Computed on the evaluated split's queries; documents are those of the evaluation (the doc model's
embeddings — the teacher's in asymmetric mode, the student's own in symmetric mode):

- ``top10_overlap``: :math:`\frac{1}{|Q|}\sum_q |\mathrm{top}_{10}^S(q) \cap \mathrm{top}_{10}^T(q)| / 10`,
  where :math:`T` ranks with the teacher's query and document embeddings and :math:`S` is the
  evaluated retriever;
- ``spearman``: mean over queries of Spearman's :math:`\rho` between the student's and the
  teacher's scores of the *same* candidates (the teacher's top ``depth``), so it measures agreement
  on the order, not on which documents were retrieved;
- ``query_cosine``: mean cosine between the student's and the teacher's embedding of each query
  (null when the dimensions differ); ``doc_cosine``: the same for documents when the documents
  are encoded by another model than the teacher (symmetric mode), else null.

The result is ``{"teacher": {spec, fingerprint}, "n_queries", "depth", "top10_overlap",
"spearman", "query_cosine", "doc_cosine"}`` and lands in the eval JSON under ``loyalty``.

>>> import numpy as np
>>> top_k_overlap({"q": {"a": 3, "b": 2, "c": 1}}, {"q": {"a": 9, "c": 8, "d": 7}}, k=2)
0.5
>>> round(spearman_same_candidates(np.array([[1.0, 0.0]]), np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]]),
...                                np.array([[0.9, 0.1]]), np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])), 3)
1.0
"""

from __future__ import annotations

import logging
from typing import Mapping

import numpy as np

from embed_kd.encode import encode_texts, uses_cosine
from embed_kd.evaluation.retrieval_eval import EvalOptions
from embed_kd.index.cache import EmbeddingCache
from embed_kd.index.encoding import encode_corpus
from embed_kd.index.search import dense_run
from embed_kd.models import fingerprint_model, model_name

logger = logging.getLogger(__name__)


def top_k_overlap(run_a: Mapping[str, Mapping[str, float]], run_b: Mapping[str, Mapping[str, float]], k: int = 10) -> float:
    """Mean fraction of shared documents in the top-``k`` of two runs (queries of ``run_b``)."""
    vals = []
    for q, docs_b in run_b.items():
        top_b = {d for d, _ in sorted(docs_b.items(), key=lambda x: (-x[1], x[0]))[:k]}  # ties: by doc id
        top_a = {d for d, _ in sorted(run_a.get(q, {}).items(), key=lambda x: (-x[1], x[0]))[:k]}
        if top_b:
            vals.append(len(top_a & top_b) / min(k, len(top_b)))
    return float(np.mean(vals)) if vals else float("nan")


def _rank(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    # average ranks of ties
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return (sums / counts)[inv]


def spearman_same_candidates(student_q: np.ndarray, student_docs: np.ndarray, teacher_q: np.ndarray,
                             teacher_docs: np.ndarray, depth: int = 100) -> float:
    """Mean Spearman ρ over queries of student vs teacher scores on the teacher's top-``depth`` docs."""
    t_scores = teacher_q @ teacher_docs.T
    s_scores = student_q @ student_docs.T
    depth = min(depth, t_scores.shape[1])
    vals = []
    for i in range(t_scores.shape[0]):
        cand = np.argsort(-t_scores[i], kind="stable")[:depth]
        if len(cand) < 2:
            continue
        a, b = _rank(t_scores[i, cand]), _rank(s_scores[i, cand])
        a, b = a - a.mean(), b - b.mean()
        den = np.sqrt((a * a).sum() * (b * b).sum())
        if den > 0:
            vals.append(float((a * b).sum() / den))
        else:  # a constant side: agreement only if both are constant
            vals.append(1.0 if not a.any() and not b.any() else 0.0)
    return float(np.mean(vals)) if vals else float("nan")


def _mean_cosine(a: np.ndarray, b: np.ndarray) -> float | None:
    if a.shape != b.shape:
        return None
    na = a / np.clip(np.linalg.norm(a, axis=1, keepdims=True), 1e-12, None)
    nb = b / np.clip(np.linalg.norm(b, axis=1, keepdims=True), 1e-12, None)
    return float((na * nb).sum(axis=1).mean())


def evaluate_loyalty(dataset, query_model, doc_model, teacher, *, options=None, run=None, depth: int = 100) -> dict:
    """Loyalty of (query_model, doc_model) to ``teacher`` on ``dataset`` (see the module docstring).

    ``run`` is the evaluated retriever's run (from :func:`~embed_kd.evaluation.retrieval_eval.evaluate_dense`);
    it is recomputed when omitted. Document embeddings come from the shared cache.
    """
    opt = options or EvalOptions()
    cache = EmbeddingCache(opt.cache_dir, enabled=opt.use_cache)
    normalize = uses_cosine(doc_model)
    qids = list(dataset.queries)
    texts = [dataset.queries[q] for q in qids]
    t_docs, doc_ids, _ = encode_corpus(teacher, dataset, cache=cache, batch_size=opt.batch_size,
                                       normalize=uses_cosine(teacher), show_progress=opt.show_progress)
    t_q = encode_texts(teacher, texts, batch_size=opt.batch_size, normalize=uses_cosine(teacher), role="query",
                       show_progress=False)
    if doc_model is teacher or fingerprint_model(doc_model) == fingerprint_model(teacher):
        s_docs, doc_cos = t_docs, None
    else:
        s_docs, _, _ = encode_corpus(doc_model, dataset, cache=cache, batch_size=opt.batch_size, normalize=normalize,
                                     show_progress=opt.show_progress)
        doc_cos = _mean_cosine(s_docs, t_docs)
    s_q = encode_texts(query_model, texts, batch_size=opt.batch_size, normalize=normalize, role="query",
                       show_progress=False)
    if run is None:
        run = dense_run(s_q, qids, s_docs, doc_ids, k=max(depth, 10), index=opt.index)
    teacher_run = dense_run(t_q, qids, t_docs, doc_ids, k=max(depth, 10))
    spearman = spearman_same_candidates(s_q, s_docs, t_q, t_docs, depth) if s_q.shape[1] == s_docs.shape[1] else None
    out = {
        "teacher": {"spec": model_name(teacher), "fingerprint": fingerprint_model(teacher)},
        "n_queries": len(qids), "depth": depth,
        "top10_overlap": top_k_overlap(run, teacher_run, k=10),
        "spearman": spearman,
        "query_cosine": _mean_cosine(s_q, t_q),
        "doc_cosine": doc_cos,
    }
    logger.info("loyalty to %s: top-10 overlap %.3f, Spearman %.3f", out["teacher"]["spec"], out["top10_overlap"],
                out["spearman"] if out["spearman"] is not None else float("nan"))
    return out
