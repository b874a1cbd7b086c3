import math

import pytest

from embed_kd.teachers.fusion import fuse_runs, normalize_scores


def test_zscore_hand_computed():
    got = normalize_scores([1.0, 2.0, 3.0, 6.0], "zscore")
    mean, std = 3.0, math.sqrt((4 + 1 + 0 + 9) / 4)
    assert got == pytest.approx([(x - mean) / std for x in (1, 2, 3, 6)])


def test_constant_scores_normalise_to_zero():
    assert normalize_scores([5.0, 5.0], "zscore") == [0.0, 0.0]
    assert normalize_scores([5.0, 5.0], "minmax") == [0.0, 0.0]


def test_weighted_sum_hand_computed():
    a = {"q": {"d1": 10.0, "d2": 0.0}}          # minmax → d1 1, d2 0
    b = {"q": {"d1": 0.0, "d2": 4.0, "d3": 2.0}}  # minmax → d1 0, d2 1, d3 0.5
    fused = fuse_runs({"a": a, "b": b}, {"a": 0.25, "b": 0.75}, norm="minmax")["q"]
    # d3 is missing from a: it gets a's lowest normalised score (0)
    assert fused == pytest.approx({"d1": 0.25, "d2": 0.75, "d3": 0.375})


def test_rrf_hand_computed():
    a = {"q": {"x": 2.0, "y": 1.0}}
    b = {"q": {"y": 5.0}}
    fused = fuse_runs({"a": a, "b": b}, method="rrf", rrf_k=60)["q"]
    assert fused == pytest.approx({"x": 1 / 61, "y": 1 / 62 + 1 / 61})


def test_bad_arguments():
    with pytest.raises(ValueError, match="normalisation must be one of"):
        fuse_runs({"a": {"q": {"d": 1.0}}}, norm="softmax")
    with pytest.raises(ValueError, match="fusion method"):
        fuse_runs({"a": {"q": {"d": 1.0}}}, method="max")
