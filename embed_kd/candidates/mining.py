"""Candidate mining: which documents a teacher scores for each query.

A candidate spec names one source (``NAME=`` is optional and names its ``rank__NAME`` column)::

    bm25:K              BM25 (bm25s, see embed_kd.candidates.bm25), top K
    dense:MODEL:K       a bi-encoder (path, hub id or preset) through FAISS, top K; document
                        embeddings come from the shared embedding cache of ``embed-kd eval``;
                        run by torch, or by OpenVINO / ONNX Runtime with ``--bi-backend`` (the
                        manifest entry then records ``backend``; torch entries carry none, so
                        stores scored before the option keep their config fingerprint)

Several sources are unioned per query: documents in the order first seen (sources in the order
given, each in rank order), each keeping its 1-based rank in every source that retrieved it (-1
elsewhere). With ``include_positives`` (the default) every judged-relevant document of the query
(qrels > 0) not retrieved by any source is appended (ranks -1), so students always see the positives.

>>> parse_candidate_spec("dense:minilm-l6:30")
CandidateSpec(source='dense', name='dense', k=30, model='minilm-l6')
>>> parse_candidate_spec("lex=bm25:100")
CandidateSpec(source='bm25', name='lex', k=100, model=None)
>>> union_candidates({"bm25": ["d1", "d2"], "dense": ["d3", "d1"]}, positives=["d9", "d2"])
(['d1', 'd2', 'd3', 'd9'], {'bm25': [1, 2, -1, -1], 'dense': [2, -1, 1, -1]})
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

from embed_kd.candidates.shared import bi_backend_name
from embed_kd.errors import EmbedKDError
from embed_kd.index.search import dense_run
from embed_kd.models import fingerprint_model

logger = logging.getLogger(__name__)
SOURCES = ("bm25", "dense")


@dataclass(frozen=True)
class CandidateSpec:
    source: str
    name: str
    k: int
    model: str | None = None


def parse_candidate_spec(text: str) -> CandidateSpec:
    """Parse ``[NAME=]bm25:K`` or ``[NAME=]dense:MODEL:K`` (raises EmbedKDError naming the problem)."""
    raw = text.strip()
    name = None
    if "=" in raw.split(":", 1)[0]:
        name, raw = raw.split("=", 1)
    source, _, rest = raw.partition(":")
    source = source.strip().lower()
    usage = "expected bm25:K or dense:MODEL:K (e.g. bm25:100, dense:minilm-l6:50)"
    if source not in SOURCES:
        raise EmbedKDError(f"--candidates {text!r}: unknown source '{source}'; {usage}")
    if source == "bm25":
        model, k_text = None, rest
    else:
        model, _, k_text = rest.rpartition(":")
        if not model:
            raise EmbedKDError(f"--candidates {text!r}: missing model; {usage}")
    try:
        k = int(k_text)
    except ValueError:
        raise EmbedKDError(f"--candidates {text!r}: K must be a positive integer; {usage}") from None
    if k < 1:
        raise EmbedKDError(f"--candidates {text!r}: K must be >= 1")
    return CandidateSpec(source, (name or source).strip(), k, model)


def union_candidates(ranked: Mapping[str, Sequence[str]], positives: Sequence[str] = ()) -> tuple[list[str], dict[str, list[int]]]:
    """Union of ranked lists (first-seen order) + positives; returns ``(doc_ids, {source: ranks})``."""
    order: dict[str, None] = {}
    for docs in ranked.values():
        for d in docs:
            order.setdefault(d, None)
    for d in positives:
        order.setdefault(d, None)
    doc_ids = list(order)
    ranks = {}
    for src, docs in ranked.items():
        pos = {d: r for r, d in enumerate(docs, 1)}
        ranks[src] = [pos.get(d, -1) for d in doc_ids]
    return doc_ids, ranks


@dataclass
class QueryCandidates:
    """One query's candidates: doc ids (store order), qrels labels and per-source ranks."""

    qid: str
    doc_ids: list[str]
    labels: list[int]
    ranks: dict[str, list[int]]


class CandidateMiner:
    """Mines candidates for chunks of queries with the sources of ``specs``."""

    def __init__(self, specs: Sequence[CandidateSpec], resources, *, include_positives: bool = True):
        if not specs:
            raise EmbedKDError("at least one --candidates source is needed (e.g. --candidates bm25:100)")
        names = [s.name for s in specs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise EmbedKDError(f"--candidates: source name(s) {dup} used twice; name them, e.g. dense2=dense:MODEL:K")
        self.specs = list(specs)
        self.res = resources
        self.include_positives = include_positives
        self._models = {}

    def prepare(self) -> list[dict]:
        """Load/fit every source (BM25 index, dense model + document embeddings); returns the manifest
        entries (``candidates`` of the score store)."""
        entries = []
        for s in self.specs:
            if s.source == "bm25":
                bm25 = self.res.bm25()
                entries.append({"source": "bm25", "name": s.name, "k": s.k, **bm25.config.__dict__})
            else:
                model = self.res.bi_encoder(s.model)
                self._models[s.name] = model
                self.res.doc_embeddings(model)
                entry = {"source": "dense", "name": s.name, "model": s.model,
                         "model_fingerprint": fingerprint_model(model), "k": s.k, "index": "flat"}
                if bi_backend_name(model) != "torch":  # near-ties may rank otherwise: part of the config
                    entry["backend"] = bi_backend_name(model)
                entries.append(entry)
        return entries

    def mine(self, qids: Sequence[str]) -> list[QueryCandidates]:
        """Candidates of ``qids`` (deterministic: depends only on the queries, not on chunking)."""
        ds = self.res.dataset
        per_source: dict[str, dict[str, list[str]]] = {}
        for s in self.specs:
            if s.source == "bm25":
                run = self.res.bm25().retrieve({q: ds.queries[q] for q in qids}, k=s.k)
            else:
                model = self._models[s.name]
                emb, doc_ids, _ = self.res.doc_embeddings(model)
                q_emb = self.res.query_embeddings(model, qids)
                run = dense_run(q_emb, list(qids), emb, doc_ids, k=min(s.k, len(doc_ids)))
            per_source[s.name] = {q: [d for d, _ in sorted(run.get(q, {}).items(), key=lambda x: -x[1])]
                                  for q in qids}
        out = []
        for q in qids:
            judged = ds.qrels.get(q, {})
            positives = [d for d, r in judged.items() if r > 0] if self.include_positives else []
            doc_ids, ranks = union_candidates({n: per_source[n][q] for n in per_source}, positives)
            out.append(QueryCandidates(q, doc_ids, [int(judged.get(d, 0)) for d in doc_ids], ranks))
        return out
