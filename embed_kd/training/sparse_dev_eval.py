"""Dev-slice evaluation of a sparse student during training: re-rank a small candidate pool per dev query.

Encoding the whole corpus with a SPLADE student costs minutes on a CPU, so the dev slice (train
queries held out of every example, :func:`embed_kd.training.data.split_dev`) is scored on a *pool*:
the union of each dev query's ``pool`` best teacher candidates (from the score store) and its judged
documents. The student encodes the pool's documents and the dev queries; the exact inverted-index
search of :mod:`embed_kd.evaluation.sparse_eval` ranks the whole pool for every query, and
pytrec_eval (:func:`embed_kd.runs.evaluate_run`) scores it. The numbers are for
ranking within that pool — optimistic next to full-corpus retrieval, and meant for comparing
checkpoints and regulariser weights, not for reporting.

Metrics (prefixed ``dev_``): ``ndcg_at_10``, ``recall_at_100``, ``mrr_at_10``, ``query_nnz``,
``doc_nnz`` (mean non-zeros of the dev query / pool document vectors), ``flops``.
"""

from __future__ import annotations

import logging

from sentence_transformers.base.evaluation import BaseEvaluator

from embed_kd.evaluation.sparse_eval import encode_sparse, run_from_search, sparse_search, sparse_stats
from embed_kd.runs import evaluate_run

logger = logging.getLogger(__name__)


def dev_pool(by_query: dict[str, list[tuple[str, float, int]]], qrels: dict[str, dict[str, int]],
             dev_qids: list[str], depth: int) -> list[str]:
    """Doc ids of the dev pool: each dev query's top-``depth`` teacher candidates + its judged docs.

    >>> dev_pool({"q": [("a", 3.0, 0), ("b", 2.0, 1), ("c", 1.0, 0)]}, {"q": {"d": 1}}, ["q"], 1)
    ['a', 'd']
    """
    seen: dict[str, None] = {}
    for q in dev_qids:
        for d, _, _ in (by_query.get(q) or [])[:depth]:
            seen.setdefault(d)
        for d, rel in (qrels.get(q) or {}).items():
            if rel > 0:
                seen.setdefault(d)
    return list(seen)


class SparseDevEvaluator(BaseEvaluator):
    """sentence-transformers evaluator: ``dev_ndcg_at_10`` + sparsity of a SparseEncoder on a dev pool."""

    def __init__(self, queries: dict[str, str], qrels: dict[str, dict[str, int]], docs: dict[str, str], *,
                 name: str = "dev", batch_size: int = 32):
        super().__init__()
        self.queries, self.qrels, self.docs = queries, qrels, docs
        self.name, self.batch_size = name, batch_size
        self.primary_metric = "ndcg_at_10"
        self.greater_is_better = True

    def __call__(self, model, output_path=None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        qids, doc_ids = list(self.queries), list(self.docs)
        q = encode_sparse(model, [self.queries[x] for x in qids], role="query", batch_size=self.batch_size,
                          show_progress=False)
        d = encode_sparse(model, [self.docs[x] for x in doc_ids], role="document", batch_size=self.batch_size,
                          show_progress=False)
        scores, rows = sparse_search(q, d, k=100)
        metrics = dict(evaluate_run(self.qrels, run_from_search(scores, rows, qids, doc_ids))["metrics"])
        stats = sparse_stats(q, d)
        metrics.update(query_nnz=stats["avg_query_nnz"], doc_nnz=stats["avg_doc_nnz"], flops=stats["flops"])
        logger.info("dev (%d held-out train queries, pool of %d docs) at step %s: nDCG@10 %.4f, query nnz %.1f, "
                    "doc nnz %.1f", len(qids), len(doc_ids), steps, metrics["ndcg_at_10"], metrics["query_nnz"],
                    metrics["doc_nnz"])
        metrics = self.prefix_name_to_metrics(metrics, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    def get_config_dict(self) -> dict:
        return {"queries": len(self.queries), "pool_docs": len(self.docs), "mode": "re-rank the dev pool"}
