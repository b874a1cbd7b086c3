"""Ensemble teachers: BM25 + bi-encoders (+ cross-encoder re-rankers), fused per query.

An ensemble is read from YAML (``yaml.safe_load``; schema ``embed-kd/ensemble@1``)::

    members:                       # one entry per ranker; names must be unique
      - {name: bm25, kind: bm25, k: 100}                      # k: top-k it adds to the candidates
      - {name: minilm, kind: bi-encoder, model: minilm-l6, k: 100}
      - {name: ce, kind: cross-encoder, model: runs/ce, max_length: 256}   # optional re-rankers
    norm: zscore                   # zscore | minmax | none   (per query, see teachers/fusion.py)
    fusion: wsum                   # wsum | rrf
    weights: {bm25: 1.0, minilm: 1.0}     # optional; missing names weigh 1
    fit: dev                       # optional: choose the weights on a dev slice of the TRAIN split
    fit_split: train               # never a test split (refused)
    dev_queries: 100               # dev slice size and seed (teachers/dev_split.py)
    seed: 0
    grid: [0, 0.25, 0.5, 0.75, 1, 1.5, 2, 3]   # weights tried for every member but the first
    rerank_depth: 20               # cross-encoders re-score this many first-stage docs per query
    rrf_k: 60

How an ensemble scores a query:

1. **First stage** (``bm25`` and ``bi-encoder`` members). Candidates = the union of every
   member's top-``k``. Every member then scores *every* candidate — BM25 through ``bm25s``'
   ``get_scores`` (any document), a bi-encoder as ``q · d`` against the cached document embeddings
   — so no member has a missing value. Scores are normalised per query and fused:
   ``s₁(d) = Σ_m w_m · norm(s_m)(d)`` (or RRF).
2. **Re-rank stage** (``cross-encoder`` members, optional). The first stage's top
   ``rerank_depth`` documents are scored by each cross-encoder (raw logits) and re-ranked by
   ``s₂(d) = norm(s₁)(d) + Σ_c w_c · norm(s_c)(d)`` with ``norm`` taken over those documents; they
   are placed above the rest of the first stage (:func:`embed_kd.runs.merge_rerank`, as ``eval --rerank``).

Weights with ``fit: dev`` are chosen by grid search on nDCG@10 of a dev slice carved from the
``fit_split`` (``train``): first-stage weights first (the first member's weight is fixed to 1 —
only ratios matter for ``wsum`` after normalisation), then each cross-encoder's weight with the
first stage fixed. :func:`fit_weights` refuses a test split, whatever the caller passes.

Fitted weights are written (``eval --ensemble … --save-weights FILE``) as JSON, schema
``embed-kd/ensemble-weights@1``::

    {"schema", "created", "norm", "fusion", "rrf_k", "rerank_depth",
     "members": [{name, kind, model, model_fingerprint}],
     "weights": {name: w},               # every member; what score-teacher's --weights reads
     "first_stage_weights": {name: w}, "rerank_weights": {name: w},
     "fit": null | {"split", "dev_queries", "seed", "metric", "dev_value", "dev_value_equal_weights",
                    "dataset", "corpus_fingerprint", "dev_query_ids_fingerprint"}}

An ensemble is evaluated (``eval --ensemble``) by :mod:`embed_kd.evaluation.ensemble_eval`.

``weights`` is the flat view for a one-stage fusion over a fixed candidate list (score-teacher
fuses every teacher's score on the same candidates): the first-stage weights normalised to sum 1,
and each cross-encoder weight as fitted.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from embed_kd.candidates.bm25 import BM25Retriever
from embed_kd.data.beir import BeirDataset
from embed_kd.data.fingerprint import fingerprint_corpus, fingerprint_json
from embed_kd.encode import encode_texts
from embed_kd.errors import EmbedKDError, describe_parse_error
from embed_kd.index.cache import EmbeddingCache
from embed_kd.index.encoding import encode_corpus
from embed_kd.index.search import dense_run
from embed_kd.io import utc_now
from embed_kd.models import fingerprint_model, load_cross_encoder, load_sentence_transformer
from embed_kd.runs import evaluate_run, merge_rerank, top_k
from embed_kd.teachers.dev_split import DEFAULT_DEV_QUERIES, DEFAULT_SEED, carve_dev_slice, check_fit_split
from embed_kd.teachers.fusion import METHODS, NORMS, fuse_runs
from embed_kd.teachers.rerank_scores import score_pairs

logger = logging.getLogger(__name__)
SCHEMA = "embed-kd/ensemble@1"
WEIGHTS_SCHEMA = "embed-kd/ensemble-weights@1"
KINDS = ("bm25", "bi-encoder", "cross-encoder")
DEFAULT_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)

Run = dict[str, dict[str, float]]


@dataclass
class MemberSpec:
    name: str
    kind: str
    model: str | None = None
    k: int = 100
    max_length: int | None = None
    batch_size: int = 32

    @property
    def first_stage(self) -> bool:
        return self.kind != "cross-encoder"


@dataclass
class EnsembleConfig:
    members: list[MemberSpec]
    norm: str = "zscore"
    fusion: str = "wsum"
    weights: dict[str, float] = field(default_factory=dict)
    fit: str | None = None
    fit_split: str = "train"
    dev_queries: int = DEFAULT_DEV_QUERIES
    seed: int = DEFAULT_SEED
    grid: tuple[float, ...] = DEFAULT_GRID
    rerank_depth: int = 20
    rrf_k: int = 60
    source: str = "<dict>"

    @property
    def first_stage(self) -> list[MemberSpec]:
        return [m for m in self.members if m.first_stage]

    @property
    def rerankers(self) -> list[MemberSpec]:
        return [m for m in self.members if not m.first_stage]

    def describe(self) -> str:
        """``bm25+minilm-l6 (zscore wsum) → ce`` style one-liner."""
        first = "+".join(m.model or m.name for m in self.first_stage)
        text = f"{first} ({self.norm} {self.fusion})" if self.fusion == "wsum" else f"{first} (rrf)"
        if self.rerankers:
            text += " → " + "+".join(m.model or m.name for m in self.rerankers) + f"@{self.rerank_depth}"
        return text

    # ---- parsing -------------------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, path: str | Path) -> "EnsembleConfig":
        import yaml

        p = Path(path)
        if not p.is_file():
            raise EmbedKDError(f"{p}: ensemble config not found")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise EmbedKDError(f"{p}: {describe_parse_error(exc)}") from None
        except yaml.YAMLError as exc:
            raise EmbedKDError(f"{p}: not valid YAML ({describe_parse_error(exc)})") from None
        return cls.from_dict(raw, source=str(p))

    @classmethod
    def from_dict(cls, raw, source: str = "<dict>") -> "EnsembleConfig":
        def bad(msg: str) -> EmbedKDError:
            return EmbedKDError(f"{source}: {msg}")

        if not isinstance(raw, dict):
            raise bad("expected a mapping at the top level")
        known = {"schema", "members", "norm", "fusion", "weights", "fit", "fit_split", "dev_queries", "seed", "grid",
                 "rerank_depth", "rrf_k"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise bad(f"unknown field(s) {unknown} (known: {sorted(known)})")
        members_raw = raw.get("members")
        if not isinstance(members_raw, list) or not members_raw:
            raise bad("field 'members' must be a non-empty list")
        members, names = [], set()
        for i, m in enumerate(members_raw):
            where = f"members[{i}]"
            if not isinstance(m, dict):
                raise bad(f"{where} must be a mapping")
            extra = sorted(set(m) - {"name", "kind", "model", "k", "max_length", "batch_size"})
            if extra:
                raise bad(f"{where}: unknown field(s) {extra}")
            kind = m.get("kind")
            if kind not in KINDS:
                raise bad(f"{where}.kind must be one of {list(KINDS)}, got {kind!r}")
            model = m.get("model")
            if kind != "bm25" and not isinstance(model, str):
                raise bad(f"{where}.model is required for a {kind} member (a preset, folder or hub id)")
            name = str(m.get("name") or (model if kind != "bm25" else "bm25"))
            if name in names:
                raise bad(f"{where}.name '{name}' is used twice")
            names.add(name)
            for key in ("k", "max_length", "batch_size"):
                if key in m and m[key] is not None and (not isinstance(m[key], int) or m[key] < 1):
                    raise bad(f"{where}.{key} must be a positive integer, got {m[key]!r}")
            members.append(MemberSpec(name=name, kind=kind, model=model, k=int(m.get("k") or 100),
                                      max_length=m.get("max_length"), batch_size=int(m.get("batch_size") or 32)))
        if not any(m.first_stage for m in members):
            raise bad("at least one bm25 or bi-encoder member is needed (cross-encoders only re-rank)")
        norm, fusion = raw.get("norm", "zscore"), raw.get("fusion", "wsum")
        if norm not in NORMS:
            raise bad(f"field 'norm' must be one of {list(NORMS)}, got {norm!r}")
        if fusion not in METHODS:
            raise bad(f"field 'fusion' must be one of {list(METHODS)}, got {fusion!r}")
        weights = raw.get("weights") or {}
        if not isinstance(weights, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                    and math.isfinite(v) and v >= 0 for v in weights.values()):
            raise bad("field 'weights' must map member names to finite numbers >= 0")
        missing = sorted(set(weights) - names)
        if missing:
            raise bad(f"field 'weights' names unknown member(s) {missing}")
        fit = raw.get("fit")
        if fit not in (None, "dev"):
            raise bad(f"field 'fit' must be 'dev' or absent, got {fit!r}")
        fit_split = str(raw.get("fit_split", "train"))
        if fit:
            try:
                check_fit_split(fit_split)
            except EmbedKDError as exc:
                raise bad(f"field 'fit_split': {exc}") from None
        grid = raw.get("grid", DEFAULT_GRID)
        if not isinstance(grid, list | tuple) or not grid or not all(isinstance(g, (int, float)) and not isinstance(g, bool)
                                                                      and math.isfinite(g) and g >= 0 for g in grid):
            raise bad("field 'grid' must be a non-empty list of finite, non-negative numbers")
        ints = {}
        for key, default in (("dev_queries", DEFAULT_DEV_QUERIES), ("seed", DEFAULT_SEED), ("rerank_depth", 20),
                             ("rrf_k", 60)):
            v = raw.get(key, default)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if key == "seed" else 1):
                raise bad(f"field '{key}' must be a {'non-negative' if key == 'seed' else 'positive'} integer, got {v!r}")
            ints[key] = v
        return cls(members=members, norm=norm, fusion=fusion, weights={k: float(v) for k, v in weights.items()},
                   fit=fit, fit_split=fit_split, grid=tuple(float(g) for g in grid), source=source, **ints)


# ---- member scoring --------------------------------------------------------------------------------


class FirstStageMember:
    """A loaded first-stage member: retrieves its top-k and scores any (query, doc) pair."""

    def __init__(self, spec: MemberSpec, dataset: BeirDataset, *, cache_dir=None, use_cache: bool = True,
                 show_progress: bool = True, model=None, retriever=None):
        self.spec = spec
        self.dataset = dataset
        self.show_progress = show_progress
        self.info: dict = {"name": spec.name, "kind": spec.kind, "model": spec.model}
        if spec.kind == "bm25":
            self.retriever = retriever or BM25Retriever.fit(dataset.corpus, show_progress=show_progress)
            self.info["config"] = dict(self.retriever.config.__dict__)
        else:
            self.model = model or load_sentence_transformer(spec.model, role=f"ensemble member '{spec.name}'")
            if spec.max_length:
                self.model.max_seq_length = spec.max_length
            self.info["model_fingerprint"] = fingerprint_model(self.model)
            cache = EmbeddingCache(cache_dir, enabled=use_cache)
            self.doc_emb, self.doc_ids, _ = encode_corpus(self.model, dataset, cache=cache, batch_size=spec.batch_size,
                                                          show_progress=show_progress)
            self.row = {d: i for i, d in enumerate(self.doc_ids)}
        self._q_emb: dict[str, np.ndarray] = {}

    def _query_embeddings(self, queries: Mapping[str, str]) -> np.ndarray:
        todo = [q for q in queries if q not in self._q_emb]
        if todo:
            emb = encode_texts(self.model, [queries[q] for q in todo], batch_size=self.spec.batch_size, role="query",
                               show_progress=self.show_progress)
            self._q_emb.update(zip(todo, emb))
        return np.stack([self._q_emb[q] for q in queries]) if queries else np.zeros((0, self.doc_emb.shape[1]))

    def retrieve(self, queries: Mapping[str, str], k: int | None = None) -> Run:
        k = k or self.spec.k
        if self.spec.kind == "bm25":
            return self.retriever.retrieve(queries, k=k)

        return dense_run(self._query_embeddings(queries), list(queries), self.doc_emb, self.doc_ids, k=k)

    def score(self, queries: Mapping[str, str], pairs: Mapping[str, list[str]]) -> Run:
        """This member's score for every listed (query, doc): no missing values."""
        if self.spec.kind == "bm25":
            return self.retriever.score_pairs(queries, dict(pairs))
        qs = {q: queries[q] for q in pairs}
        q_emb = self._query_embeddings(qs)
        out = {}
        for i, q in enumerate(qs):
            docs = pairs[q]
            rows = np.fromiter((self.row[d] for d in docs), dtype=np.int64, count=len(docs))
            out[q] = dict(zip(docs, (self.doc_emb[rows] @ q_emb[i]).astype(float).tolist()))
        return out


