"""Moved to :mod:`embed_kd.runs` (runs are scored below every stage that fits or checks on them);
this name stays only while ``embed_kd.teachers.train_teacher`` imports ``top_k`` from here."""

from embed_kd.runs import DEFAULT_MRR, DEFAULT_NDCG, DEFAULT_RECALL, evaluate_run, top_k  # noqa: F401
