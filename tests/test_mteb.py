"""``eval --mteb``: MTEB's own search and scoring on a local BEIR task agree with ``embed-kd eval``."""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

pytest.importorskip("mteb")

from embed_kd.cli import main  # noqa: E402
from embed_kd.data import load_beir  # noqa: E402
from embed_kd.evaluation.mteb_eval import resolve_tasks, run_mteb  # noqa: E402
from embed_kd.evaluation.retrieval_eval import EvalOptions, evaluate_dense  # noqa: E402
from embed_kd.models import load_sentence_transformer  # noqa: E402

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from conftest import build_tiny_bi_encoder  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("mteb-models")
    a = build_tiny_bi_encoder(root / "teacher", seed=0)
    b = build_tiny_bi_encoder(root / "student", seed=1)
    return a, b


def _ours(dataset, q, d=None):
    return evaluate_dense(dataset, q, d, options=EvalOptions(use_cache=False, show_progress=False))["metrics"]


def test_tiny_models_rank_with_signal(tiny_beir, models):
    """Guard: the test models must not tie every document (else equality below would be vacuous)."""
    ds = load_beir(tiny_beir, "test")
    m = load_sentence_transformer(models[0])
    run = evaluate_dense(ds, m, options=EvalOptions(use_cache=False, show_progress=False))["run"]
    scores = [s for docs in run.values() for s in docs.values()]
    assert len(set(round(s, 6) for s in scores)) > len(scores) // 2


@pytest.mark.parametrize("asymmetric", [False, True], ids=["symmetric", "asymmetric"])
def test_mteb_local_retrieval_equals_embed_kd_eval(tiny_beir, models, asymmetric):
    teacher, student = (load_sentence_transformer(p) for p in models)
    ds = load_beir(tiny_beir, "test", name="tiny")
    tasks = resolve_tasks([f"beir:{tiny_beir}"], online=False)
    if asymmetric:
        res, ours = run_mteb(tasks, student, teacher, show_progress=False, use_cache=False), _ours(ds, student, teacher)
    else:
        res, ours = run_mteb(tasks, teacher, show_progress=False, use_cache=False), _ours(ds, teacher)
    assert res["schema"] == "embed-kd/mteb@1"
    assert res["mode"] == ("asymmetric" if asymmetric else "symmetric")
    task = res["tasks"][0]
    assert task["source"] == "local" and task["dataset"]["n_queries"] == len(ds.qrels)
    # mteb rounds its scores to 5 decimals
    assert res["metrics"]["ndcg_at_10"] == pytest.approx(ours["ndcg_at_10"], abs=1e-5)
    assert res["metrics"]["recall_at_100"] == pytest.approx(ours["recall_at_100"], abs=1e-5)
    assert task["main_score"] == res["metrics"]["ndcg_at_10"]
    # the routing is real: query texts went to one side, documents to the other
    assert res["throughput"]["queries_per_s"] > 0 and res["throughput"]["docs_per_s"] > 0


def test_asymmetric_differs_from_symmetric_student(tiny_beir, models):
    """Documents by the teacher change the result (the wrapper does not silently use one model)."""
    teacher, student = (load_sentence_transformer(p) for p in models)
    tasks = resolve_tasks([f"beir:{tiny_beir}"], online=False)
    asym = run_mteb(tasks, student, teacher, show_progress=False, use_cache=False)["metrics"]["ndcg_at_10"]
    sym = run_mteb(resolve_tasks([f"beir:{tiny_beir}"], online=False), student, show_progress=False, use_cache=False)
    assert asym != sym["metrics"]["ndcg_at_10"]


