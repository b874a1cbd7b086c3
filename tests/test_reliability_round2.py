"""Reliability, round two (issue 21): never destroy what is not ours, never accept the wrong kind of
model, never let a NaN through, isolate one bad request from the others, recovery advice that works.

Each case records its outcome for ``scripts/reliability_report.py`` (category = the class of
failure: ownership, model kind, non-finite, serving isolation, recovery advice, config types, temp
files, usage errors). Models are the tiny config-built ones of ``conftest.py`` (the MiniLM preset
only where its *name* is the input), FAISS and the trainers are real.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from embed_kd.cli import main
from embed_kd.errors import EmbedKDError

sys.path.insert(0, str(Path(__file__).parent))
from conftest import VOCAB  # noqa: E402
from reliability_helpers import Case, cli, kill_when, leftovers, snapshot  # noqa: E402
from test_score_teacher import build_tiny_cross_encoder  # noqa: E402
from test_train_e2e import write_tiny_store  # noqa: E402


def invoke(*args, env=None):
    r = CliRunner(env=env).invoke(main, [str(a) for a in args])
    return r.exit_code, r.stderr if r.stderr_bytes is not None else r.output, r.exception, r


def as_error(fn, *args, **kwargs):
    """A library call as a CLI would report it: ``(exit code, stderr, exception)``."""
    try:
        fn(*args, **kwargs)
    except EmbedKDError as exc:
        return 2, f"Error: {exc}\n", None
    except Exception as exc:  # noqa: BLE001 - recorded as a crash by Case.error
        return 1, repr(exc), exc
    return 0, "", None


def user_folder(path: Path, manifest: str | None = "{}") -> Path:
    """A folder of the user's: notes plus, optionally, a ``manifest.json`` embed-kd did not write."""
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("keep me")
    if manifest is not None:
        (path / "manifest.json").write_text(manifest)
    return path


