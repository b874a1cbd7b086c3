"""Dev-slice evaluation during training: asymmetric nDCG@10 of held-out *train* queries.

The student encodes the dev queries; documents are the teacher's cached embeddings (asymmetric
mode, the setting the student is trained for); FAISS search (:func:`embed_kd.index.search.dense_run`)
and pytrec_eval (:func:`embed_kd.runs.evaluate_run`) score them. Only queries are
encoded, so it costs seconds and can run every few hundred steps. The dev queries are carved from
the train split (:func:`embed_kd.training.data.split_dev`) and kept out of every training example.
"""

from __future__ import annotations

import logging

import numpy as np
from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator

from embed_kd.encode import encode_texts
from embed_kd.index.search import dense_run
from embed_kd.runs import evaluate_run

logger = logging.getLogger(__name__)


class DevRetrievalEvaluator(SentenceEvaluator):
    """sentence-transformers evaluator: ``dev_ndcg_at_10`` (+ recall@100, mrr@10) on a dev slice."""

    def __init__(self, queries: dict[str, str], qrels: dict[str, dict[str, int]], doc_emb: np.ndarray,
                 doc_ids: list[str], *, name: str = "dev", batch_size: int = 64, normalize: bool = True):
        super().__init__()
        self.queries, self.qrels = queries, qrels
        self.doc_emb, self.doc_ids = doc_emb, doc_ids
        self.name, self.batch_size, self.normalize = name, batch_size, normalize
        self.primary_metric = "ndcg_at_10"
        self.greater_is_better = True

    def __call__(self, model, output_path=None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        qids = list(self.queries)
        q_emb = encode_texts(model, [self.queries[q] for q in qids], batch_size=self.batch_size,
                             normalize=self.normalize, role="query", show_progress=False)
        run = dense_run(q_emb, qids, self.doc_emb, self.doc_ids, k=100)
        metrics = dict(evaluate_run(self.qrels, run)["metrics"])
        logger.info("dev (%d train queries held out, asymmetric) at step %s: nDCG@10 %.4f", len(qids), steps,
                    metrics.get("ndcg_at_10", float("nan")))
        metrics = self.prefix_name_to_metrics(metrics, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    def get_config_dict(self) -> dict:
        return {"queries": len(self.queries), "mode": "asymmetric (teacher documents)"}