def test_hub_task_offline_uses_local_data_with_its_metadata(tiny_beir, models):
    """A hub retrieval task given --data keeps MTEB's task metadata and swaps in the local data."""
    tasks = resolve_tasks(["SciFact"], data=str(tiny_beir), online=False, limit_queries=3)
    assert tasks[0].task.metadata.name == "SciFact" and tasks[0].source == "local"
    m = load_sentence_transformer(models[0])
    res = run_mteb(tasks, m, show_progress=False, use_cache=False)
    ds = load_beir(tiny_beir, "test", name="tiny").sliced(3)
    assert res["tasks"][0]["dataset"]["n_queries"] == 3
    assert res["metrics"]["ndcg_at_10"] == pytest.approx(_ours(ds, m)["ndcg_at_10"], abs=1e-5)


def test_cli_mteb_writes_json_and_table(tiny_beir, models, tmp_path):
    out = tmp_path / "mteb.json"
    args = ["eval", "--no-progress", "-q", "--mteb", f"beir:{tiny_beir}", "--query-model", str(models[1]),
            "--doc-model", str(models[0]), "-o", str(out), "--cache-dir", str(tmp_path / "cache")]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "| beir:tiny | local | test |" in r.output
    saved = json.loads(out.read_text())
    ds = load_beir(tiny_beir, "test")
    ours = _ours(ds, load_sentence_transformer(models[1]), load_sentence_transformer(models[0]))
    assert saved["metrics"]["ndcg_at_10"] == pytest.approx(ours["ndcg_at_10"], abs=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "mteb.json"]  # no mteb output folders
    assert saved["cache"]["docs"] == ["miss"]
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "already exists" in again.output


@pytest.mark.parametrize("args, message", [
    (["--mteb", "NoSuchTask"], "unknown MTEB task"),
    (["--mteb", "SciFact,,NFCorpus"], "empty task name"),
    (["--mteb", "STS12"], "needs its hub dataset"),
])
def test_cli_mteb_errors(tiny_beir, models, monkeypatch, args, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = CliRunner().invoke(main, ["eval", "-q", "--no-cache", "--model", str(models[0]), *args])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output


def test_teacher_documents_come_from_the_eval_cache(tiny_beir, models, tmp_path):
    """`embed-kd eval` caches the teacher's document embeddings; the MTEB run reuses them (same key)
    and still scores exactly like mteb encoding them itself."""
    teacher, student = (load_sentence_transformer(p) for p in models)
    ds = load_beir(tiny_beir, "test", name="tiny")
    ours = evaluate_dense(ds, student, teacher, options=EvalOptions(cache_dir=tmp_path, show_progress=False))
    assert ours["cache"]["docs"] == "miss"
    tasks = resolve_tasks([f"beir:{tiny_beir}"], online=False)
    cached = run_mteb(tasks, student, teacher, show_progress=False, cache_dir=tmp_path)
    assert cached["cache"]["docs"] == ["hit"] and cached["throughput"]["docs_per_s"] is None
    plain = run_mteb(resolve_tasks([f"beir:{tiny_beir}"], online=False), student, teacher, show_progress=False,
                     use_cache=False)
    assert plain["cache"]["docs"] == "off"
    assert cached["metrics"] == plain["metrics"]
    assert cached["metrics"]["ndcg_at_10"] == pytest.approx(ours["metrics"]["ndcg_at_10"], abs=1e-5)


def test_cli_without_data_or_mteb_is_an_error(models):
    r = CliRunner().invoke(main, ["eval", "-q", "--model", str(models[0])])
    assert r.exit_code == 2 and "--data is required" in r.output


@pytest.mark.integration
def test_scifact_slice_minilm_mteb_equals_eval(scifact_dir):
    """The real MiniLM on a SciFact slice: MTEB's SciFact task (local data) = embed-kd eval."""
    ds = load_beir(scifact_dir, "test", name="scifact").sliced(20, 200)
    m = load_sentence_transformer("minilm-l6")
    tasks = resolve_tasks(["SciFact"], data=str(scifact_dir), online=False, limit_queries=20, limit_docs=200)
    res = run_mteb(tasks, m, show_progress=False, use_cache=False)
    assert res["metrics"]["ndcg_at_10"] == pytest.approx(_ours(ds, m)["ndcg_at_10"], abs=1e-5)