def load_first_stage(config: EnsembleConfig, dataset: BeirDataset, **kwargs) -> list[FirstStageMember]:
    return [FirstStageMember(m, dataset, **kwargs) for m in config.first_stage]


def first_stage_scores(members: list[FirstStageMember], queries: Mapping[str, str]) -> tuple[dict[str, Run], dict[str, Run]]:
    """``(retrieved, scores)``: each member's own top-k, and each member's score on the union of all top-k."""
    retrieved = {m.spec.name: m.retrieve(queries) for m in members}
    union = {q: sorted({d for run in retrieved.values() for d in run.get(q, {})}) for q in queries}
    scores = {m.spec.name: m.score(queries, union) for m in members}
    return retrieved, scores


def _fuse(config: EnsembleConfig, runs: Mapping[str, Run], weights: Mapping[str, float]) -> Run:
    return fuse_runs(runs, {n: weights.get(n, 1.0) for n in runs}, norm=config.norm, method=config.fusion,
                     rrf_k=config.rrf_k)


def rerank_fuse(config: EnsembleConfig, first: Run, ce_scores: Mapping[str, Run], weights: Mapping[str, float]) -> Run:
    """Second stage: ``norm(first) + Σ_c w_c · norm(ce_c)`` over each query's re-ranked docs, placed above the rest."""
    heads = top_k(first, config.rerank_depth)
    runs = {"__first_stage__": heads, **{n: {q: s for q, s in run.items() if q in heads} for n, run in ce_scores.items()}}
    w = {"__first_stage__": 1.0, **{n: weights.get(n, 1.0) for n in ce_scores}}
    fused = fuse_runs(runs, w, norm=config.norm, method=config.fusion, rrf_k=config.rrf_k)
    return merge_rerank(first, fused, config.rerank_depth)


