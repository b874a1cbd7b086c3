"""train-teacher: example building by hand, a tiny end-to-end run that saves a loadable CrossEncoder."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from embed_kd.data import load_beir
from embed_kd.data.beir import BeirDataset
from embed_kd.errors import EmbedKDError
from embed_kd.training.train_teacher import TrainTeacherConfig, build_examples, train_teacher


def _toy():
    corpus = {d: {"title": "", "text": f"text {d}"} for d in ["p", "n1", "n2", "n3", "n4", "judged0"]}
    ds = BeirDataset("toy", None, "train", corpus, {"q": "query"}, {"q": {"p": 1, "judged0": 0}})
    cands = {"q": {"bm25": ["p", "n1", "judged0", "n2"], "dense": ["n3", "p", "n4"]}}
    targets = {"q": {"p": 2.0, "n1": 1.0, "n2": 0.5, "n3": -1.0, "n4": 0.0, "judged0": 0.0}}
    return ds, cands, targets


def test_listwise_examples_mix_bm25_and_dense_negatives():
    ds, cands, targets = _toy()
    cols = build_examples(TrainTeacherConfig(loss="listnet", targets="ensemble", negatives=2), ds, cands, targets)
    docs = cols["docs"][0]
    assert docs[0] == "text p" and len(docs) == 3
    negs = {d.split()[-1] for d in docs[1:]}
    assert len(negs & {"n1", "n2"}) == 1 and len(negs & {"n3", "n4"}) == 1   # one from each retriever
    assert "judged0" not in negs and "p" not in negs                          # judged docs are never negatives
    assert cols["labels"][0] == [targets["q"][d] for d in ["p", *[d.split()[-1] for d in docs[1:]]]]


def test_pointwise_and_margin_examples():
    ds, cands, targets = _toy()
    bce = build_examples(TrainTeacherConfig(loss="bce", targets="labels", negatives=3), ds, cands, targets)
    assert bce["label"] == [1.0, 0.0, 0.0, 0.0] and len(bce["doc"]) == 4
    mm = build_examples(TrainTeacherConfig(loss="margin-mse", targets="ensemble", negatives=2), ds, cands, targets)
    for pos, neg, lab in zip(mm["positive"], mm["negative"], mm["label"]):
        assert lab == pytest.approx(targets["q"][pos.split()[-1]] - targets["q"][neg.split()[-1]])
    assert build_examples(TrainTeacherConfig(loss="bce", negatives=3), ds, cands, targets) == \
        build_examples(TrainTeacherConfig(loss="bce", negatives=3), ds, cands, targets)   # seeded


def test_config_validation():
    with pytest.raises(EmbedKDError, match="lambdaloss"):
        TrainTeacherConfig(loss="lambdaloss", targets="ensemble").validate()
    with pytest.raises(EmbedKDError, match="distils teacher scores"):
        TrainTeacherConfig(loss="margin-mse", targets="labels").validate()


def test_refuses_test_split(tiny_beir, tmp_path):
    with pytest.raises(EmbedKDError, match="never fitted on a test split"):
        train_teacher(TrainTeacherConfig(dev_queries=2), load_beir(tiny_beir, "test"), tmp_path / "ce")


def test_tiny_run_saves_a_loadable_cross_encoder(tiny_beir, tiny_model, tmp_path):
    from sentence_transformers import CrossEncoder

    from embed_kd.cli import main

    out = tmp_path / "ce"
    args = ["train-teacher", "--data", str(tiny_beir), "--split", "train", "--base", str(tiny_model),
            "--dense-model", str(tiny_model), "--output", str(out), "--max-steps", "2", "--dev-queries", "2",
            "--eval-queries", "2", "--eval-depth", "4", "--negatives", "2", "--max-length", "32", "--batch-size", "2",
            "--no-cache", "--no-progress", "-q"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "dev re-rank nDCG@10" in res.output
    manifest = json.loads((out / "embed_kd_teacher.json").read_text())
    assert manifest["schema"] == "embed-kd/cross-encoder-teacher@1"
    assert manifest["train"]["steps"] == 2 and manifest["dataset"]["split"] == "train"
    assert manifest["dataset"]["n_dev_queries"] == 2 and manifest["dataset"]["n_train_queries"] == 4
    assert any("loss" in row for row in manifest["train"]["log"])
    assert set(manifest["dev"]["after"]) >= {"dev_ndcg@10", "dev_base_ndcg@10"}
    card = (out / "README.md").read_text()
    assert "embed-kd training recipe" in card and "ListNetLoss" in card
    from embed_kd.presets import resolve_model_spec

    assert resolve_model_spec(str(out)).kind == "cross-encoder"   # so score-teacher --teacher DIR picks it up
    ce = CrossEncoder(str(out), device="cpu")
    scores = ce.predict([("cat purr ?", "cat kitten purr"), ("cat purr ?", "sea wave tide")])
    assert scores.shape == (2,)
    assert not list(tmp_path.glob(".ce.*"))   # no temporary folders left behind
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "already exists" in again.output
