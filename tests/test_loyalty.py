"""Loyalty metrics: hand-computed overlaps/correlations, and `eval --loyalty-teacher` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from embed_kd.cli import main
from embed_kd.evaluation.loyalty import spearman_same_candidates, top_k_overlap


def test_top_k_overlap_by_hand():
    teacher = {"q1": {"a": 5, "b": 4, "c": 3}, "q2": {"x": 2, "y": 1}}
    student = {"q1": {"c": 9, "a": 8, "z": 7}, "q2": {"y": 3, "x": 1}}
    # q1: top-2 {c, a} vs {a, b} -> 1/2; q2: {y, x} vs {x, y} -> 1
    assert top_k_overlap(student, teacher, k=2) == pytest.approx(0.75)
    assert top_k_overlap({}, teacher, k=2) == 0.0


def test_spearman_same_candidates_by_hand():
    docs = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    tq = np.array([[1.0, 0.0]])  # teacher order: d0 > d1 > d2
    assert spearman_same_candidates(tq, docs, tq, docs) == pytest.approx(1.0)
    reverse = np.array([[0.0, 1.0]])  # student order: d2 > d1 > d0
    assert spearman_same_candidates(reverse, docs, tq, docs) == pytest.approx(-1.0)
    # depth 2: candidates = teacher's top-2 (d0, d1); the student ranks d1 over d0 -> rho = -1
    assert spearman_same_candidates(np.array([[0.6, 0.8]]), docs, tq, docs, depth=2) == pytest.approx(-1.0)


def test_eval_cli_reports_loyalty(tiny_beir, tiny_model, tiny_model_b, cache_dir, tmp_path):
    run = CliRunner().invoke
    out = tmp_path / "self.json"
    r = run(main, ["eval", "--data", str(tiny_beir), "--query-model", str(tiny_model), "--doc-model", str(tiny_model),
                   "--loyalty-teacher", str(tiny_model), "--cache-dir", str(cache_dir), "--no-progress", "-o", str(out)])
    assert r.exit_code == 0, r.output
    ly = json.loads(out.read_text())["loyalty"]
    assert ly["top10_overlap"] == pytest.approx(1.0) and ly["spearman"] == pytest.approx(1.0)
    assert ly["query_cosine"] == pytest.approx(1.0, abs=1e-5) and ly["doc_cosine"] is None
    out_b = tmp_path / "other.json"
    r = run(main, ["eval", "--data", str(tiny_beir), "--model", str(tiny_model_b), "--loyalty-teacher", str(tiny_model),
                   "--cache-dir", str(cache_dir), "--no-progress", "-o", str(out_b)])
    assert r.exit_code == 0, r.output
    ly = json.loads(out_b.read_text())["loyalty"]
    # random tiny models rank alike (near-constant embeddings), so only the geometry must differ
    assert 0.0 <= ly["top10_overlap"] <= 1.0 and -1.0 <= ly["spearman"] <= 1.0
    assert ly["query_cosine"] < 0.99 and ly["doc_cosine"] is not None and ly["doc_cosine"] < 0.99
    assert "loyalty to" in r.output