def _score_rerankers(config: EnsembleConfig, rerankers: Mapping[str, object], dataset: BeirDataset, first: Run,
                     show_progress: bool) -> dict[str, Run]:
    pairs = {q: list(docs) for q, docs in top_k(first, config.rerank_depth).items()}
    specs = {m.name: m for m in config.rerankers}
    return {n: score_pairs(ce, dataset.queries, dataset.corpus, pairs, batch_size=specs[n].batch_size,
                           show_progress=show_progress) for n, ce in rerankers.items()}


def load_rerankers(config: EnsembleConfig) -> dict[str, object]:
    return {m.name: load_cross_encoder(m.model, max_length=m.max_length, role=f"ensemble re-ranker '{m.name}'")
            for m in config.rerankers}


# ---- weight fitting ----------------------------------------------------------------------------------


def _ndcg(qrels, run) -> float:
    return evaluate_run(qrels, run)["metrics"]["ndcg_at_10"]


def grid_search_first_stage(config: EnsembleConfig, scores: Mapping[str, Run], qrels) -> tuple[dict[str, float], float, list]:
    """Best first-stage weights on ``qrels`` (first member fixed to 1; others from ``config.grid``).

    Ties keep the earliest grid point in product order, so the search is deterministic.
    """
    names = list(scores)
    trials = []
    best_w, best = None, -1.0
    for combo in itertools.product(config.grid, repeat=len(names) - 1):
        w = {names[0]: 1.0, **dict(zip(names[1:], combo))}
        value = _ndcg(qrels, _fuse(config, scores, w))
        trials.append({"weights": w, "ndcg_at_10": value})
        if value > best + 1e-12:
            best_w, best = w, value
    return best_w, best, trials


