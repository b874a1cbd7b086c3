"""Model cards (README.md from the manifest) and ``embed-kd publish`` (dry run, offline error, checks)."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from embed_kd.cards import BEGIN, END, find_manifest, write_model_card
from embed_kd.cli import main
from embed_kd.errors import ArtifactError
from embed_kd.models import fingerprint_model, load_sentence_transformer


def _student_manifest(model_dir, teacher_dir) -> dict:
    """A run manifest as `embed-kd train` writes it (schema embed-kd/train-run@1, documented fields)."""
    from embed_kd.evaluation.retrieval_eval import model_info

    student = load_sentence_transformer(model_dir)
    teacher = load_sentence_transformer(teacher_dir)
    return {
        "schema": "embed-kd/train-run@1", "created": "2026-11-23T20:00:00Z",
        "config": {"teacher": str(teacher_dir),
                   "losses": {"score": "margin_mse", "score_documents": "teacher", "score_weight": 1.0,
                              "score_scale": 0.1, "kl_temperature": 0.05, "align": "cosine", "align_weight": 0.5}},
        "config_file": "configs/tiny.yaml", "overrides": ["train.max_steps=4"],
        "dataset": {"name": "tiny", "path": "/data/tiny", "split": "train", "corpus_fingerprint": "c0ffee00c0ffee00",
                    "queries_fingerprint": "q1", "qrels_fingerprint": "r2", "n_queries": 6, "train_queries": 4,
                    "dev_queries": ["q-a", "q-b"], "notes": []},
        "scores": {"path": "/runs/scores", "config_fingerprint": "s3", "teachers": [{"name": "ce", "kind": "cross-encoder"}],
                   "ensemble": None, "split": "train"},
        "teacher": model_info(teacher),
        "student": {"init": "layers [0] of the teacher", "init_fingerprint": "i4", "fingerprint": fingerprint_model(student),
                    "dim": 32, "max_seq_length": 32, "layers": 2, "params": 12345},
        "examples": {"score": None, "align": None},
        "training": {"global_step": 4, "epochs": 1.0, "train_time_s": 3.2, "stopped_by_time_budget": False,
                     "log_history": []},
        "averaging": {"enabled": True, "checkpoints": ["checkpoint-2", "checkpoint-4"], "applied": True},
        "dev": {"metrics_final": {"dev_ndcg@10": 0.5}},
        "versions": {"embed_kd": "0.1.0"}, "git": {"commit": "abc123", "dirty": False},
    }


@pytest.fixture()
def student_dir(tmp_path, tiny_model, tiny_model_b):
    d = tmp_path / "student"
    shutil.copytree(tiny_model_b, d)
    (d / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    (d / "checkpoints" / "checkpoint-4" / "model.safetensors").write_bytes(b"x" * 10)
    manifest = _student_manifest(d, tiny_model)
    (d / "embed_kd_train.json").write_text(json.dumps(manifest))
    return d


def _eval_result(tiny_beir, student_dir, teacher_dir, tmp_path) -> dict:
    out = tmp_path / "asym.json"
    r = CliRunner().invoke(main, ["eval", "-q", "--no-progress", "--no-cache", "--data", str(tiny_beir),
                                  "--query-model", str(student_dir), "--doc-model", str(teacher_dir), "-o", str(out)])
    assert r.exit_code == 0, r.output
    return json.loads(out.read_text())


def test_card_has_recipe_eval_and_usage(student_dir, tiny_model, tiny_beir, tmp_path):
    result = _eval_result(tiny_beir, student_dir, tiny_model, tmp_path)
    card = write_model_card(student_dir, eval_results=[result]).read_text()
    manifest = json.loads((student_dir / "embed_kd_train.json").read_text())
    assert manifest["student"]["fingerprint"] in card and manifest["teacher"]["fingerprint"] in card
    assert "| score | `margin_mse` | 1.0 |" in card and "| align | `cosine` | 0.5 |" in card
    assert "c0ffee00c0ffee00" in card and "4 training queries" in card and "2 held out" in card
    assert f"{result['metrics']['ndcg_at_10']:.4f}" in card  # the eval number, as measured
    assert "asymmetric (docs: " in card
    assert 'SentenceTransformer("student")' in card and "encode_document" in card  # symmetric + asymmetric usage
    assert "checkpoint-2, checkpoint-4" in card and "abc123" in card


def test_card_section_is_replaced_not_duplicated(student_dir):
    (student_dir / "README.md").write_text("---\nlibrary_name: sentence-transformers\n---\n# ST card\nkeep me\n")
    write_model_card(student_dir)
    write_model_card(student_dir, name="me/student")
    text = (student_dir / "README.md").read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    assert "keep me" in text and 'SentenceTransformer("me/student")' in text


def test_card_without_existing_readme_gets_front_matter(student_dir):
    (student_dir / "README.md").unlink(missing_ok=True)
    text = write_model_card(student_dir).read_text()
    assert text.startswith("---\nlibrary_name: sentence-transformers\n") and "embed-kd" in text


def test_teacher_card(tmp_path):
    d = tmp_path / "ce"
    d.mkdir()
    (d / "embed_kd_teacher.json").write_text(json.dumps({
        "schema": "embed-kd/cross-encoder-teacher@1", "base": "minilm-l6", "base_fingerprint": "b0",
        "model_fingerprint": "m1", "config": {"loss": "listnet", "targets": "ensemble+labels", "negatives": 7,
                                              "neg_depth": 30, "dense_model": "minilm-l6"},
        "dataset": {"name": "scifact", "split": "train", "n_train_queries": 759, "n_dev_queries": 50,
                    "corpus_fingerprint": "cf"},
        "dev": {"before": {"dev_ndcg@10": 0.61}, "after": {"dev_ndcg@10": 0.7}}}))
    text = write_model_card(d).read_text()
    assert "CrossEncoder(\"ce\")" in text and "0.6100 before → 0.7000 after" in text and "listnet" in text


def test_missing_or_wrong_manifest_is_a_clear_error(tmp_path, tiny_model):
    with pytest.raises(ArtifactError, match="no embed-kd manifest"):
        find_manifest(tiny_model)
    d = tmp_path / "m"
    d.mkdir()
    (d / "embed_kd_train.json").write_text(json.dumps({"schema": "something/else"}))
    with pytest.raises(ArtifactError, match="expected schema"):
        find_manifest(d)


def _publish(*args):
    return CliRunner().invoke(main, ["publish", *map(str, args)])


def test_publish_dry_run_lists_files_without_checkpoints(student_dir, tiny_model, tiny_beir, tmp_path):
    res_path = tmp_path / "asym.json"
    _eval_result(tiny_beir, student_dir, tiny_model, tmp_path)
    r = _publish(student_dir, "--repo-id", "me/tiny-student", "--eval", res_path, "--dry-run")
    assert r.exit_code == 0, r.output
    assert "dry run: nothing uploaded" in r.output and "me/tiny-student" in r.output
    assert "model.safetensors" in r.output and "embed_kd_train.json" in r.output and "README.md" in r.output
    assert "checkpoints/" not in r.output
    assert 'SentenceTransformer("me/tiny-student")' in (student_dir / "README.md").read_text()
    r2 = _publish(student_dir, "--repo-id", "me/tiny-student", "--dry-run", "--include-checkpoints")
    assert "checkpoints/checkpoint-4/model.safetensors" in r2.output


def test_publish_offline_is_a_clear_error(student_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = _publish(student_dir, "--repo-id", "me/tiny-student")
    assert r.exit_code == 2 and "not reachable" in r.output and "nothing was" in r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize("repo_id, message", [("no-owner", "OWNER/NAME"), ("bad//id", "not a valid hub repo id")])
def test_publish_bad_repo_id(student_dir, repo_id, message):
    r = _publish(student_dir, "--repo-id", repo_id, "--dry-run")
    assert r.exit_code == 2 and message in r.output


def test_publish_refuses_changed_weights(student_dir, tiny_model):
    manifest = json.loads((student_dir / "embed_kd_train.json").read_text())
    manifest["student"]["fingerprint"] = "0000000000000000"
    (student_dir / "embed_kd_train.json").write_text(json.dumps(manifest))
    r = _publish(student_dir, "--repo-id", "me/tiny-student", "--dry-run")
    assert r.exit_code == 2 and "records model fingerprint" in r.output


def test_publish_folder_without_manifest(tiny_model):
    r = _publish(tiny_model, "--repo-id", "me/x", "--dry-run")
    assert r.exit_code == 2 and "no embed-kd manifest" in r.output


def test_publish_dry_run_cross_encoder_teacher(tmp_path, tiny_model):
    """A train-teacher style folder: CrossEncoder weights + embed_kd_teacher.json with their fingerprint."""
    from sentence_transformers import CrossEncoder
    from transformers import BertConfig, BertForSequenceClassification

    from embed_kd.models import load_cross_encoder

    raw = tmp_path / "ce-hf"
    BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                             intermediate_size=32, max_position_embeddings=64, num_labels=1)
                                  ).save_pretrained(raw)
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        if (tiny_model / f).exists():
            shutil.copy(tiny_model / f, raw / f)
    d = tmp_path / "ce"
    CrossEncoder(str(raw), device="cpu").save_pretrained(str(d))
    fp = fingerprint_model(load_cross_encoder(d))
    (d / "embed_kd_teacher.json").write_text(json.dumps({
        "schema": "embed-kd/cross-encoder-teacher@1", "base": "minilm-l6", "base_fingerprint": "b0",
        "model_fingerprint": fp, "config": {"loss": "bce"}, "dataset": {"name": "tiny", "split": "train"},
        "dev": {}}))
    r = _publish(d, "--repo-id", "me/tiny-ce", "--dry-run")
    assert r.exit_code == 0, r.output
    assert f"cross-encoder teacher {d} (fingerprint {fp}" in r.output and "dry run: nothing uploaded" in r.output
    assert 'CrossEncoder("me/tiny-ce")' in (d / "README.md").read_text()
