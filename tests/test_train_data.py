"""Config parsing/overrides and example building (sampling strategies, dev split, normalisation)."""

from __future__ import annotations

import random

import pytest

from embed_kd.data.beir import BeirDataset
from embed_kd.errors import EmbedKDError
from embed_kd.training.config import TrainConfig, apply_overrides
from embed_kd.training.data import build_score_examples, sample_negatives, split_dev


def _cfg(**kw):
    base = {"data": "d", "scores": "s", "teacher": "t", "output": "o",
            "student": {"from_teacher": True, "keep_layers": [0, 2]}}
    base.update(kw)
    return TrainConfig.from_dict(base)


def test_config_overrides_and_errors(tmp_path):
    cfg = apply_overrides(_cfg(), ["train.lr=1e-4", "student.keep_layers=[1,3]", "average.enabled=false",
                                   "train.max_time_s=null"])
    assert cfg.train.lr == 1e-4 and cfg.student.keep_layers == [1, 3] and cfg.average.enabled is False
    with pytest.raises(EmbedKDError, match="unknown key"):
        apply_overrides(cfg, ["train.bogus=1"])
    with pytest.raises(EmbedKDError, match="key=value"):
        apply_overrides(cfg, ["train.lr"])
    with pytest.raises(EmbedKDError, match="must be a number"):
        apply_overrides(cfg, ["train.lr=fast"])
    with pytest.raises(EmbedKDError, match="unknown key"):
        TrainConfig.from_dict({"dta": "x"})
    with pytest.raises(EmbedKDError, match="nothing to train"):
        apply_overrides(cfg, ["losses.score=none", "losses.align=none"]).validate()
    with pytest.raises(EmbedKDError, match="examples.sampling"):
        apply_overrides(cfg, ["examples.sampling=random"]).validate()
    p = tmp_path / "c.yaml"
    p.write_text("- a list\n")
    with pytest.raises(EmbedKDError, match="mapping"):
        TrainConfig.from_yaml(p)


def test_sampling_strategies():
    ranked = [f"d{i}" for i in range(20)]
    assert sample_negatives(ranked, 3, "hardest", random.Random(0)) == ["d0", "d1", "d2"]
    strat = sample_negatives(ranked, 4, "stratified", random.Random(0))
    # one from each fifth-quarter: [0,5), [5,10), [10,15), [15,20)
    assert [int(d[1:]) // 5 for d in strat] == [0, 1, 2, 3]
    uni = sample_negatives(ranked, 5, "uniform", random.Random(1))
    assert len(set(uni)) == 5 and set(uni) <= set(ranked)
    assert sample_negatives(ranked[:2], 5, "uniform", random.Random(0)) == ranked[:2]


def test_split_dev_is_seeded_and_disjoint():
    qids = [f"q{i}" for i in range(10)]
    tr, dev = split_dev(qids, 3, seed=1)
    assert len(dev) == 3 and not set(tr) & set(dev) and sorted(tr + dev) == sorted(qids)
    assert split_dev(qids, 3, seed=1) == (tr, dev)
    with pytest.raises(EmbedKDError, match="no training queries"):
        split_dev(qids, 10, seed=0)


def test_score_examples_positive_negatives_and_normalised_labels():
    corpus = {f"d{i}": {"title": "", "text": f"doc {i}"} for i in range(6)}
    ds = BeirDataset("t", ".", "train", corpus, {"q": "query"}, {"q": {"d3": 1}})
    by_query = {"q": [("d0", 5.0, 0), ("d1", 4.0, 0), ("d2", 3.0, 0), ("d3", 2.0, 1), ("d4", 1.0, 0), ("d5", 0.0, 0)]}
    row = {d: i for i, d in enumerate(corpus)}
    ex = build_score_examples(by_query, ds, ["q"], negatives=2, sampling="hardest", rounds=1, score_norm="minmax",
                              documents="teacher", doc_row=row, seed=0)
    (r,) = ex.rows
    # positive = the judged doc d3 (minmax 0.4), negatives = hardest non-positives d0 (1.0), d1 (0.8)
    assert r["query"] == "query"
    assert r["label"] == [[3.0, pytest.approx(0.4)], [0.0, 1.0], [1.0, pytest.approx(0.8)]]
    ex = build_score_examples(by_query, ds, ["q"], negatives=2, sampling="hardest", rounds=2, score_norm="none",
                              documents="student", doc_row=row, seed=0)
    assert len(ex.rows) == 2 and ex.rows[0]["doc_0"] == "doc 3" and ex.rows[0]["label"] == [2.0, 5.0, 4.0]
    with pytest.raises(EmbedKDError, match="no training examples"):
        build_score_examples({}, ds, ["q"], negatives=2, sampling="hardest", rounds=1, score_norm="none",
                             documents="teacher", doc_row=row, seed=0)