def grid_search_rerank(config: EnsembleConfig, first: Run, ce_scores: Mapping[str, Run], qrels
                       ) -> tuple[dict[str, float], float, list]:
    """Best cross-encoder weights (first stage weight 1), one at a time in member order."""
    w = {n: 1.0 for n in ce_scores}
    trials = []
    best = -1.0
    for n in ce_scores:
        for g in config.grid:
            cand = {**w, n: g}
            value = _ndcg(qrels, rerank_fuse(config, first, ce_scores, cand))
            trials.append({"weights": cand, "ndcg_at_10": value})
            if value > best + 1e-12:
                best, w = value, cand
    return w, best, trials


def fit_weights(config: EnsembleConfig, fit_dataset: BeirDataset, members: list[FirstStageMember] | None = None,
                rerankers: Mapping[str, object] | None = None, *, show_progress: bool = True, **member_kwargs) -> dict:
    """Fit the ensemble's weights on a dev slice carved from ``fit_dataset`` (a train split).

    Returns ``{"weights": {...}, "fit": {...}}`` (see the module docstring). Raises
    :class:`EmbedKDError` for a test split — weights are never fitted on test.
    """
    check_fit_split(fit_dataset.split)
    _, dev = carve_dev_slice(fit_dataset, config.dev_queries, config.seed)
    members = members or load_first_stage(config, dev, show_progress=show_progress, **member_kwargs)
    t = time.perf_counter()
    _, scores = first_stage_scores(members, dev.queries)
    equal = {m.name: 1.0 for m in config.members}
    equal_value = _ndcg(dev.qrels, _fuse(config, scores, equal))
    w1, v1, trials = grid_search_first_stage(config, scores, dev.qrels)
    weights = dict(w1)
    value = v1
    if config.rerankers:
        rerankers = rerankers if rerankers is not None else load_rerankers(config)
        first = _fuse(config, scores, w1)
        ce_scores = _score_rerankers(config, rerankers, dev, first, show_progress)
        equal_value = _ndcg(dev.qrels, rerank_fuse(config, _fuse(config, scores, equal), ce_scores, equal))
        w2, value, trials2 = grid_search_rerank(config, first, ce_scores, dev.qrels)
        weights.update(w2)
        trials += trials2
    logger.info("fitted weights on %d dev queries of %s/%s: %s (nDCG@10 %.4f; equal weights %.4f)",
                len(dev.queries), fit_dataset.name, fit_dataset.split, weights, value, equal_value)
    return {
        "weights": weights,
        "fit": {"split": fit_dataset.split, "dev_queries": len(dev.queries), "seed": config.seed,
                "metric": "ndcg_at_10", "dev_value": value, "dev_value_equal_weights": equal_value,
                "dataset": fit_dataset.name, "corpus_fingerprint": fingerprint_corpus(fit_dataset.corpus),
                "dev_query_ids_fingerprint": fingerprint_json(sorted(dev.queries)), "trials": len(trials),
                "fit_s": time.perf_counter() - t},
    }


