"""Stage — evaluation: pytrec_eval metrics, dense/BM25 retrieval evaluation, reports."""

from embed_kd.evaluation.metrics import evaluate_run

__all__ = ["evaluate_run"]
