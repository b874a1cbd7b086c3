"""Combine several teachers' scores for one query into the store's ``score`` column.

For teachers ``t`` with scores ``s_t`` over one query's candidates and weights ``w_t`` (default 1):

=========  =====================================================================
norm       ``score`` (per candidate ``d`` of the query)
=========  =====================================================================
``mean``   ``Σ_t w_t · s_t(d) / Σ_t w_t`` — a plain (weighted) average of raw scores
``none``   same as ``mean``
``zscore`` ``Σ_t w_t · z_t(d) / Σ_t w_t`` with ``z_t`` = per-query z-score of ``s_t``
``minmax`` ``Σ_t w_t · m_t(d) / Σ_t w_t`` with ``m_t`` = per-query min-max of ``s_t``
=========  =====================================================================

Normalisations are :func:`embed_kd.teachers.fusion.normalize_scores` (population std; a constant
column normalises to 0). Dividing by ``Σ w`` keeps the ensemble on the scale of one normalised
teacher, so Margin-MSE margins do not grow with the number of teachers. Every teacher scores every
candidate, so unlike :func:`~embed_kd.teachers.fusion.fuse_runs` no document is missing.

Inputs: ``columns`` ``{teacher: [score per candidate]}`` (equal lengths); output: ``list[float]``.

>>> combine_scores({"ce": [3.0, 1.0], "bm25": [10.0, 30.0]}, "zscore")
[0.0, 0.0]
>>> combine_scores({"ce": [3.0, 1.0], "bm25": [10.0, 30.0]}, "zscore", {"ce": 3, "bm25": 1})
[0.5, -0.5]
>>> combine_scores({"a": [1.0, 2.0], "b": [3.0, 4.0]}, "mean")
[2.0, 3.0]
"""

from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

from embed_kd.errors import ArtifactError, EmbedKDError
from embed_kd.io import read_json
from embed_kd.numeric import finite_number
from embed_kd.teachers.fusion import normalize_scores

NORMS = ("zscore", "minmax", "none", "mean")


def parse_weights(text: str | None, teachers: Sequence[str]) -> dict[str, float]:
    """``"ce=2,bm25=0.5"`` → ``{"ce": 2.0, "bm25": 0.5}``; unnamed teachers get 1.0.

    ``text`` may also be the path of a weights JSON written by ``embed-kd eval --ensemble …
    --save-weights`` (schema ``embed-kd/ensemble-weights@1``, see :mod:`embed_kd.teachers.ensemble`):
    its ``weights`` are used, and must name exactly the teachers.

    >>> parse_weights("ce=2", ["ce", "bm25"])
    {'ce': 2.0, 'bm25': 1.0}
    """
    weights = {t: 1.0 for t in teachers}
    if not text:
        return weights
    if text.endswith(".json") or os.path.isfile(text):
        return _weights_file(text, teachers)
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise EmbedKDError(f"--weights {text!r}: expected name=weight pairs separated by commas")
        if name not in weights:
            raise EmbedKDError(f"--weights: unknown teacher '{name}' (teachers: {', '.join(teachers)})")
        w = finite_number(value.strip(), f"--weights: weight of '{name}'")  # nan / inf refused
        if w < 0:
            raise EmbedKDError(f"--weights: weight of '{name}' must be >= 0, got {w}")
        weights[name] = w
    if sum(weights.values()) <= 0:
        raise EmbedKDError("--weights: at least one weight must be > 0")
    return weights


def ensemble_weights(text: str | None, teachers: Sequence[str], norm: str) -> dict[str, float] | None:
    """``score-teacher --weights`` for ``--ensemble norm``: :func:`parse_weights`, and a weights file
    fitted with another normalisation refused (its weights mean something else). None without ``text``."""
    if not text:
        return None
    weights = parse_weights(text, teachers)
    if os.path.isfile(text):
        file_norm = read_json(text, "ensemble weights file").get("norm")
        if file_norm and file_norm != norm:
            raise EmbedKDError(f"{text}: weights were fitted with norm '{file_norm}'; pass --ensemble {file_norm}")
    return weights


def _weights_file(path: str, teachers: Sequence[str]) -> dict[str, float]:
    doc = read_json(path, "ensemble weights file")
    if not isinstance(doc, dict) or doc.get("schema") != "embed-kd/ensemble-weights@1":
        got = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise ArtifactError(f"{path}: not an ensemble weights file (schema {got!r}, expected 'embed-kd/ensemble-weights@1')")
    w = doc.get("weights")
    if not isinstance(w, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                          and v >= 0 for v in w.values()):
        raise ArtifactError(f"{path}: field 'weights' must map teacher names to finite numbers >= 0")
    if set(w) != set(teachers):
        raise EmbedKDError(f"{path}: weights are for {sorted(w)}, the teachers are {sorted(teachers)}; "
                           "name the teachers like the ensemble members (NAME=SPEC)")
    if doc.get("fusion", "wsum") != "wsum":
        raise EmbedKDError(f"{path}: weights fitted for fusion {doc.get('fusion')!r}; score-teacher fuses by weighted sum")
    return {t: float(w[t]) for t in teachers}


def combine_scores(columns: Mapping[str, Sequence[float]], norm: str,
                   weights: Mapping[str, float] | None = None) -> list[float]:
    """One query's ensemble score per candidate (see the module docstring for the formula)."""
    if norm not in NORMS:
        raise ValueError(f"ensemble norm must be one of {NORMS}, got {norm!r}")
    if not columns:
        raise ValueError("no teacher columns to combine")
    lengths = {t: len(c) for t, c in columns.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"teacher columns must have one score per candidate; got lengths {lengths}")
    n = next(iter(lengths.values()))
    w = {t: float((weights or {}).get(t, 1.0)) for t in columns}
    total_w = sum(w.values())
    if total_w <= 0:
        raise ValueError("ensemble weights sum to 0")
    out = [0.0] * n
    for t, col in columns.items():
        vals = normalize_scores(col, "none" if norm == "mean" else norm)
        for i, v in enumerate(vals):
            out[i] += w[t] * v
    return [v / total_w for v in out]