def flat_weights(config: EnsembleConfig, weights: Mapping[str, float]) -> dict[str, float]:
    """The one-stage view of the weights (first stage normalised to sum 1; see the module docstring)."""
    first = {m.name: float(weights.get(m.name, 1.0)) for m in config.first_stage}
    total = sum(first.values()) or 1.0
    out = {n: w / total for n, w in first.items()}
    out.update({m.name: float(weights.get(m.name, 1.0)) for m in config.rerankers})
    return out


def weights_document(config: EnsembleConfig, weights: Mapping[str, float], fit: dict | None, member_info: list[dict]) -> dict:
    """The ``embed-kd/ensemble-weights@1`` JSON document."""
    return {
        "schema": WEIGHTS_SCHEMA,
        "created": utc_now(),
        "norm": config.norm, "fusion": config.fusion, "rrf_k": config.rrf_k, "rerank_depth": config.rerank_depth,
        "members": member_info,
        "weights": flat_weights(config, weights),
        "first_stage_weights": {m.name: float(weights.get(m.name, 1.0)) for m in config.first_stage},
        "rerank_weights": {m.name: float(weights.get(m.name, 1.0)) for m in config.rerankers},
        "fit": {k: v for k, v in fit.items()} if fit else None,
    }


# ---- the ensemble's run ------------------------------------------------------------------------------

def ensemble_run(config: EnsembleConfig, dataset: BeirDataset, weights: Mapping[str, float],
                 members: list[FirstStageMember], rerankers: Mapping[str, object] | None = None, *,
                 show_progress: bool = True) -> tuple[Run, dict]:
    """The ensemble's run on ``dataset`` and per-member runs (``{"retrieved", "scores", "rerank"}``)."""
    retrieved, scores = first_stage_scores(members, dataset.queries)
    first = _fuse(config, scores, weights)
    parts = {"retrieved": retrieved, "scores": scores, "first_stage": first}
    if not config.rerankers:
        return first, parts
    rerankers = rerankers if rerankers is not None else load_rerankers(config)
    ce_scores = _score_rerankers(config, rerankers, dataset, first, show_progress)
    parts["rerank"] = ce_scores
    return rerank_fuse(config, first, ce_scores, weights), parts
