"""Ensemble teachers: config parsing, fusion maths by hand, dev-slice fitting that never sees test."""

from __future__ import annotations

import math

import pytest

from embed_kd.data import load_beir
from embed_kd.errors import EmbedKDError
from embed_kd.teachers import ensemble as ens
from embed_kd.teachers.dev_split import carve_dev_slice
from embed_kd.evaluation.ensemble_eval import evaluate_ensemble
from embed_kd.teachers.ensemble import EnsembleConfig, FirstStageMember, fit_weights

BASE = {"members": [{"name": "bm25", "kind": "bm25", "k": 5}, {"name": "dense", "kind": "bi-encoder", "model": "m", "k": 5}]}


def cfg(**kw) -> EnsembleConfig:
    return EnsembleConfig.from_dict({**BASE, **kw})


def test_config_defaults_and_yaml(tmp_path):
    p = tmp_path / "e.yaml"
    p.write_text("members:\n  - {kind: bm25}\n  - {kind: bi-encoder, model: minilm-l6}\nfit: dev\n")
    c = EnsembleConfig.from_yaml(p)
    assert [m.name for m in c.members] == ["bm25", "minilm-l6"]
    assert (c.norm, c.fusion, c.fit, c.fit_split, c.dev_queries) == ("zscore", "wsum", "dev", "train", 100)


@pytest.mark.parametrize("raw, msg", [
    ({"members": []}, "non-empty list"),
    ({"members": [{"kind": "splade"}]}, r"members\[0\]\.kind"),
    ({"members": [{"kind": "bi-encoder"}]}, r"members\[0\]\.model is required"),
    ({"members": [{"kind": "bm25"}, {"kind": "bm25"}]}, "used twice"),
    ({"members": [{"kind": "cross-encoder", "model": "x"}]}, "at least one bm25 or bi-encoder"),
    ({**BASE, "weights": {"nope": 1}}, "unknown member"),
    ({**BASE, "norm": "softmax"}, "field 'norm'"),
    ({**BASE, "fit": "dev", "fit_split": "test"}, "never fitted on a test split"),
    ({**BASE, "colour": 1}, "unknown field"),
])
def test_config_errors_name_the_field(raw, msg):
    with pytest.raises(EmbedKDError, match=msg):
        EnsembleConfig.from_dict(raw, source="e.yaml")


