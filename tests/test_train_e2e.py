"""End-to-end `embed-kd train` on the tiny corpus with config-built models and a tiny score store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from embed_kd.cli import main


def write_tiny_store(beir_dir: Path, teacher_dir: Path, out: Path, split: str = "train") -> Path:
    """Score every (train query, doc) pair with the tiny bi-encoder + a lexical teacher, as an ensemble store."""
    import numpy as np

    from embed_kd.data import load_beir
    from embed_kd.data.fingerprint import fingerprint_corpus, fingerprint_qrels, fingerprint_queries
    from embed_kd.models import load_sentence_transformer
    from embed_kd.teachers.fusion import normalize_scores
    from embed_kd.teachers.store import new_manifest, write_store

    ds = load_beir(beir_dir, split)
    model = load_sentence_transformer(str(teacher_dir))
    doc_ids = list(ds.corpus)
    d_emb = model.encode([ds.doc_text(d) for d in doc_ids], normalize_embeddings=True)
    cols = {k: [] for k in ("query_id", "doc_id", "label", "score", "score__dense", "score__lex", "rank__all")}
    for qid, qtext in ds.queries.items():
        q = model.encode([qtext], normalize_embeddings=True)[0]
        dense = (d_emb @ q).tolist()
        words = set(qtext.lower().split())
        lex = [float(len(words & set(ds.doc_text(d).lower().split()))) for d in doc_ids]
        ens = [a + b for a, b in zip(normalize_scores(dense, "zscore"), normalize_scores(lex, "zscore"))]
        for i, d in enumerate(doc_ids):
            cols["query_id"].append(qid)
            cols["doc_id"].append(d)
            cols["label"].append(int(ds.qrels[qid].get(d, 0)))
            cols["score"].append(ens[i])
            cols["score__dense"].append(dense[i])
            cols["score__lex"].append(lex[i])
            cols["rank__all"].append(i + 1)
    manifest = new_manifest(
        dataset={"name": "tiny", "split": split, "corpus_fingerprint": fingerprint_corpus(ds.corpus),
                 "queries_fingerprint": fingerprint_queries(ds.queries), "qrels_fingerprint": fingerprint_qrels(ds.qrels),
                 "n_queries": len(ds.queries)},
        candidates=[{"source": "all", "name": "all", "k": len(doc_ids)}],
        teachers=[{"name": "dense", "spec": str(teacher_dir), "kind": "bi-encoder", "fingerprint": "x",
                   "activation": None, "max_length": 32, "backend": "torch"},
                  {"name": "lex", "spec": "overlap", "kind": "bm25", "fingerprint": "y", "activation": None,
                   "max_length": None, "backend": "python"}],
        ensemble={"norm": "zscore", "weights": {"dense": 1.0, "lex": 1.0}})
    import pyarrow as pa

    from embed_kd.teachers.store import arrow_schema

    table = pa.table(cols, schema=arrow_schema(["dense", "lex"], ["all"]))
    write_store(out, manifest, table)
    assert np.isfinite(cols["score"]).all()
    return out


@pytest.fixture(scope="module")
def tiny_store(tiny_beir, tiny_model, tmp_path_factory) -> Path:
    return write_tiny_store(tiny_beir, tiny_model, tmp_path_factory.mktemp("scores") / "tiny-train")


def _config(tmp_path: Path, tiny_beir: Path, tiny_model: Path, tiny_store: Path, **extra) -> Path:
    import yaml

    cfg = {
        "data": str(tiny_beir), "scores": str(tiny_store), "teacher": str(tiny_model),
        "output": str(tmp_path / "student"),
        "student": {"from_teacher": True, "keep_layers": [1]},
        "examples": {"negatives": 3, "rounds": 2, "dev_queries": 2, "min_candidates": 4},
        "train": {"epochs": 2, "batch_size": 4, "lr": 1e-3, "save_steps": 2, "eval_steps": 2, "logging_steps": 1},
        "average": {"enabled": True, "last": 2},
    }
    for k, v in extra.items():
        cfg[k].update(v) if isinstance(v, dict) else cfg.__setitem__(k, v)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_cli_end_to_end(tmp_path, tiny_beir, tiny_model, tiny_store, cache_dir):
    from sentence_transformers import SentenceTransformer

    cfg = _config(tmp_path, tiny_beir, tiny_model, tiny_store)
    r = CliRunner().invoke(main, ["train", str(cfg), "--cache-dir", str(cache_dir), "--no-progress", "-q",
                                  "--set", "train.seed=3"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "student"
    m = json.loads((out / "embed_kd_train.json").read_text())
    assert m["schema"] == "embed-kd/train-run@1"
    assert m["student"]["layers"] == 1 and m["config"]["train"]["seed"] == 3
    assert m["examples"]["score"]["examples"] == 2 * 4  # 6 train queries - 2 dev, 2 rounds
    assert m["examples"]["align"]["train_queries"] == 4
    assert not set(m["dataset"]["dev_queries"]) & {"q-cat-test", "q-dog-test"}  # train split only
    assert m["averaging"]["applied"] and len(m["averaging"]["checkpoints"]) == 2
    losses = [h for h in m["training"]["log_history"] if "loss" in h]
    assert losses and all(h["loss"] == h["loss"] for h in losses)  # not NaN
    assert "dev_ndcg_at_10" in m["dev"]["metrics_final"]
    assert m["git"]["commit"] is None or len(m["git"]["commit"]) == 40
    model = SentenceTransformer(str(out), device="cpu")
    assert model.encode(["cat ?"]).shape == (1, 32)
    asym = SentenceTransformer(str(out / "asym"), device="cpu")  # the Router artifact: student × teacher
    texts = ["cat purr ?", "the sun"]
    assert abs(asym.encode_query(texts) - model.encode(texts)).max() < 1e-6
    assert abs(asym.encode_document(texts) - SentenceTransformer(str(tiny_model), device="cpu").encode(texts)).max() < 1e-6
    assert json.loads((out / "asym" / "embed_kd_asym.json").read_text())["query"]["fingerprint"] == m["student"]["fingerprint"]
    assert (out / "checkpoints").is_dir() and not (tmp_path / "student.work").exists()
    # weights differ from the untrained cut: training happened
    assert m["student"]["fingerprint"] != m["student"]["init_fingerprint"]

    again = CliRunner().invoke(main, ["train", str(cfg), "--cache-dir", str(cache_dir), "--no-progress", "-q"])
    assert again.exit_code == 2 and "already exists" in again.output


def test_train_quiet_keeps_bars_drops_log_dicts(tmp_path, tiny_beir, tiny_model, tiny_store, cache_dir):
    """-q: the trainer's progress bar stays, its per-logging-step dictionaries do not print (they stay in
    the manifest's log_history)."""
    cfg = _config(tmp_path, tiny_beir, tiny_model, tiny_store, average={"enabled": False})
    r = CliRunner().invoke(main, ["train", str(cfg), "--cache-dir", str(cache_dir), "-q", "--set", "train.max_steps=3"])
    assert r.exit_code == 0, r.output
    assert "3/3" in r.output  # the training bar reached its end
    assert "{'loss'" not in r.output and "'grad_norm'" not in r.output, r.output
    m = json.loads((tmp_path / "student" / "embed_kd_train.json").read_text())
    assert [h for h in m["training"]["log_history"] if "loss" in h]


