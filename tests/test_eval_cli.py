"""``embed-kd eval`` end to end through the CLI, on tiny config-built models and a tiny corpus."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from embed_kd.cli import main


def _eval(args, cache_dir):
    return CliRunner().invoke(main, ["eval", "--no-progress", "-q", "--cache-dir", str(cache_dir), *args])


def test_symmetric_writes_json_and_table(tiny_beir, tiny_model, cache_dir, tmp_path):
    out = tmp_path / "r.json"
    res = _eval(["--data", str(tiny_beir), "--model", str(tiny_model), "-o", str(out)], cache_dir)
    assert res.exit_code == 0, res.output
    assert "| symmetric |" in res.stdout and "nDCG@10" in res.stdout
    r = json.loads(out.read_text())
    assert r["schema"] == "embed-kd/eval@1" and r["mode"] == "symmetric"
    assert set(r["metrics"]) == {"ndcg_at_10", "recall_at_100", "mrr_at_10"}
    assert 0.0 <= r["metrics"]["ndcg_at_10"] <= 1.0
    assert r["metrics"]["recall_at_100"] == 1.0  # 30 docs < 100: every relevant doc is retrieved
    for k in ("encode_docs_s", "encode_queries_s", "search_s", "total_s"):
        assert r["timings"][k] >= 0
    assert r["cache"]["docs"] == "miss" and r["dataset"]["n_queries"] == 6


def test_quiet_prints_the_result_table_only(tiny_beir, tiny_model, cache_dir, tmp_path):
    """-q: the result table on stdout, no closing summary on stderr (the demo's terminal shows bars and
    its final table only); without -q the summary is there. score-teacher likewise."""
    args = ["eval", "--data", str(tiny_beir), "--model", str(tiny_model), "--cache-dir", str(cache_dir),
            "--no-progress"]
    quiet = CliRunner().invoke(main, [*args, "-q", "-o", str(tmp_path / "q.json")])
    loud = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "l.json")])
    assert quiet.exit_code == 0 and loud.exit_code == 0, quiet.output + loud.output
    assert quiet.stdout.startswith("| mode |") and quiet.stderr == "", quiet.stderr
    assert "doc cache:" in loud.stderr and "| mode |" in loud.stdout
    st = ["score-teacher", "--data", str(tiny_beir), "--split", "train", "--candidates", "bm25:3", "--teacher",
          "bm25", "--cache-dir", str(cache_dir), "--no-progress"]
    quiet = CliRunner().invoke(main, [*st, "-q", "-o", str(tmp_path / "sq")])
    loud = CliRunner().invoke(main, [*st, "-o", str(tmp_path / "sl")])
    assert quiet.exit_code == 0 and loud.exit_code == 0, quiet.output + loud.output
    assert quiet.stderr == "" and "rows, complete=True" in loud.stderr, quiet.stderr


def test_second_asymmetric_eval_hits_doc_cache(tiny_beir, tiny_model, tiny_model_b, cache_dir, tmp_path):
    first = _eval(["--data", str(tiny_beir), "--model", str(tiny_model), "-o", str(tmp_path / "a.json")], cache_dir)
    assert first.exit_code == 0, first.output
    res = _eval(["--data", str(tiny_beir), "--query-model", str(tiny_model_b), "--doc-model", str(tiny_model),
                 "-o", str(tmp_path / "b.json")], cache_dir)
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "b.json").read_text())
    assert r["mode"] == "asymmetric" and r["cache"]["docs"] == "hit"
    assert r["doc_model"]["fingerprint"] != r["query_model"]["fingerprint"]


def test_asymmetric_same_model_equals_symmetric(tiny_beir, tiny_model, cache_dir, tmp_path):
    _eval(["--data", str(tiny_beir), "--model", str(tiny_model), "-o", str(tmp_path / "s.json")], cache_dir)
    _eval(["--data", str(tiny_beir), "--query-model", str(tiny_model), "--doc-model", str(tiny_model),
           "-o", str(tmp_path / "a.json")], cache_dir)
    s, a = (json.loads((tmp_path / f).read_text()) for f in ("s.json", "a.json"))
    assert s["metrics"] == a["metrics"]


def test_dimension_mismatch_is_a_clear_error(tiny_beir, tiny_model, tiny_model_wide, cache_dir, tmp_path):
    out = tmp_path / "x.json"
    res = _eval(["--data", str(tiny_beir), "--query-model", str(tiny_model), "--doc-model", str(tiny_model_wide),
                 "-o", str(out)], cache_dir)
    assert res.exit_code == 2
    assert "makes 32-dim vectors" in res.stderr and "48-dim" in res.stderr
    assert not out.exists()


def test_refuses_to_overwrite(tiny_beir, tiny_model, cache_dir, tmp_path):
    """A file that is not an embed-kd eval result is never replaced; an earlier result is, with --overwrite."""
    out = tmp_path / "r.json"
    out.write_text("precious")
    for extra in ([], ["--overwrite"]):
        res = _eval(["--data", str(tiny_beir), "--model", str(tiny_model), "-o", str(out), *extra], cache_dir)
        assert res.exit_code == 2 and "not written by embed-kd as an eval result" in res.stderr, res.stderr
        assert out.read_text() == "precious"
    out.unlink()
    assert _eval(["--data", str(tiny_beir), "--model", str(tiny_model), "-o", str(out)], cache_dir).exit_code == 0
    res = _eval(["--data", str(tiny_beir), "--model", str(tiny_model), "-o", str(out)], cache_dir)
    assert res.exit_code == 2 and "refusing to overwrite" in res.stderr
    res = _eval(["--data", str(tiny_beir), "--model", str(tiny_model), "-o", str(out), "--overwrite"], cache_dir)
    assert res.exit_code == 0 and json.loads(out.read_text())["mode"] == "symmetric"


@pytest.mark.parametrize("index", ["hnsw", "ivfpq"])
def test_approximate_indexes_run(tiny_beir, tiny_model, cache_dir, tmp_path, index):
    out = tmp_path / f"{index}.json"
    res = _eval(["--data", str(tiny_beir), "--model", str(tiny_model), "--index", index, "-o", str(out)], cache_dir)
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["index"]["kind"] == index


def test_bm25_mode(tiny_beir, cache_dir):
    res = _eval(["--data", str(tiny_beir), "--model", "bm25"], cache_dir)
    assert res.exit_code == 0 and "| bm25 |" in res.stdout


def test_user_errors_exit_2_without_traceback(tiny_beir, tmp_path):
    """A real subprocess: the user sees one line, no traceback."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\n{oops\n')
    (bad / "queries.jsonl").write_text('{"_id": "q1", "text": "x"}\n')
    (bad / "qrels").mkdir()
    (bad / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    cases = [
        (["--data", str(bad), "--model", "minilm-l6"], "corpus.jsonl:2: malformed JSON"),
        (["--data", str(tiny_beir), "--model", "no-such-model"], "not a preset"),
        (["--data", str(tiny_beir), "--model", "m", "--doc-model", "m"], "not both"),
        (["--data", str(tiny_beir), "--split", "dev", "--model", "bm25"], "split 'dev' not found"),
    ]
    for args, message in cases:
        proc = subprocess.run([sys.executable, "-m", "embed_kd", "eval", *args], capture_output=True, text=True,
                              env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr
        assert "Traceback" not in proc.stderr
