import random

import pytest

from embed_kd.runs import evaluate_run, top_k


def test_hand_computed():
    qrels = {"q1": {"d1": 1, "d2": 2}, "q2": {"d9": 1}}
    run = {"q1": {"d3": 3.0, "d2": 2.0, "d1": 1.0}, "q2": {"d1": 1.0}}
    r = evaluate_run(qrels, run, ndcg_at=[3], recall_at=[1, 3], mrr_at=[10])
    import math

    dcg = (2**2 - 1) / math.log2(3) + (2**1 - 1) / math.log2(4)  # trec_eval gains = relevance level
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    # pytrec_eval's ndcg uses linear gains (rel), not 2^rel - 1
    dcg_lin = 2 / math.log2(3) + 1 / math.log2(4)
    assert r["per_query"]["q1"]["ndcg_at_3"] == pytest.approx(dcg_lin / idcg)
    assert dcg != dcg_lin
    assert r["per_query"]["q1"]["recall_at_1"] == 0.0
    assert r["per_query"]["q1"]["recall_at_3"] == 1.0
    assert r["per_query"]["q1"]["mrr_at_10"] == 0.5
    assert r["per_query"]["q2"]["mrr_at_10"] == 0.0
    assert r["metrics"]["mrr_at_10"] == 0.25


def test_missing_query_counts_zero():
    r = evaluate_run({"q1": {"d1": 1}, "q2": {"d1": 1}}, {"q1": {"d1": 1.0}})
    assert r["metrics"]["ndcg_at_10"] == 0.5 and r["n_queries"] == 2


def test_mrr_cutoff():
    run = {"q": {f"d{i}": 100.0 - i for i in range(20)}}
    assert evaluate_run({"q": {"d10": 1}}, run)["metrics"]["mrr_at_10"] == 0.0
    assert evaluate_run({"q": {"d9": 1}}, run)["metrics"]["mrr_at_10"] == pytest.approx(0.1)


def test_top_k_orders_by_score():
    assert list(top_k({"q": {"a": 1.0, "b": 3.0, "c": 2.0}}, 2)["q"]) == ["b", "c"]


def test_identical_to_beir_evaluate():
    """Our metrics equal BEIR's EvaluateRetrieval.evaluate / evaluate_custom on the same run."""
    beir_eval = pytest.importorskip("beir.retrieval.evaluation")
    rng = random.Random(0)
    docs = [f"d{i}" for i in range(200)]
    qrels = {f"q{i}": {d: rng.choice([1, 1, 2]) for d in rng.sample(docs, rng.randint(1, 4))} for i in range(40)}
    run = {q: {d: rng.random() for d in rng.sample(docs, 150)} for q in qrels}
    ours = evaluate_run(qrels, run)["metrics"]
    ndcg, _map, recall, _p = beir_eval.EvaluateRetrieval.evaluate(qrels, run, [10, 100], ignore_identical_ids=False)
    mrr = beir_eval.EvaluateRetrieval.evaluate_custom(qrels, run, [10], metric="mrr")
    # BEIR rounds to 5 decimals
    assert ours["ndcg_at_10"] == pytest.approx(ndcg["NDCG@10"], abs=5e-6)
    assert ours["recall_at_100"] == pytest.approx(recall["Recall@100"], abs=5e-6)
    assert ours["mrr_at_10"] == pytest.approx(mrr["MRR@10"], abs=5e-6)