def test_bad_yaml_is_a_clear_error(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("members: [\n")
    with pytest.raises(EmbedKDError, match="not valid YAML"):
        EnsembleConfig.from_yaml(p)


def test_dev_slice_is_deterministic_disjoint_and_refuses_test(tiny_beir):
    train = load_beir(tiny_beir, "train")
    rest, dev = carve_dev_slice(train, 2, seed=0)
    assert len(dev.qrels) == 2 and not set(dev.qrels) & set(rest.qrels)
    assert set(dev.qrels) | set(rest.qrels) == set(train.qrels)
    assert carve_dev_slice(train, 2, seed=0)[1].qrels == dev.qrels
    with pytest.raises(EmbedKDError, match="never fitted on a test split"):
        carve_dev_slice(load_beir(tiny_beir, "test"), 2)


def test_wsum_fusion_of_union_candidates_by_hand(tiny_beir, tiny_model):
    """Every member scores every union candidate; the fused score is Σ w·zscore(s) computed here by hand."""
    ds = load_beir(tiny_beir, "test")
    c = EnsembleConfig.from_dict({"members": [{"name": "bm25", "kind": "bm25", "k": 3},
                                              {"name": "dense", "kind": "bi-encoder", "model": str(tiny_model), "k": 3}]})
    members = ens.load_first_stage(c, ds, use_cache=False, show_progress=False)
    q = next(iter(ds.queries))
    retrieved, scores = ens.first_stage_scores(members, {q: ds.queries[q]})
    union = set(retrieved["bm25"][q]) | set(retrieved["dense"][q])
    assert set(scores["bm25"][q]) == union == set(scores["dense"][q])  # no missing values
    # a document outside BM25's own top-3 still gets its true BM25 score
    bm25_all = members[0].retriever.score_pairs({q: ds.queries[q]}, {q: sorted(union)})[q]
    assert scores["bm25"][q] == pytest.approx(bm25_all)

    def z(xs):
        mean = sum(xs.values()) / len(xs)
        std = math.sqrt(sum((v - mean) ** 2 for v in xs.values()) / len(xs))
        return {d: (v - mean) / std if std else 0.0 for d, v in xs.items()}

    fused = ens._fuse(c, scores, {"bm25": 0.25, "dense": 2.0})[q]
    zb, zd = z(scores["bm25"][q]), z(scores["dense"][q])
    assert fused == pytest.approx({d: 0.25 * zb[d] + 2.0 * zd[d] for d in union})


def test_rerank_fuse_by_hand():
    c = cfg(rerank_depth=2, norm="minmax")
    first = {"q": {"a": 3.0, "b": 2.0, "c": 1.0}}
    ce = {"ce": {"q": {"a": 0.0, "b": 10.0}}}
    # depth 2: a, b. minmax(first) a 1, b 0; minmax(ce) a 0, b 1; w_ce = 2 → a 1, b 2 → b above a, c last
    out = ens.rerank_fuse(c, first, ce, {"ce": 2.0})["q"]
    assert list(out) == ["b", "a", "c"]
    assert out["b"] - out["a"] == pytest.approx(1.0)
    out0 = ens.rerank_fuse(c, first, ce, {"ce": 0.0})["q"]  # weight 0: the first stage's order
    assert list(out0) == ["a", "b", "c"]


def test_grid_search_prefers_the_informative_member():
    qrels = {f"q{i}": {"good": 1} for i in range(4)}
    good = {q: {"good": 2.0, "x": 1.0, "y": 0.0} for q in qrels}
    bad = {q: {"good": 0.0, "x": 1.0, "y": 2.0} for q in qrels}
    c = cfg(grid=[0, 1, 2])
    w, value, trials = ens.grid_search_first_stage(c, {"good": good, "bad": bad}, qrels)
    assert w == {"good": 1.0, "bad": 0.0} and value == pytest.approx(1.0) and len(trials) == 3


def _tiny_config(model, **kw):
    return EnsembleConfig.from_dict({"members": [{"name": "bm25", "kind": "bm25", "k": 10},
                                                 {"name": "dense", "kind": "bi-encoder", "model": str(model), "k": 10}],
                                     "fit": "dev", "dev_queries": 2, "grid": [0, 0.5, 1, 2], **kw})


def test_weights_are_fitted_on_train_dev_slice_only(tiny_beir, tiny_model, monkeypatch):
    test, train = load_beir(tiny_beir, "test"), load_beir(tiny_beir, "train")
    seen: list[set] = []
    real = ens.grid_search_first_stage

    def spy(config, scores, qrels):
        seen.append(set(qrels))
        for run in scores.values():
            seen.append(set(run))
        return real(config, scores, qrels)

    monkeypatch.setattr(ens, "grid_search_first_stage", spy)
    result = evaluate_ensemble(_tiny_config(tiny_model), test, fit_dataset=train, use_cache=False, show_progress=False)
    dev_ids = set(carve_dev_slice(train, 2, 0)[1].qrels)
    assert seen and all(s == dev_ids for s in seen)
    assert not dev_ids & set(test.qrels)
    fit = result["ensemble"]["weights_document"]["fit"]
    assert fit["split"] == "train" and fit["dev_queries"] == 2
    assert result["mode"] == "ensemble" and 0.0 <= result["metrics"]["ndcg_at_10"] <= 1.0
    w = result["ensemble"]["weights_document"]["weights"]
    assert set(w) == {"bm25", "dense"} and sum(w.values()) == pytest.approx(1.0)


def test_fitting_on_test_is_refused(tiny_beir, tiny_model):
    test = load_beir(tiny_beir, "test")
    with pytest.raises(EmbedKDError, match="never fitted on a test split"):
        fit_weights(_tiny_config(tiny_model), test, use_cache=False, show_progress=False)
    with pytest.raises(EmbedKDError, match="never fitted on a test split"):
        evaluate_ensemble(_tiny_config(tiny_model), test, fit_dataset=test, use_cache=False, show_progress=False)


def test_eval_cli_ensemble_writes_weights(tiny_beir, tiny_model, tmp_path):
    from click.testing import CliRunner

    from embed_kd.cli import main

    conf = tmp_path / "e.yaml"
    conf.write_text(f"members:\n  - {{kind: bm25, k: 10}}\n  - {{name: dense, kind: bi-encoder, model: '{tiny_model}', k: 10}}\n"
                    "fit: dev\ndev_queries: 2\ngrid: [0, 1]\n")
    out, weights = tmp_path / "r.json", tmp_path / "w.json"
    args = ["eval", "--data", str(tiny_beir), "--ensemble", str(conf), "-o", str(out), "--save-weights", str(weights),
            "--no-cache", "--no-progress", "-q"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    import json

    doc = json.loads(weights.read_text())
    assert doc["schema"] == "embed-kd/ensemble-weights@1" and doc["fit"]["split"] == "train"
    assert json.loads(out.read_text())["mode"] == "ensemble"
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "already exists" in again.output
    both = CliRunner().invoke(main, ["eval", "--data", str(tiny_beir), "--ensemble", str(conf), "--model", "bm25"])
    assert both.exit_code == 2 and "--ensemble replaces" in both.output


def test_first_stage_member_dense_scores_any_doc(tiny_beir, tiny_model):
    ds = load_beir(tiny_beir, "test")
    m = FirstStageMember(ens.MemberSpec("dense", "bi-encoder", str(tiny_model), k=2), ds, use_cache=False,
                         show_progress=False)
    q = next(iter(ds.queries))
    top = m.retrieve({q: ds.queries[q]})[q]
    every = m.score({q: ds.queries[q]}, {q: list(ds.corpus)})[q]
    assert len(every) == len(ds.corpus)
    for d, s in top.items():  # FAISS inner product = the dot product used for any doc
        assert every[d] == pytest.approx(s, abs=1e-5)
    assert max(every.values()) == pytest.approx(max(top.values()), abs=1e-5)


def test_cross_encoder_member_weight_fitted_on_dev_only(tiny_beir, tiny_model, tmp_path, monkeypatch):
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    hf = tiny_model.parent / f"{tiny_model.name}-hf"
    tok = BertTokenizerFast.from_pretrained(str(hf))
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                                             num_labels=1)).save_pretrained(tmp_path / "ce")
    tok.save_pretrained(tmp_path / "ce")
    c = EnsembleConfig.from_dict({"members": [{"name": "bm25", "kind": "bm25", "k": 10},
                                              {"name": "dense", "kind": "bi-encoder", "model": str(tiny_model), "k": 10},
                                              {"name": "ce", "kind": "cross-encoder", "model": str(tmp_path / "ce")}],
                                  "fit": "dev", "dev_queries": 2, "grid": [0, 1], "rerank_depth": 3})
    test, train = load_beir(tiny_beir, "test"), load_beir(tiny_beir, "train")
    seen = []
    real = ens.grid_search_rerank

    def spy(config, first, ce_scores, qrels):
        seen.append((set(qrels), set(first), {q for run in ce_scores.values() for q in run}))
        return real(config, first, ce_scores, qrels)

    monkeypatch.setattr(ens, "grid_search_rerank", spy)
    result = evaluate_ensemble(c, test, fit_dataset=train, use_cache=False, show_progress=False)
    dev_ids = set(carve_dev_slice(train, 2, 0)[1].qrels)
    assert seen == [(dev_ids, dev_ids, dev_ids)]
    wd = result["ensemble"]["weights_document"]
    assert set(wd["rerank_weights"]) == {"ce"} and wd["rerank_weights"]["ce"] in (0.0, 1.0)
    assert "first_stage" in result["ensemble"]["member_metrics"]
    # every test query: the re-ranked head (3 docs) sits above the rest
    run = ens.ensemble_run(c, test, {"bm25": 1, "dense": 1, "ce": 1},
                           ens.load_first_stage(c, test, use_cache=False, show_progress=False),
                           show_progress=False)[0]
    assert all(len(docs) >= 3 for docs in run.values())