@pytest.fixture(scope="module")
def bm25_store(tiny_beir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scores") / "bm25-train"
    code, err, _, r = invoke("score-teacher", "run", "--data", tiny_beir, "--split", "train", "--candidates", "bm25:5",
                             "--teacher", "bm25", "--chunk-size", "2", "-o", out, "--no-progress", "-q")
    assert code == 0, r.output
    return out


@pytest.fixture(scope="module")
def dense_store(tiny_beir, tiny_model, tmp_path_factory) -> Path:
    return write_tiny_store(tiny_beir, tiny_model, tmp_path_factory.mktemp("scores") / "tiny-train")


@pytest.fixture(scope="module")
def index_dir(tiny_beir, tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("index") / "idx"
    code, _, _, r = invoke("index", "build", "--data", tiny_beir, "--doc-model", tiny_model, "-o", out,
                           "--no-cache", "--no-progress", "-q")
    assert code == 0, r.output
    return out


@pytest.fixture(scope="module")
def tiny_ce(tmp_path_factory) -> Path:
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("models") / "tiny-ce", VOCAB)


def _score_args(data, out, *extra):
    return ("score-teacher", "run", "--data", data, "--split", "train", "--candidates", "bm25:10", "--teacher", "bm25",
            "--limit", "5", "-o", out, "--no-progress", "-q", *extra)


def _train_args(data, scores, teacher, out, *extra):
    return ("train", "--data", data, "--scores", scores, "--teacher", teacher, "--student-from-teacher",
            "--keep-layers", "0", "-o", out, "--no-progress", "-q", "--set", "train.max_steps=2",
            "--set", "train.batch_size=4", "--set", "examples.dev_queries=0", *extra)


# ------------------------------------------------------------------------------------------- ownership

def test_overwrite_never_deletes_a_users_folder_the_issue_repro(tiny_beir, tmp_path, record_property):
    """mkdir app; echo '{}' >app/manifest.json; echo keep >app/notes.txt; score-teacher run -o app --overwrite"""
    case = Case(record_property, "ownership", "`score-teacher run -o app --overwrite`, app holds a user's "
                                              "manifest.json `{}` and notes.txt (the issue's repro)")
    app = user_folder(tmp_path / "app")
    before = snapshot(app)
    code, err, exc, _ = invoke(*_score_args(tiny_beir, app, "--overwrite"))
    case.error(code, err, ["app", "not written by embed-kd as a teacher-score store", "even with --overwrite"],
               unchanged={app: before}, folders=[tmp_path], exception=exc)


OWNERSHIP_CASES = {
    # id: (description, command builder(fx, target) -> args, target kind, needles)
    "score-onto-index": ("`score-teacher run -o IDX --overwrite` where IDX is an embed-kd index",
                         lambda fx, t: _score_args(fx["beir"], t, "--overwrite"), "index",
                         ["embed-kd/index@1", "teacher-score store"]),
    "index-onto-user": ("`index build -o DIR --overwrite`, DIR a user's folder with files",
                        lambda fx, t: ("index", "build", "--data", fx["beir"], "--doc-model", fx["model"], "-o", t,
                                       "--overwrite", "--no-cache", "--no-progress"), "user",
                        ["not written by embed-kd as an index folder"]),
    "index-onto-store": ("`index build -o STORE --overwrite` where STORE is a score store",
                         lambda fx, t: ("index", "build", "--data", fx["beir"], "--doc-model", fx["model"], "-o", t,
                                        "--overwrite", "--no-cache", "--no-progress"), "store",
                         ["embed-kd/teacher-scores@1", "index folder"]),
    "train-onto-user": ("`train -o DIR --overwrite`, DIR a user's folder (refused before any work)",
                        lambda fx, t: _train_args(fx["beir"], fx["store"], fx["model"], t, "--overwrite"), "user",
                        ["not written by embed-kd as a student"]),
    "train-onto-store": ("`train -o STORE --overwrite` where STORE is the score store it would read",
                         lambda fx, t: _train_args(fx["beir"], fx["store"], fx["model"], t, "--overwrite"), "store",
                         ["embed-kd/teacher-scores@1", "student"]),
    "eval-onto-user-json": ("`eval -o notes.json --overwrite`, notes.json a user's JSON",
                            lambda fx, t: ("eval", "--data", fx["beir"], "--model", "bm25", "-o", t, "--overwrite"),
                            "json", ["not written by embed-kd as an eval result"]),
    "save-run-onto-result": ("`eval --save-run R --overwrite` where R is an eval result (another kind)",
                             lambda fx, t: ("eval", "--data", fx["beir"], "--model", "bm25", "--save-run", t,
                                            "--overwrite"), "result", ["run file"]),
    "export-onto-user": ("`score-teacher export --format hf-scores -o DIR --overwrite`, DIR a user's folder",
                         lambda fx, t: ("score-teacher", "export", fx["store"], "--format", "hf-scores", "-o", t,
                                        "--overwrite"), "user", ["not written by embed-kd as a score-store dataset"]),
    "tsv-onto-user": ("`score-teacher export --format margin-mse-tsv -o notes.txt --overwrite`",
                      lambda fx, t: ("score-teacher", "export", fx["store"], "--format", "margin-mse-tsv", "-o", t,
                                     "--overwrite"), "text", ["margin-MSE triples export"]),
    "merge-onto-user": ("`score-teacher merge SHARD -o DIR --overwrite`, DIR a user's folder",
                        lambda fx, t: ("score-teacher", "merge", fx["store"], "-o", t, "--overwrite"), "user",
                        ["teacher-score store", "even with --overwrite"]),
    "train-teacher-onto-user": ("`train-teacher -o DIR --overwrite`, DIR a user's folder (refused before any work)",
                                lambda fx, t: ("train-teacher", "--data", fx["beir"], "--split", "train", "--base",
                                               fx["model"], "-o", t, "--overwrite", "--no-progress"), "user",
                                ["not written by embed-kd as a cross-encoder teacher"]),
    "report-plot-onto-user": ("`report R --plot photo.png --overwrite`, photo.png not drawn by embed-kd",
                              lambda fx, t: ("report", fx["result"], "--plot", t, "--overwrite"), "png",
                              ["report plot"]),
    "store-onto-file": ("`score-teacher run -o FILE --overwrite` where FILE is a file",
                        lambda fx, t: _score_args(fx["beir"], t, "--overwrite"), "text",
                        ["is a file"]),
    "asym-onto-user": ("`export asym -o DIR --overwrite`, DIR a user's folder (refused before loading the models)",
                       lambda fx, t: ("export", "asym", "--query-model", fx["model"], "--doc-model", fx["model"],
                                      "-o", t, "--overwrite"), "user",
                       ["not written by embed-kd as an asym model", "even with --overwrite"]),
    "save-weights-onto-user-json": ("`eval --ensemble E --save-weights notes.json --overwrite`, notes.json a "
                                    "user's JSON",
                                    lambda fx, t: ("eval", "--data", fx["beir"], "--ensemble", fx["ensemble"],
                                                   "--save-weights", t, "--overwrite", "--no-progress"), "json",
                                    ["not written by embed-kd as an ensemble-weights file", "even with --overwrite"]),
    "mteb-onto-user-json": ("`eval --mteb beir:DATA -o notes.json --overwrite`, notes.json a user's JSON",
                            lambda fx, t: ("eval", "--mteb", f"beir:{fx['beir']}", "--model", fx["model"], "-o", t,
                                           "--overwrite", "--no-progress"), "json",
                            ["not written by embed-kd as a", "MTEB result", "even with --overwrite"]),
    "sts-onto-user-json": ("`eval --sts PAIRS -o notes.json --overwrite`, notes.json a user's JSON",
                           lambda fx, t: ("eval", "--sts", fx["sts"], "--model", fx["model"], "-o", t, "--overwrite",
                                          "--no-progress"), "json",
                           ["not written by embed-kd as a", "STS result", "even with --overwrite"]),
}


@pytest.fixture(scope="module")
def ensemble_config(tmp_path_factory) -> Path:
    """Two BM25 members whose weights are fitted on the train split (what --save-weights writes)."""
    conf = tmp_path_factory.mktemp("ensemble") / "e.yaml"
    conf.write_text("members:\n  - {name: a, kind: bm25, k: 10}\n  - {name: b, kind: bm25, k: 5}\n"
                    "fit: dev\ndev_queries: 2\ngrid: [0, 1]\n")
    return conf


@pytest.fixture(scope="module")
def sts_pairs(tmp_path_factory) -> Path:
    from test_sts import write_sts

    return write_sts(tmp_path_factory.mktemp("sts") / "pairs.csv")


@pytest.fixture(scope="module")
def eval_result(tiny_beir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "bm25.json"
    code, _, _, r = invoke("eval", "--data", tiny_beir, "--model", "bm25", "-o", out)
    assert code == 0, r.output
    return out


@pytest.mark.parametrize("cid", list(OWNERSHIP_CASES))
def test_overwrite_refuses_what_embed_kd_did_not_write_as_that_artifact(cid, tiny_beir, tiny_model, bm25_store,
                                                                        index_dir, eval_result, ensemble_config,
                                                                        sts_pairs, tmp_path, record_property):
    import shutil

    desc, build, kind, needles = OWNERSHIP_CASES[cid]
    case = Case(record_property, "ownership", desc)
    target = tmp_path / {"json": "notes.json", "text": "notes.txt", "png": "photo.png", "result": "r.json"}.get(
        kind, "target")
    if kind == "user":
        user_folder(target, manifest=None)
    elif kind == "index":
        shutil.copytree(index_dir, target)
    elif kind == "store":
        shutil.copytree(bm25_store, target)
    elif kind == "json":
        target.write_text('{"my": "settings"}')
    elif kind == "text":
        target.write_text("my notes\n")
    elif kind == "png":
        target.write_bytes(b"\x89PNG\r\n\x1a\n" + b"holiday")
    elif kind == "result":
        shutil.copy(eval_result, target)
    before = snapshot(target)
    fx = {"beir": tiny_beir, "model": tiny_model, "store": bm25_store, "result": eval_result,
          "ensemble": ensemble_config, "sts": sts_pairs}
    code, err, exc, _ = invoke(*build(fx, target))
    case.error(code, err, needles, unchanged={target: before}, absent=[Path(f"{target}.work")], folders=[tmp_path],
               exception=exc)


def test_same_kind_is_replaced_with_overwrite(tiny_beir, bm25_store, tmp_path, record_property):
    case = Case(record_property, "ownership", "an embed-kd score store is replaced by `score-teacher run --overwrite` "
                                              "(same kind); refused without it")
    import shutil

    out = shutil.copytree(bm25_store, tmp_path / "store")
    code, err, exc, _ = invoke(*_score_args(tiny_beir, out))
    assert code == 2 and ("already complete" in err or "another config" in err), err
    code, err, exc, _ = invoke(*_score_args(tiny_beir, out, "--overwrite"))
    case.ok("accepted (replaced)", code, err, folders=[tmp_path], exception=exc,
            note="the old store (10 queries) replaced by the new one (5 queries)")
    assert json.loads((out / "manifest.json").read_text())["dataset"]["n_queries"] == 5


def test_a_users_folder_named_like_the_work_folder_is_never_resumed_or_removed(tiny_beir, tiny_model, dense_store,
                                                                               tmp_path, record_property):
    case = Case(record_property, "ownership", "`train --resume` / `--overwrite` when OUTPUT.work is a user's folder "
                                              "(it would be resumed into, then deleted)")
    out = tmp_path / "student"
    work = user_folder(tmp_path / "student.work", manifest=None)
    before = snapshot(work)
    for flag in ("--resume", "--overwrite"):
        code, err, exc, _ = invoke(*_train_args(tiny_beir, dense_store, tiny_model, out, flag))
        case.error(code, err, ["student.work", "interrupted-run work folder"], unchanged={work: before},
                   absent=[out], folders=[tmp_path], exception=exc)


def test_output_collision_refused_before_the_work(tiny_beir, tmp_path, record_property):
    case = Case(record_property, "ownership", "`eval -o r.json --save-run r.json` (one file for two outputs): "
                                              "refused up front, nothing written")
    out = tmp_path / "r.json"
    code, err, exc, _ = invoke("eval", "--data", tiny_beir, "--model", "bm25", "-o", out, "--save-run",
                               tmp_path / "." / "r.json")
    case.error(code, err, ["-o and --save-run name the same file"], absent=[out], folders=[tmp_path], exception=exc)


# ------------------------------------------------------------------------------------------ model kind

def test_a_bi_encoder_is_refused_as_a_cross_encoder(tiny_beir, tiny_model, tmp_path, record_property):
    for spec, how in ((str(tiny_model), "a bi-encoder folder (modules.json: Transformer, Pooling, Normalize)"),
                      ("minilm-l6", "the minilm-l6 preset (a bi-encoder)")):
        case = Case(record_property, "model kind", f"`score-teacher --teacher ce:M`, M = {how}")
        out = tmp_path / f"s-{len(spec)}"
        code, err, exc, _ = invoke("score-teacher", "run", "--data", tiny_beir, "--split", "train", "--candidates",
                                   "bm25:5", "--teacher", f"ce:{spec}", "--limit", "3", "-o", out, "--no-progress")
        case.error(code, err, [spec, "cannot be the cross-encoder for", "newly initialised"], absent=[out],
                   folders=[tmp_path], exception=exc)


def test_rerank_refuses_a_model_without_a_classifier_head(tiny_beir, tiny_model, tmp_path, record_property):
    case = Case(record_property, "model kind", "`eval --rerank M`, M a bi-encoder (was nDCG 0.30 vs BM25 0.90, "
                                               "no warning)")
    out = tmp_path / "r.json"
    code, err, exc, _ = invoke("eval", "--data", tiny_beir, "--model", "bm25", "--rerank", tiny_model, "-o", out)
    case.error(code, err, [str(tiny_model), "cross-encoder for --rerank"], absent=[out], folders=[tmp_path],
               exception=exc)


def test_a_checkpoint_whose_head_weights_are_missing_is_refused(tiny_beir, tiny_model, tmp_path, record_property):
    """config.json says BertForSequenceClassification, the weights file holds only the encoder: transformers
    would initialise the classifier at random (the loading report's 'missing keys')."""
    from transformers import BertConfig, BertModel

    from conftest import tiny_tokenizer

    case = Case(record_property, "model kind", "a cross-encoder folder whose weights lack the classifier "
                                               "(config: *ForSequenceClassification, head missing from the checkpoint)")
    ce = tmp_path / "headless"
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=1)
    BertModel(cfg).save_pretrained(ce)
    tiny_tokenizer().save_pretrained(ce)
    conf = json.loads((ce / "config.json").read_text())
    conf["architectures"] = ["BertForSequenceClassification"]
    (ce / "config.json").write_text(json.dumps(conf))
    out = tmp_path / "r.json"
    code, err, exc, _ = invoke("eval", "--data", tiny_beir, "--model", "bm25", "--rerank", ce, "-o", out)
    case.error(code, err, ["headless", "classification head", "missing from the checkpoint"], absent=[out],
               folders=[tmp_path], exception=exc)


def test_a_cross_encoder_is_refused_as_an_embedding_model(tiny_beir, tiny_ce, tmp_path, record_property):
    case = Case(record_property, "model kind", "`eval --model M`, M a cross-encoder (its head would be dropped and "
                                               "the encoder mean-pooled)")
    out = tmp_path / "r.json"
    code, err, exc, _ = invoke("eval", "--data", tiny_beir, "--model", tiny_ce, "-o", out)
    case.error(code, err, ["tiny-ce", "cannot be the embedding model", "cross-encoder"], absent=[out],
               folders=[tmp_path], exception=exc)


def test_a_dense_model_is_refused_as_a_sparse_encoder(tiny_model, record_property):
    from embed_kd.models import load_sparse_encoder

    case = Case(record_property, "model kind", "a bi-encoder loaded for a sparse (SPLADE) role (a random "
                                               "vocabulary head)")
    code, err, exc = as_error(load_sparse_encoder, str(tiny_model), role="eval --model")
    case.error(code, err, ["cannot be the sparse encoder for eval --model", "bi-encoder"], exception=exc)


def test_right_kinds_are_accepted(tiny_beir, tiny_ce, tiny_model, tmp_path, record_property):
    from embed_kd.models import load_cross_encoder

    case = Case(record_property, "model kind", "a trained cross-encoder as `--teacher ce:M`; a bi-encoder as "
                                               "`train-teacher --base` (a new head on purpose)")
    out = tmp_path / "s"
    code, err, exc, _ = invoke("score-teacher", "run", "--data", tiny_beir, "--split", "train", "--candidates",
                               "bm25:5", "--teacher", f"ce:{tiny_ce}", "--limit", "3", "-o", out, "--no-progress",
                               "-q", "--cache-dir", tmp_path / "cache")
    base = load_cross_encoder(str(tiny_model), role="train-teacher --base", require_head=False)
    case.ok("accepted", code, err, folders=[tmp_path], exception=exc,
            note="store written with the cross-encoder; the bi-encoder base loads with a new 1-label head")
    assert base.num_labels == 1 and json.loads((out / "manifest.json").read_text())["complete"]


# ------------------------------------------------------------------------------------------ non-finite

@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_ensemble_weights_refused(value, tiny_beir, tiny_model, tmp_path, record_property):
    case = Case(record_property, "non-finite", f"`score-teacher --weights b={value}` (was: a store of NaN scores "
                                               "marked complete)")
    out = tmp_path / "s"
    code, err, exc, _ = invoke("score-teacher", "run", "--data", tiny_beir, "--split", "train", "--candidates",
                               "bm25:5", "--teacher", "b=bm25", "--teacher", f"m={tiny_model}", "--weights",
                               f"b={value}", "--limit", "3", "-o", out, "--no-progress")
    case.error(code, err, ["--weights", "'b'", "finite"], absent=[out], folders=[tmp_path], exception=exc)


def test_non_finite_weights_in_an_ensemble_config_refused(tiny_beir, tmp_path, record_property):
    case = Case(record_property, "non-finite", "ensemble YAML `weights: {bm25: .nan}` / `grid: [0, .inf]`")
    for i, extra in enumerate(("weights: {a: .nan}\n", "grid: [0, .inf]\n")):
        cfg = tmp_path / f"ens{i}.yaml"
        cfg.write_text("members:\n  - {name: a, kind: bm25}\n  - {name: b, kind: bm25}\n" + extra)
        code, err, exc, _ = invoke("eval", "--data", tiny_beir, "--ensemble", cfg)
        case.error(code, err, [cfg.name, "finite"], folders=[tmp_path], exception=exc)


@pytest.mark.parametrize("override", ["train.lr=inf", "train.lr=nan", "losses.score_scale=nan",
                                      "losses.align_weight=-.inf", "train.max_time_s=inf"])
def test_non_finite_config_values_refused_before_any_work(override, tiny_beir, tiny_model, dense_store, tmp_path,
                                                          record_property):
    case = Case(record_property, "non-finite", f"`train --set {override}` (lr=inf saved NaN weights, exit 0)")
    out = tmp_path / "student"
    code, err, exc, _ = invoke(*_train_args(tiny_beir, dense_store, tiny_model, out, "--set", override))
    key = override.split("=")[0].split(".")[1]
    case.error(code, err, [key, "finite"], absent=[out, Path(f"{out}.work")], folders=[tmp_path], exception=exc)


def test_non_finite_teacher_scores_refused_on_write_and_read(bm25_store, tmp_path, record_property):
    import shutil

    import pyarrow.parquet as pq

    from embed_kd.teachers.store import ScoreStoreWriter, open_scores

    case = Case(record_property, "non-finite", "a NaN teacher score: refused when the chunk is written (nothing "
                                               "committed)")
    m = json.loads((bm25_store / "manifest.json").read_text())
    w = ScoreStoreWriter.create(tmp_path / "new", {**m, "complete": False, "chunk_sha256": {}}, chunk_size=2)
    cols = {"query_id": ["q", "q"], "doc_id": ["a", "b"], "label": [1, 0], "score": [1.0, float("nan")],
            "score__bm25": [1.0, float("nan")], "rank__bm25": [1, 2]}
    code, err, exc = as_error(w.write_chunk, 0, 1, cols)
    w.close()
    case.error(code, err, ["chunk 0-1, not written", "not finite", "teacher 'bm25'", "document 'b'"], exception=exc)
    assert not list((tmp_path / "new" / "shards").glob("*.parquet"))

    case = Case(record_property, "non-finite", "a store chunk holding NaN scores (written before the check, or "
                                               "edited): refused when read, naming the chunk")
    bad = shutil.copytree(bm25_store, tmp_path / "bad")
    chunk = sorted((bad / "shards").glob("*.parquet"))[0]
    t = pq.read_table(chunk)
    scores = t.column("score").to_numpy().copy()
    scores[0] = np.nan
    pq.write_table(t.set_column(t.schema.get_field_index("score"), "score", [scores.astype("float32")]), chunk)
    import hashlib

    man = json.loads((bad / "manifest.json").read_text())
    man["chunk_sha256"][chunk.name] = hashlib.sha256(chunk.read_bytes()).hexdigest()  # not in the fingerprint
    (bad / "manifest.json").write_text(json.dumps(man))
    code, err, exc = as_error(lambda: open_scores(bad).to_run())
    case.error(code, err, [chunk.name, "'score'", "non-finite", "delete the chunk and rerun"], exception=exc)


def test_a_diverging_run_stops_at_its_first_non_finite_loss(tiny_beir, tiny_model, dense_store, tmp_path,
                                                             record_property):
    """losses.score_scale=1e38 is finite, but the scaled margins overflow float32: the first loss is inf."""
    case = Case(record_property, "non-finite", "`train` whose loss becomes inf at step 1 (score_scale 1e38): stops "
                                               "with a clear error, no student, work folder removed")
    out = tmp_path / "student"
    code, err, exc, _ = invoke(*_train_args(tiny_beir, dense_store, tiny_model, out, "--set",
                                            "losses.score_scale=1e38", "--set", "losses.align=none"))
    case.error(code, err, ["training stopped at step 1", "not finite", "Nothing was saved", "student.work was removed"],
               absent=[out, Path(f"{out}.work")], folders=[tmp_path], exception=exc)

    case = Case(record_property, "recovery advice", "after a diverged `train`, the corrected rerun (as the error "
                                                    "says: fix the config and rerun) is not blocked")
    code, err, exc, _ = invoke(*_train_args(tiny_beir, dense_store, tiny_model, out))
    case.ok("recovered", code, err, folders=[tmp_path], exception=exc, note="student written")
    assert (out / "embed_kd_train.json").is_file()


def _stopped_at(err: str) -> int:
    import re

    m = re.search(r"training stopped at step (\d+)", err)
    return int(m.group(1)) if m else 0


def test_a_run_whose_loss_becomes_nan_stops_and_removes_its_work_folder(tiny_beir, tiny_model, dense_store, tmp_path,
                                                                        record_property):
    """train.lr=1e30 is finite and valid, but the first optimizer steps blow the weights up until the forward pass
    makes NaN (inf - inf): a real NaN loss after real steps, with checkpoints already in OUT.work (save_steps=1).
    docs/reliability.md promises the work folder is removed, not left resumable."""
    case = Case(record_property, "non-finite", "`train --set train.lr=1e30`: the weights blow up and the loss becomes "
                                               "NaN after checkpoints were saved: stops with a clear error, no student, "
                                               "work folder removed (not resumable)")
    out = tmp_path / "student"
    code, err, exc, _ = invoke(*_train_args(tiny_beir, dense_store, tiny_model, out, "--set", "train.lr=1e30",
                                            "--set", "train.max_steps=4", "--set", "train.save_steps=1",
                                            "--set", "losses.align=none"))
    case.error(code, err, ["training stopped at step", "the score loss is nan (not finite)", "train.lr = 1e+30",
                           "Nothing was saved", "student.work was removed"],
               absent=[out, Path(f"{out}.work")], folders=[tmp_path], exception=exc)
    assert _stopped_at(err) >= 2  # step 1 ran on the initial weights (a finite loss) and was checkpointed


def test_a_diverging_sparse_run_stops_and_removes_its_work_folder(tiny_beir, dense_store, tmp_path_factory, tmp_path,
                                                                  record_property):
    """The sparse driver (SpladeLoss: base loss + FLOPS regularisers, one module) is guarded the same way."""
    from test_sparse import build_tiny_mlm

    case = Case(record_property, "non-finite", "`train --student-type sparse --set train.lr=1e30`: the SPLADE loss "
                                               "becomes NaN: stops with a clear error naming the term, no student, "
                                               "work folder removed (not resumable)")
    mlm = build_tiny_mlm(tmp_path_factory.mktemp("models") / "tiny-mlm")
    out = tmp_path / "sparse"
    code, err, exc, _ = invoke("train", "--data", tiny_beir, "--scores", dense_store, "--student-type", "sparse",
                               "--student", mlm, "-o", out, "--no-progress", "-q", "--set", "train.max_steps=4",
                               "--set", "train.batch_size=4", "--set", "train.save_steps=1", "--set", "train.lr=1e30",
                               "--set", "examples.dev_queries=0")
    case.error(code, err, ["training stopped at step", "term of the training loss is nan (not finite)",
                           "Nothing was saved", "sparse.work was removed"],
               absent=[out, Path(f"{out}.work")], folders=[tmp_path], exception=exc)
    assert _stopped_at(err) >= 2


def test_nan_weights_are_never_published(tiny_model, record_property):
    import torch
    from sentence_transformers import SentenceTransformer

    from embed_kd.numeric import check_finite_weights

    case = Case(record_property, "non-finite", "a student whose weights hold NaN is refused before it is saved")
    model = SentenceTransformer(str(tiny_model), device="cpu")
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    code, err, exc = as_error(check_finite_weights, model, "runs/student: the trained student")
    case.error(code, err, ["runs/student", "NaN", "nothing was saved"], exception=exc)


def test_a_model_that_returns_nan_embeddings_is_refused_in_eval(tiny_beir, tiny_model, tmp_path, record_property):
    import torch
    from sentence_transformers import SentenceTransformer

    case = Case(record_property, "non-finite", "`eval` of a model with NaN weights (printed nDCG 0.0000, exit 0)")
    model = SentenceTransformer(str(tiny_model), device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    model.save(str(tmp_path / "nan-model"))
    out = tmp_path / "r.json"
    code, err, exc, _ = invoke("eval", "--data", tiny_beir, "--model", tmp_path / "nan-model", "-o", out,
                               "--no-cache", "--no-progress")
    case.error(code, err, ["nan-model", "non-finite", "embeddings"], absent=[out], folders=[tmp_path], exception=exc)


# ------------------------------------------------------------------------------------- serving isolation

@pytest.fixture(scope="module")
def served(index_dir, tiny_model):
    from embed_kd.serve.app import ServeSettings, create_app
    from embed_kd.serve.engine import SearchEngine
    from embed_kd.serve.runner import BackgroundServer

    engine = SearchEngine.load(index_dir, str(tiny_model))
    with BackgroundServer(create_app(engine, ServeSettings(max_wait_ms=50, max_batch_size=64))) as url:
        yield url, engine


async def _concurrent(url: str, bodies: list[str]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await asyncio.gather(*(client.post("/search", content=b, headers={"content-type": "application/json"})
                                      for b in bodies))


def test_invalid_text_among_concurrent_valid_requests(served, record_property):
    """An unpaired surrogate (JSON "\\ud800") cannot be tokenised: it made every request of its batch fail (13 of
    15). Now it is refused on its own (422) before batching and every valid request gets 200."""
    url, _ = served
    case = Case(record_property, "serving isolation", "1 query the tokenizer cannot encode (\"\\ud800\") among 15 "
                                                      "concurrent valid requests")
    valid = [json.dumps({"query": q, "k": 3}) for q in ["cat purr", "ocean wave", "gene dna", "rain storm",
                                                         "dog bark"] * 3]
    bad = '{"query": "kitten \\ud800 purr", "k": 3}'
    responses = asyncio.run(_concurrent(url, valid[:7] + [bad] + valid[7:]))
    codes = [r.status_code for r in responses]
    bad_r = responses[7]
    ok = all(c == 200 for i, c in enumerate(codes) if i != 7) and bad_r.status_code == 422
    case.ok("accepted (15 × 200, 1 × 422)" if ok else "crash", 0 if ok else 1,
            note=f"422: {bad_r.json().get('error', '')[:120]}")
    assert ok, codes
    assert "unpaired surrogate U+D800" in bad_r.json()["error"]
    info = httpx.get(f"{url}/info").json()
    assert info["batching"]["largest_batch"] >= 2  # the valid requests were really batched together


def test_a_failure_inside_a_batch_is_isolated_to_its_request(index_dir, tiny_model, record_property):
    """Fault injection: the engine fails for one query (as a model bug or a bad input that passes validation would);
    only that request gets an error, the others of its batch their results."""
    from embed_kd.serve.app import ServeSettings, create_app
    from embed_kd.serve.engine import SearchEngine
    from embed_kd.serve.runner import BackgroundServer

    case = Case(record_property, "serving isolation", "an encoder failure for one request inside a micro-batch of 12 "
                                                      "(fault injected in the engine)")

    class FailsOnPoison(SearchEngine):
        def search_items(self, items):
            if any("poison" in q for q, _ in items):
                raise RuntimeError("cannot encode this query")
            return super().search_items(items)

    base = SearchEngine.load(index_dir, str(tiny_model))
    engine = FailsOnPoison.__new__(FailsOnPoison)
    engine.__dict__.update(base.__dict__)
    with BackgroundServer(create_app(engine, ServeSettings(max_wait_ms=100, max_batch_size=64))) as url:
        bodies = [json.dumps({"query": q, "k": 2}) for q in ["cat", "sea", "sun", "dog", "gene", "rain"] * 2]
        bodies[5] = json.dumps({"query": "poison cat", "k": 2})
        responses = asyncio.run(_concurrent(url, bodies))
        stats = httpx.get(f"{url}/info").json()["batching"]
    codes = [r.status_code for r in responses]
    ok = codes[5] == 500 and all(c == 200 for i, c in enumerate(codes) if i != 5)
    case.ok("accepted (11 × 200, 1 × 500)" if ok else "crash", 0 if ok else 1,
            note=f"500: {responses[5].json().get('error', '')[:100]}; errors counted {stats['errors']}")
    assert ok, codes
    assert "cannot encode this query" in responses[5].json()["error"] and stats["errors"] == 1


def test_micro_batcher_retries_a_failed_batch_request_by_request(record_property):
    from embed_kd.serve.batching import MicroBatcher

    case = Case(record_property, "serving isolation", "MicroBatcher: a batch whose process() raises is retried one "
                                                      "request at a time; only the failing request gets the error")
    calls = []

    def process(items):
        calls.append(len(items))
        if any(x < 0 for x in items):
            raise ValueError("negative")
        return [x * 10 for x in items]

    async def go():
        b = MicroBatcher(process, max_batch_size=64, max_wait_ms=50)
        await b.start()
        try:
            return await asyncio.gather(*(b.submit([i, i + 1]) for i in (1, 3, -5, 7)), return_exceptions=True)
        finally:
            await b.stop()

    outs = asyncio.run(go())
    ok = outs[0] == [10, 20] and outs[1] == [30, 40] and isinstance(outs[2], ValueError) and outs[3] == [70, 80]
    case.ok("accepted" if ok else "crash", 0 if ok else 1, note=f"process() calls: {calls} (1 batch, then 4 alone)")
    assert ok and calls == [8, 2, 2, 2, 2]


# ------------------------------------------------------------------------------------- recovery advice

def test_bad_chunk_advice_works(tiny_beir, tmp_path, record_property):
    """'checksum does not match … delete it and rerun': once deleted, the chunk is pending (readers refuse the store
    as incomplete, naming it) and the rerun scores exactly that chunk; the store equals the original."""
    import re

    case = Case(record_property, "recovery advice", "a chunk with a flipped byte: delete it as the error says, rerun "
                                                    "the same command → only that chunk is recomputed, the store "
                                                    "equals the original")
    out = tmp_path / "s"
    args = ("score-teacher", "run", "--data", tiny_beir, "--split", "train", "--candidates", "bm25:5", "--teacher",
            "bm25", "--chunk-size", "2", "-o", out, "--no-progress", "-q")
    assert invoke(*args)[0] == 0
    original = snapshot(out / "shards")
    chunks = sorted((out / "shards").glob("*.parquet"))
    chunk, others = chunks[1], chunks[:1] + chunks[2:]
    first, last = (int(x) for x in re.findall(r"\d+", chunk.name))
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    tsv = tmp_path / "t.tsv"
    code, err, _, _ = invoke("score-teacher", "export", out, "--format", "margin-mse-tsv", "-o", tsv)
    assert code == 2 and "delete it and rerun" in err, err
    chunk.unlink()
    # deleted, the chunk is pending: the store (marked complete before) is refused as incomplete, naming it
    pending = Case(record_property, "recovery advice", "a store marked complete, one chunk deleted (as the advice "
                                                       "says): readers refuse it as incomplete, naming the pending "
                                                       "chunk and the rerun (was: 'marked complete but its chunks "
                                                       "cover 4 of 6 queries', no advice)")
    code, err, exc, _ = invoke("score-teacher", "export", out, "--format", "margin-mse-tsv", "-o", tsv)
    pending.error(code, err, ["incomplete score store", f"pending: {chunk.name}", "rerun the same score-teacher command"],
               absent=[tsv], folders=[tmp_path], exception=exc)
    kept = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in others}
    code, err, exc, r = invoke(*args[:-1], "-v")
    # the rerun's own account: every other chunk skipped, the deleted chunk's queries scored
    resumed = re.search(r"(\d+) of (\d+) chunk\(s\) already committed", err)
    scored = re.search(r"this run scored (\d+) queries", err)
    assert resumed and scored, err
    skipped, total, n_scored = int(resumed.group(1)), int(resumed.group(2)), int(scored.group(1))
    same = snapshot(out / "shards") == original
    m = json.loads((out / "manifest.json").read_text())
    case.ok("recovered", code, err, folders=[tmp_path], exception=exc, lost=not same,
            note=f"after the delete: refused as incomplete, {chunk.name} pending; the rerun skipped {skipped} of "
                 f"{total} chunks and scored {n_scored} queries (that chunk's {last - first + 1}); store "
                 f"complete={m['complete']}, chunks byte-identical={same}")
    assert (skipped, total) == (len(others), len(chunks)) and n_scored == last - first + 1
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in others} == kept  # the others not rewritten
    assert same and m["complete"] and m["progress"]["chunks"] == len(chunks)


def test_float_id_gets_a_conversion_hint(tiny_beir, tmp_path, record_property):
    import shutil

    case = Case(record_property, "recovery advice", "a corpus `_id` written as a JSON float (4983.0) while qrels say "
                                                    "4983: the error hints the conversion")
    data = shutil.copytree(tiny_beir, tmp_path / "data")
    lines = (data / "corpus.jsonl").read_text().splitlines()
    doc = json.loads(lines[0])
    old_id = doc["_id"]
    doc["_id"] = 4983.0
    lines[0] = json.dumps(doc)
    (data / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    for split in ("test", "train"):
        q = data / "qrels" / f"{split}.tsv"
        q.write_text(q.read_text().replace(f"\t{old_id}\t", "\t4983\t"))
    code, err, exc, _ = invoke("eval", "--data", data, "--model", "bm25")
    case.error(code, err, ["'4983'", "JSON float", '"_id": "4983"'], folders=[tmp_path], exception=exc)


# ---------------------------------------------------------------------------------------- config types

@pytest.mark.parametrize("override,needles", [
    ("train.batch_size=1.5", ["batch_size", "whole number", "1.5"]),
    ("train.max_steps=nan", ["max_steps", "whole number", "nan"]),
    ("student.keep_layers=[0, 1.5]", ["keep_layers", "whole numbers"]),
    ("train.warmup_ratio=2", ["train.warmup_ratio", "[0, 1]"]),
    ("train.save_steps=0", ["train.save_steps", ">= 1"]),
    ("train.seed=abc", ["seed", "whole number"]),
])
def test_wrong_type_config_values_refused_before_any_work_folder(override, needles, tiny_beir, tiny_model,
                                                                 dense_store, tmp_path, record_property):
    case = Case(record_property, "config types", f"`train --set {override}` (was: a traceback after loading and an "
                                                 "OUT.work that blocked the corrected rerun)")
    out = tmp_path / "student"
    code, err, exc, _ = invoke(*_train_args(tiny_beir, dense_store, tiny_model, out, "--set", override))
    case.error(code, err, needles, absent=[out, Path(f"{out}.work")], folders=[tmp_path], exception=exc)


def test_train_teacher_non_finite_flags_refused(tiny_beir, tiny_model, tmp_path, record_property):
    case = Case(record_property, "config types", "`train-teacher --lr nan` (click's float type accepts nan)")
    out = tmp_path / "ce"
    code, err, exc, _ = invoke("train-teacher", "--data", tiny_beir, "--split", "train", "--base", tiny_model,
                               "-o", out, "--lr", "nan", "--no-progress")
    case.error(code, err, ["--lr", "finite"], absent=[out], folders=[tmp_path], exception=exc)


# ------------------------------------------------------------------------------------------- temp files

def _deleted_encode_maps(pid: int) -> list[tuple[int, str]]:
    """``(bytes, name)`` of each memory map of process ``pid`` onto a removed ``.embed-kd-encode`` temporary."""
    try:
        lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    except OSError:
        return []
    out = []
    for ln in lines:
        fields = ln.split(None, 5)
        if len(fields) == 6 and ".embed-kd-encode.pid" in fields[5] and fields[5].endswith("(deleted)"):
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            out.append((hi - lo, fields[5]))
    return out


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux /proc to see the process's maps")
def test_index_build_no_cache_matrix_does_not_outlive_kill_9(tiny_model, tmp_path, record_property):
    """The uncached n × dim matrix is a file in $TMPDIR whose name is removed as soon as it is open and mapped:
    killed with -9 mid-encode, the process leaves nothing there (the kernel frees the blocks with the process),
    and the rerun builds the index."""
    case = Case(record_property, "temp files", "`index build --no-cache` killed with -9 mid-encode: nothing of its "
                                               "n × dim matrix is left in $TMPDIR (was: kept until the next run "
                                               "swept it)")
    import random

    rng = random.Random(0)
    words = [w for w in VOCAB if w.isalpha() and w not in ("the", "a")]
    corpus = tmp_path / "corpus.jsonl"
    n = 6000
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": " ".join(rng.choice(words)
                                                                                     for _ in range(20))}) + "\n"
                              for i in range(n)))
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TMPDIR": str(tmpdir)}
    args = [sys.executable, "-m", "embed_kd", "index", "build", "--data", str(corpus), "--doc-model", str(tiny_model),
            "-o", str(tmp_path / "idx"), "--no-cache", "--no-progress", "-q"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    maps: list[tuple[int, str]] = []
    killed = kill_when(proc, lambda: bool(maps.extend(_deleted_encode_maps(proc.pid)) or maps), timeout=240)
    assert killed, "the encode finished before it could be killed"
    left_after_kill = sorted(p.name for p in tmpdir.iterdir())
    # it was killed holding the whole matrix (n × 32 float32), under a name already removed
    assert maps and maps[0][0] >= n * 32 * 4 and f"{tmpdir}/.embed-kd-encode.pid{proc.pid}-" in maps[0][1], maps
    p = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    remaining = sorted(q.name for q in tmpdir.iterdir())
    case.ok("recovered (nothing left)", p.returncode, p.stderr, folders=[tmp_path / "idx", tmpdir],
            note=f"killed while mapping its {maps[0][0]}-byte matrix (name already removed); left in $TMPDIR by "
                 f"kill -9: {len(left_after_kill)}; after the rerun: {len(remaining)}")
    assert left_after_kill == [] and remaining == [] and (tmp_path / "idx" / "manifest.json").is_file()


def test_train_teacher_checkpoint_temp_is_swept(tmp_path, record_property):
    from embed_kd.io import sweep_stale

    case = Case(record_property, "temp files", "train-teacher's checkpoint folder of a killed run "
                                               "(.OUT.pid<DEAD>-ckpt-*.tmp) is removed by the next run")
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".ce.pid{dead.pid}-ckpt-abcd.tmp"
    (stale / "checkpoint-2").mkdir(parents=True)
    mine = tmp_path / f".ce.pid{os.getpid()}-ckpt-live.tmp"
    mine.mkdir()
    removed = sweep_stale(tmp_path / "ce")
    case.ok("recovered (swept)", 0, note=f"removed {len(removed)}; a live run's kept")
    assert not stale.exists() and mine.exists()
    mine.rmdir()


# ------------------------------------------------------------------------------------------ usage errors

@pytest.mark.parametrize("args,needle", [
    (["eval", "--bogus"], "No such option"),
    (["nosuch"], "No such command"),
    (["serve", "--index", "idx", "--port", "0"], "--port"),
])
def test_click_usage_errors_are_one_line(args, needle, record_property):
    case = Case(record_property, "usage errors", f"`embed-kd {' '.join(args)}` (click printed usage, a hint and the "
                                                 "error: three lines)")
    p = cli(*args, timeout=120)
    case.error(p.returncode, p.stderr, [needle, "--help"], exception=None)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
