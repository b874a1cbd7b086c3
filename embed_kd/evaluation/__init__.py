"""Stage — evaluation: dense / sparse / BM25 / ensemble retrieval evaluation, re-ranking, loyalty,
STS, MTEB, reports. ``embed-kd eval`` is one call: :func:`embed_kd.evaluation.request.run_eval`.
Run scoring (pytrec_eval) is :mod:`embed_kd.runs`."""

from embed_kd.runs import evaluate_run

__all__ = ["evaluate_run"]
