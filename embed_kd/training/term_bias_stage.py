"""The term-bias stage of a sparse run (``sparse.term_bias_steps > 0``): fit the SPLADE head's bias.

Runs after ``SpladeLoss`` training (or instead of it, with ``train.max_steps: 0``) on the same score
store and the same train/dev split (:mod:`embed_kd.students.term_bias` has the maths):

1. max-logits of the train and dev queries (query role) and of every document that is a candidate
   of a train query or in a dev query's pool (document role) — one encoder pass each;
2. ``fit_term_bias`` on all candidates of all train queries, the teacher's scores z-scored per
   query; every ``sparse.term_bias_eval_every`` steps the dev queries retrieve among the encoded
   documents (exact sparse search, train qrels, nDCG@10) and the best step's bias is kept;
3. the bias is written into the student's MLM head (the saved folder is an ordinary
   ``SparseEncoder``).

What was done is recorded in the run manifest's ``term_bias`` block: settings, ``queries``,
``documents``, ``max_logits_s``, ``fit_s``, ``dev_before``, ``best_dev``, ``best_step``, ``history``.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from embed_kd.data.beir import doc_text
from embed_kd.evaluation.sparse_eval import run_from_search, sparse_search
from embed_kd.runs import evaluate_run
from embed_kd.students.term_bias import (fit_term_bias, get_term_bias, idf_bias, max_logits, set_term_bias,
                                         splade_weights, TermBiasFitOptions)

logger = logging.getLogger(__name__)


def retrieval_metrics(query_max: np.ndarray, doc_max: np.ndarray, bias: np.ndarray, qids: list[str],
                      doc_ids: list[str], qrels: dict, *, k: int = 100) -> dict:
    """``qids`` retrieve among ``doc_ids`` with the SPLADE vectors of ``bias`` (exact sparse search).

    Returns ``{"ndcg_at_10", "recall_at_100", "query_nnz", "doc_nnz"}`` (pytrec_eval means; average
    non-zeros per query / document vector).
    """
    import scipy.sparse as sp
    import torch

    b = torch.from_numpy(np.asarray(bias, dtype=np.float32))
    D = sp.csr_matrix(splade_weights(torch.from_numpy(doc_max).float(), b).numpy())
    Q = sp.csr_matrix(splade_weights(torch.from_numpy(query_max).float(), b).numpy())
    scores, rows = sparse_search(Q, D, k=min(k, D.shape[0]))
    metrics = evaluate_run(qrels, run_from_search(scores, rows, qids, doc_ids))["metrics"]
    return {"ndcg_at_10": float(metrics["ndcg_at_10"]), "recall_at_100": float(metrics["recall_at_100"]),
            "query_nnz": float(Q.getnnz(axis=1).mean()), "doc_nnz": float(D.getnnz(axis=1).mean())}


def run_term_bias_stage(student, cfg, dataset, by_query: dict, train_qids: list[str], dev_qids: list[str],
                        *, show_progress: bool = True) -> dict:
    """Fit and set ``student``'s term bias (see the module docstring); returns the manifest block."""
    from embed_kd.training.sparse_dev_eval import dev_pool

    S = cfg.sparse
    train_qids = [q for q in train_qids if q in by_query]
    pool = dev_pool(by_query, dataset.qrels, dev_qids, S.dev_pool) if dev_qids else []
    docs = sorted({d for q in train_qids for d, _, _ in by_query[q]} | set(pool))
    docs = [d for d in docs if d in dataset.corpus]
    qids = train_qids + list(dev_qids)
    t0 = time.perf_counter()
    qmax = max_logits(student, [dataset.queries[q] for q in qids], role="query", show_progress=show_progress)
    dmax = max_logits(student, [doc_text(dataset.corpus[d]) for d in docs], role="document",
                      show_progress=show_progress)
    ml_s = time.perf_counter() - t0
    q_row, d_row = {q: i for i, q in enumerate(qids)}, {d: i for i, d in enumerate(docs)}
    groups = [(q_row[q], [d_row[d] for d, _, _ in by_query[q] if d in d_row],
               [s for d, s, _ in by_query[q] if d in d_row]) for q in train_qids]
    start = get_term_bias(student)
    init = idf_bias(dmax, float(np.median(start)), S.term_bias_idf) if S.term_bias_idf else start
    dev_rows = [q_row[q] for q in dev_qids]
    dev_qrels = {q: dataset.qrels[q] for q in dev_qids if q in dataset.qrels}
    evaluate = None
    if dev_rows and dev_qrels:
        def evaluate(b):
            return retrieval_metrics(qmax[dev_rows], dmax, b, list(dev_qids), docs, dev_qrels)["ndcg_at_10"]
    opts = TermBiasFitOptions(loss=S.term_bias_loss, steps=S.term_bias_steps, lr=S.term_bias_lr,
                              temperature=S.term_bias_temperature, query_flops_weight=S.term_bias_flops_weight,
                              doc_flops_weight=S.term_bias_flops_weight, l2_to_init=S.term_bias_l2,
                              seed=cfg.train.seed)
    t1 = time.perf_counter()
    bias, info = fit_term_bias(qmax[: len(train_qids)], dmax, groups, init, opts, evaluate=evaluate,
                               eval_every=S.term_bias_eval_every, show_progress=show_progress)
    fit_s = time.perf_counter() - t1
    set_term_bias(student, bias)
    block = {"steps": S.term_bias_steps, "loss": S.term_bias_loss, "lr": S.term_bias_lr,
             "temperature": S.term_bias_temperature, "flops_weight": S.term_bias_flops_weight,
             "l2_to_init": S.term_bias_l2, "idf_strength": S.term_bias_idf, "queries": len(train_qids),
             "dev_queries": len(dev_rows), "documents": len(docs), "max_logits_s": round(ml_s, 1),
             "fit_s": round(fit_s, 1), "history": info.get("history", []), "best_step": info.get("best_step"),
             "best_dev": info.get("best_dev"), "dev_before": (info.get("history") or [{}])[0].get("dev"),
             "student_scale": info.get("student_scale")}
    logger.info("term-bias fit: %d steps on %d queries x %d documents; dev nDCG@10 %s -> %s (step %s)",
                S.term_bias_steps, len(train_qids), len(docs), block["dev_before"], block["best_dev"], block["best_step"])
    return block