def test_report_shows_ratio_speed_and_what_was_distilled(tmp_path, tiny_beir, tiny_model, tiny_store, cache_dir):
    """The demo's final table: ×teacher and queries/s columns from the evals, and one line per trained
    student saying what it was distilled from (read from its run manifest)."""
    cfg = _config(tmp_path, tiny_beir, tiny_model, tiny_store, average={"enabled": False})
    run = CliRunner().invoke
    assert run(main, ["train", str(cfg), "--cache-dir", str(cache_dir), "--no-progress", "-q",
                      "--set", "train.max_steps=2"]).exit_code == 0
    student = tmp_path / "student"
    teacher_json, student_json = tmp_path / "teacher.json", tmp_path / "student.json"
    for args, out in (([ "--model", tiny_model], teacher_json),
                      (["--query-model", student, "--doc-model", tiny_model], student_json)):
        r = run(main, ["eval", "-q", "--no-progress", "--no-cache", "--data", str(tiny_beir), *map(str, args),
                       "-o", str(out)])
        assert r.exit_code == 0, r.output
    r = run(main, ["report", str(teacher_json), str(student_json)])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert "| ×teacher |" in lines[0] and "| queries/s | ×speed |" in lines[0]
    t, s = (json.loads(p.read_text()) for p in (teacher_json, student_json))
    row = next(ln for ln in lines if ln.startswith("| asymmetric |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[5] == f"{s['metrics']['ndcg_at_10'] / t['metrics']['ndcg_at_10']:.3f}"
    assert cells[8] == f"{s['throughput']['queries_per_s']:.0f}"
    assert cells[9] == f"{s['throughput']['queries_per_s'] / t['throughput']['queries_per_s']:.2f}"
    (line,) = [ln for ln in lines if ln.startswith("distilled: ")]
    assert str(student) in line and "dense + lex zscore ensemble" in line and "2 steps" in line, line
    assert f"embeddings of {tiny_model}" in line and "from teacher layers [1]" in line, line
    # --teacher names the reference explicitly; a non-result is refused cleanly
    r = run(main, ["report", str(student_json), "--teacher", str(teacher_json)])
    assert r.exit_code == 0, r.output
    assert [c.strip() for c in r.output.splitlines()[2].strip("|").split("|")][5] == cells[5]
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    r = run(main, ["report", str(student_json), "--teacher", str(bad)])
    assert r.exit_code == 2 and r.output.startswith("Error: ") and "--teacher" in r.output, r.output


def test_train_alignment_only_without_scores(tmp_path, tiny_beir, tiny_model, tiny_store, cache_dir):
    cfg = _config(tmp_path, tiny_beir, tiny_model, tiny_store, scores=None, average={"enabled": False})
    r = CliRunner().invoke(main, ["train", str(cfg), "--cache-dir", str(cache_dir), "--no-progress", "-q",
                                  "--set", "losses.score=none", "--set", "losses.align=mse", "--set", "train.max_steps=2"])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "student" / "embed_kd_train.json").read_text())
    assert m["examples"]["score"] is None and m["training"]["global_step"] == 2
    assert not m["averaging"]["applied"]


def test_train_refuses_bad_input(tmp_path, tiny_beir, tiny_model, tiny_store, cache_dir):
    cfg = _config(tmp_path, tiny_beir, tiny_model, tiny_store)
    run = CliRunner().invoke
    r = run(main, ["train", str(cfg), "--set", "losses.score=bogus"])
    assert r.exit_code == 2 and "losses.score" in r.output
    r = run(main, ["train", str(cfg), "--set", "train.nope=1"])
    assert r.exit_code == 2 and "unknown key" in r.output
    r = run(main, ["train", str(cfg), "--set", "split=test"])
    assert r.exit_code == 2 and "train queries only" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("student: [1, 2\n")
    r = run(main, ["train", str(bad)])
    assert r.exit_code == 2 and "bad.yaml" in r.output
    r = run(main, ["train", str(cfg), "--cache-dir", str(cache_dir), "--set", "student.keep_layers=[7]"])
    assert r.exit_code == 2 and "out of range" in r.output
