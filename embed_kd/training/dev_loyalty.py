"""Dev-slice evaluation without judgments: loyalty of the student to its embedding teacher.

Queries without relevance judgments (``--queries FILE``) cannot give an nDCG, so the held-out
train queries are scored by how closely the student agrees with the teacher
(:mod:`embed_kd.evaluation.loyalty`) in the asymmetric setting the student is trained for — the
student encodes the dev queries, documents are the teacher's cached embeddings:

- ``dev_top10_overlap`` (the primary metric): mean share of the teacher's top-10 documents the
  student retrieves in its own top-10;
- ``dev_spearman``: mean Spearman ρ of student and teacher scores on the teacher's top-100;
- ``dev_query_cosine``: mean cosine between the student's and the teacher's query embeddings.

A diagnostic, not a quality metric: a student can beat its teacher and lose loyalty. The dev
queries are carved from the train queries and kept out of every training example, as with judgments.
"""

from __future__ import annotations

import logging

import numpy as np
from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator

from embed_kd.encode import encode_texts
from embed_kd.evaluation.loyalty import _mean_cosine, spearman_same_candidates, top_k_overlap
from embed_kd.index.search import dense_run

logger = logging.getLogger(__name__)


class DevLoyaltyEvaluator(SentenceEvaluator):
    """sentence-transformers evaluator: ``dev_top10_overlap`` (+ Spearman, query cosine) on a dev slice."""

    def __init__(self, queries: dict[str, str], teacher_q: np.ndarray, doc_emb: np.ndarray, doc_ids: list[str], *,
                 name: str = "dev", batch_size: int = 64, normalize: bool = True, depth: int = 100):
        super().__init__()

        self.queries, self.teacher_q = queries, teacher_q
        self.doc_emb, self.doc_ids = doc_emb, doc_ids
        self.name, self.batch_size, self.normalize, self.depth = name, batch_size, normalize, depth
        self.teacher_run = dense_run(teacher_q, list(queries), doc_emb, doc_ids, k=10)
        self.primary_metric = "top10_overlap"
        self.greater_is_better = True

    def __call__(self, model, output_path=None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        qids = list(self.queries)
        s_q = encode_texts(model, [self.queries[q] for q in qids], batch_size=self.batch_size,
                           normalize=self.normalize, role="query", show_progress=False)
        run = dense_run(s_q, qids, self.doc_emb, self.doc_ids, k=10)
        metrics = {"top10_overlap": top_k_overlap(run, self.teacher_run, k=10),
                   "spearman": spearman_same_candidates(s_q, self.doc_emb, self.teacher_q, self.doc_emb, self.depth),
                   "query_cosine": _mean_cosine(s_q, self.teacher_q)}
        metrics = {k: float(v) for k, v in metrics.items() if v is not None}
        logger.info("dev (%d unjudged train queries held out, loyalty to the teacher) at step %s: top-10 overlap "
                    "%.4f, Spearman %.4f", len(qids), steps, metrics["top10_overlap"], metrics.get("spearman", np.nan))
        metrics = self.prefix_name_to_metrics(metrics, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    def get_config_dict(self) -> dict:
        return {"queries": len(self.queries), "mode": "loyalty to the teacher (no judgments)"}
