"""Stage 1 — data: BEIR-format loading and validation, dataset resolution, fingerprints."""

from embed_kd.data.beir import BeirDataset, load_beir, load_corpus, load_qrels, load_queries
from embed_kd.data.fingerprint import fingerprint_corpus, fingerprint_queries
from embed_kd.data.resolve import resolve_dataset

__all__ = [
    "BeirDataset",
    "fingerprint_corpus",
    "fingerprint_queries",
    "load_beir",
    "load_corpus",
    "load_qrels",
    "load_queries",
    "resolve_dataset",
]
