"""``embed-kd report``: the markdown table, the speed table and the quality-vs-speed PNG."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from embed_kd.cli import main
from embed_kd.errors import EmbedKDError
from embed_kd.evaluation.plot import plot_quality_speed, points, speed_table


def _eval(args, out):
    r = CliRunner().invoke(main, ["eval", "-q", "--no-progress", "--no-cache", *map(str, args), "-o", str(out)])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def results(tiny_beir, tiny_model, tiny_model_b, tmp_path_factory):
    d = tmp_path_factory.mktemp("results")
    return {
        "teacher": _eval(["--data", tiny_beir, "--model", tiny_model], d / "teacher.json"),
        "student": _eval(["--data", tiny_beir, "--query-model", tiny_model_b, "--doc-model", tiny_model],
                         d / "student.json"),
        "bm25": _eval(["--data", tiny_beir, "--model", "bm25"], d / "bm25.json"),
    }


def test_points_use_measured_throughput_and_roles(results):
    loaded = [json.loads(p.read_text()) for p in results.values()]
    pts = points(loaded)
    assert [p.role for p in pts] == ["teacher", "cut", "bm25"]  # tiny_model_b has no training run: a cut
    for p, r in zip(pts, loaded):
        assert p.ndcg_at_10 == r["metrics"]["ndcg_at_10"]
        if p.role != "bm25":
            assert p.queries_per_s == r["throughput"]["queries_per_s"]
    table = speed_table(pts)
    assert "| 100.0% |" in table and "1.00×" in table


def test_report_cli_writes_png_and_tables(results, tmp_path):
    png = tmp_path / "speed.png"
    args = ["report", *map(str, results.values()), "--plot", str(png), "--label", f"{results['student']}=my student"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "| mode | query model |" in r.output  # the existing table is kept
    assert "| my student | cut |" in r.output and "| bm25 | bm25 |" in r.output
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    from PIL import Image

    with Image.open(png) as im:
        assert im.size[0] > 600 and im.size[1] > 400
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "already exists" in again.output
    assert CliRunner().invoke(main, [*args, "--overwrite"]).exit_code == 0


def test_report_accepts_mteb_results(tmp_path, results):
    mteb_result = {
        "schema": "embed-kd/mteb@1", "mode": "asymmetric", "query_model": {"spec": "runs/l3"},
        "doc_model": {"spec": "minilm-l6"}, "metrics": {"ndcg_at_10": 0.6, "recall_at_100": 0.9, "mrr_at_10": 0.5},
        "throughput": {"queries_per_s": 50.0},
        "tasks": [{"name": "SciFact", "type": "Retrieval", "source": "local", "main_score_name": "ndcg_at_10",
                   "scores": {"test": [{"hf_subset": "default", "main_score": 0.6, "ndcg_at_10": 0.6,
                                        "recall_at_100": 0.9}]}}]}
    p = tmp_path / "mteb.json"
    p.write_text(json.dumps(mteb_result))
    r = CliRunner().invoke(main, ["report", str(results["teacher"]), str(p), "--plot", str(tmp_path / "x.png")])
    assert r.exit_code == 0, r.output
    assert "| SciFact | local | test |" in r.output and "| l3 | student | 0.6000 |" in r.output


def test_report_errors(tmp_path, results):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "other"}))
    r = CliRunner().invoke(main, ["report", str(bad)])
    assert r.exit_code == 2 and "not an embed-kd eval result" in r.output
    r = CliRunner().invoke(main, ["report", str(results["teacher"]), "--label", "nolabel"])
    assert r.exit_code == 2 and "RESULT=TEXT" in r.output
    with pytest.raises(EmbedKDError, match="nothing to plot"):
        plot_quality_speed(points([json.loads(results["bm25"].read_text())]), tmp_path / "y.png")
    assert not (tmp_path / "y.png").exists()
