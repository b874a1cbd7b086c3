"""Stage 1 — data: BEIR-format loading and validation, query/corpus files without judgments, dataset
resolution, fingerprints."""

from embed_kd.data.beir import BeirDataset, load_beir, load_corpus, load_qrels, load_queries
from embed_kd.data.fingerprint import fingerprint_corpus, fingerprint_queries
from embed_kd.data.inputs import load_inputs, read_corpus, read_queries
from embed_kd.data.resolve import resolve_dataset

__all__ = [
    "BeirDataset",
    "fingerprint_corpus",
    "fingerprint_queries",
    "load_beir",
    "load_corpus",
    "load_inputs",
    "load_qrels",
    "load_queries",
    "read_corpus",
    "read_queries",
    "resolve_dataset",
]
