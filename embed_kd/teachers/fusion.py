"""Per-query score normalisation and fusion of several rankers' scores.

Fusion is how embed-kd builds a teacher stronger than its members (e.g. BM25 + a bi-encoder).
All functions are pure and work on TREC-style runs ``{qid: {doc_id: score}}``.

Normalisations (per query, over the documents scored for that query):

=========  ==========================================  ==============================
name       formula                                      note
=========  ==========================================  ==============================
``none``   s                                            raw scores
``zscore`` (s − mean) / std   (std 0 → 0)               ranx's ``zmuv``
``minmax`` (s − min) / (max − min)   (max = min → 0)    ranx's ``min-max``
=========  ==========================================  ==============================

Fusion methods:

- ``wsum``: ``Σ_t w_t · norm_t(s_t)``; a document a ranker did not score gets that ranker's
  lowest normalised score for the query (it was not retrieved, so it ranks below all that were);
- ``rrf``: reciprocal rank fusion, ``Σ_t w_t / (k + rank_t)`` (Cormack et al., 2009), k = 60;
  a missing document contributes 0.

Weights default to 1 for every ranker; they are never fitted here (see the ensemble module, which
fits them on a dev slice of the *train* split only).

>>> a = {"q": {"d1": 3.0, "d2": 1.0}}
>>> b = {"q": {"d1": 0.0, "d2": 1.0, "d3": 0.5}}
>>> normalize_run(a, "zscore")["q"]
{'d1': 1.0, 'd2': -1.0}
>>> fused = fuse_runs({"a": a, "b": b}, norm="minmax")["q"]
>>> {d: round(s, 3) for d, s in fused.items()}
{'d1': 1.0, 'd2': 1.0, 'd3': 0.5}
>>> rrf = fuse_runs({"a": a, "b": b}, method="rrf")["q"]  # d2: ranks 2 and 1 beat d1: ranks 1 and 3
>>> max(rrf, key=rrf.get)
'd2'
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

Run = Mapping[str, Mapping[str, float]]
NORMS = ("none", "zscore", "minmax")
METHODS = ("wsum", "rrf")


def normalize_scores(scores: Sequence[float], method: str) -> list[float]:
    """Normalise one query's scores (see the table above)."""
    if method not in NORMS:
        raise ValueError(f"normalisation must be one of {NORMS}, got {method!r}")
    xs = [float(s) for s in scores]
    if method == "none" or not xs:
        return xs
    if method == "zscore":
        mean = sum(xs) / len(xs)
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs))
        return [(x - mean) / std if std > 0 else 0.0 for x in xs]
    lo, hi = min(xs), max(xs)
    return [(x - lo) / (hi - lo) if hi > lo else 0.0 for x in xs]


def normalize_run(run: Run, method: str) -> dict[str, dict[str, float]]:
    out = {}
    for q, docs in run.items():
        ids = list(docs)
        out[q] = dict(zip(ids, normalize_scores([docs[d] for d in ids], method)))
    return out


def fuse_runs(runs: Mapping[str, Run], weights: Mapping[str, float] | None = None, *, norm: str = "zscore",
              method: str = "wsum", rrf_k: int = 60) -> dict[str, dict[str, float]]:
    """Fuse named runs into one run (see the module docstring for the maths)."""
    if method not in METHODS:
        raise ValueError(f"fusion method must be one of {METHODS}, got {method!r}")
    if not runs:
        raise ValueError("nothing to fuse")
    weights = {name: float((weights or {}).get(name, 1.0)) for name in runs}
    unknown = set(weights) - set(runs)
    if unknown:
        raise ValueError(f"weights for unknown rankers: {sorted(unknown)}")
    qids = sorted({q for r in runs.values() for q in r})
    fused: dict[str, dict[str, float]] = {}
    for q in qids:
        docs = sorted({d for r in runs.values() for d in r.get(q, {})})
        total = dict.fromkeys(docs, 0.0)
        for name, run in runs.items():
            scores = run.get(q, {})
            if method == "rrf":
                ranked = sorted(scores, key=lambda d: (-scores[d], d))
                for rank, d in enumerate(ranked, 1):
                    total[d] += weights[name] / (rrf_k + rank)
                continue
            ids = list(scores)
            normed = dict(zip(ids, normalize_scores([scores[d] for d in ids], norm)))
            floor = min(normed.values()) if normed else 0.0
            for d in docs:
                total[d] += weights[name] * normed.get(d, floor)
        fused[q] = total
    return fused
