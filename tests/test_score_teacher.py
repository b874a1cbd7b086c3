"""`embed-kd score-teacher` end to end with tiny config-built models on the tiny BEIR dataset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from embed_kd.cli import main
from embed_kd.teachers.store import open_scores

sys.path.insert(0, str(Path(__file__).parent))
from conftest import VOCAB, tiny_tokenizer  # noqa: E402


def build_tiny_cross_encoder(path: Path, vocab: list[str], *, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A 2-layer BertForSequenceClassification (num_labels=1) + the tiny tokenizer, loadable by CrossEncoder."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    tiny_tokenizer(vocab, model_max_length=48).save_pretrained(path)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=hidden * 2, max_position_embeddings=64, num_labels=1,
                     initializer_range=0.5)  # large random weights: scores that differ between pairs
    BertForSequenceClassification(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_ce(tmp_path_factory, tiny_model) -> Path:
    # the tiny bi-encoder's tokenizer vocabulary (conftest.build_tiny_bi_encoder saves it next to the model)
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("models") / "tiny-ce", VOCAB)


def _args(data, out, cache, *extra):
    return ["score-teacher", "--data", str(data), "--split", "train", "--candidates", "bm25:4", "--cache-dir",
            str(cache), "--no-progress", "-q", "-o", str(out), *extra]


def _invoke(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_cross_encoder_scores_equal_predict(tiny_beir, tiny_ce):
    """Exact mode: pre-tokenised, length-sorted batches give CrossEncoder.predict's scores."""
    import torch

    from embed_kd.candidates.shared import SharedResources
    from embed_kd.data import load_beir
    from embed_kd.teachers.scorers import CrossEncoderTeacher, parse_teacher_spec

    ds = load_beir(tiny_beir, "train")
    pairs = [(ds.queries[q], ds.doc_text(d)) for q in ds.queries for d in list(ds.corpus)[:7]]
    for activation, fn in ((None, torch.nn.Identity()), ("sigmoid", torch.nn.Sigmoid())):
        teacher = CrossEncoderTeacher(parse_teacher_spec(f"ce:{tiny_ce}"), SharedResources(ds), batch_size=5,
                                      activation=activation)
        ours = teacher.score_texts(pairs)
        ref = teacher.model.predict(pairs, batch_size=32, activation_fn=fn, show_progress_bar=False)
        assert ours.shape == (len(pairs),)
        np.testing.assert_allclose(ours, ref, atol=1e-4)
        assert np.std(ours) > 0  # a real model: scores differ between pairs


def test_end_to_end_cross_encoder(tiny_beir, tiny_model, tiny_ce, tmp_path):
    from sentence_transformers import CrossEncoder

    from embed_kd.data import load_beir

    out = tmp_path / "scores"
    r = _invoke(_args(tiny_beir, out, tmp_path / "cache", "--candidates", f"dense:{tiny_model}:3",
                      "--teacher", f"ce:{tiny_ce}", "--chunk-size", "2"))
    assert r.exit_code == 0, r.output
    store = open_scores(out)
    m = store.manifest
    assert m["complete"] and m["ensemble"] is None and m["teachers"][0]["kind"] == "cross-encoder"
    assert m["teachers"][0]["activation"] is None and m["dataset"]["split"] == "train"
    assert [c["name"] for c in m["candidates"]] == ["bm25", "dense"]
    t = store.table().to_pydict()
    ds = load_beir(tiny_beir, "train")
    # queries in split order, rows of a query contiguous
    seen = list(dict.fromkeys(t["query_id"]))
    assert seen == list(ds.queries)
    assert len(seen) == len([q for q in range(len(t["query_id"])) if q == 0 or t["query_id"][q] != t["query_id"][q - 1]])
    for q, pos in ds.qrels.items():  # every positive is there and labelled
        got = {d: lab for qq, d, lab in zip(t["query_id"], t["doc_id"], t["label"]) if qq == q}
        assert all(got.get(d) == r_ for d, r_ in pos.items())
        assert sum(1 for qq in t["query_id"] if qq == q) == len(got)  # no duplicate doc per query
    for i in range(len(t["doc_id"])):  # a doc that no source retrieved must be a positive
        if t["rank__bm25"][i] == -1 and t["rank__dense"][i] == -1:
            assert t["label"][i] > 0
    assert t["score"] == t[f"score__{tiny_ce.name}"]
    ce = CrossEncoder(str(tiny_ce))
    pairs = [(ds.queries[q], ds.doc_text(d)) for q, d in zip(t["query_id"], t["doc_id"])]
    ref = ce.predict(pairs, batch_size=32, activation_fn=__import__("torch").nn.Identity(), show_progress_bar=False)
    np.testing.assert_allclose(np.array(t["score"]), ref, atol=1e-4)


def test_ensemble_column_and_weights(tiny_beir, tiny_ce, tmp_path):
    from embed_kd.teachers.combine import combine_scores

    out = tmp_path / "ens"
    r = _invoke(_args(tiny_beir, out, tmp_path / "cache", "--teacher", f"ce=ce:{tiny_ce}", "--teacher", "bm25",
                      "--ensemble", "zscore", "--weights", "ce=3"))
    assert r.exit_code == 0, r.output
    store = open_scores(out)
    assert store.manifest["ensemble"] == {"norm": "zscore", "weights": {"ce": 3.0, "bm25": 1.0}}
    t = store.table().to_pydict()
    q0 = t["query_id"][0]
    idx = [i for i, q in enumerate(t["query_id"]) if q == q0]
    want = combine_scores({"ce": [t["score__ce"][i] for i in idx], "bm25": [t["score__bm25"][i] for i in idx]},
                          "zscore", {"ce": 3.0, "bm25": 1.0})
    np.testing.assert_allclose([t["score"][i] for i in idx], want, rtol=1e-6, atol=1e-6)


def test_kill9_then_resume_equals_clean_run(tiny_beir, tiny_ce, tmp_path):
    """A real subprocess killed with SIGKILL mid-run; the resumed store equals a clean run's rows."""
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    extra = ("--teacher", f"ce:{tiny_ce}", "--teacher", "bm25", "--chunk-size", "1")
    r = _invoke(_args(tiny_beir, clean, tmp_path / "cache", *extra))
    assert r.exit_code == 0, r.output

    env = {**os.environ, "EMBED_KD_SCORE_PAUSE_AFTER_CHUNKS": "2", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "embed_kd", *_args(tiny_beir, killed, tmp_path / "cache", *extra)]
    cmd.remove("-q")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    shards = killed / "shards"
    deadline = time.time() + 120
    line = ""
    while time.time() < deadline:  # the hook logs when it pauses, right before committing chunk 3
        line = proc.stderr.readline()
        if "pausing before committing" in line or (not line and proc.poll() is not None):
            break
    assert "pausing before committing" in line, "the scoring subprocess did not reach the pause point"
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert sorted(p.name for p in shards.glob("chunk-*")) == ["chunk-000000-000000.parquet", "chunk-000001-000001.parquet"]
    manifest = json.loads((killed / "manifest.json").read_text())
    assert manifest["complete"] is False
    with pytest.raises(Exception, match="incomplete score store"):
        open_scores(killed)

    r = _invoke(_args(tiny_beir, killed, tmp_path / "cache", *extra))
    assert r.exit_code == 0, r.output
    a, b = open_scores(killed), open_scores(clean)
    assert a.manifest["progress"] == b.manifest["progress"]
    assert a.table().equals(b.table())


def test_ctrl_c_keeps_committed_chunks_and_says_how_to_resume(tiny_beir, tmp_path):
    """A real SIGINT mid-run: exit 130, one line naming the folder that keeps the committed chunks; the rerun
    of the same command finishes the store."""
    out = tmp_path / "s"
    args = _args(tiny_beir, out, tmp_path / "cache", "--teacher", "bm25", "--chunk-size", "1")
    env = {**os.environ, "EMBED_KD_SCORE_PAUSE_AFTER_CHUNKS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "embed_kd", *args]
    cmd.remove("-q")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline, line = time.time() + 120, ""
    while time.time() < deadline:
        line = proc.stderr.readline()
        if "pausing before committing" in line or (not line and proc.poll() is not None):
            break
    assert "pausing before committing" in line, "the scoring subprocess did not reach the pause point"
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=30) == 130
    assert rest.strip().splitlines()[-1] == (f"Interrupted: the chunks committed so far are kept in {out}; rerun the "
                                             "same command to resume."), rest
    assert "Traceback" not in rest
    assert [p.name for p in (out / "shards").glob("chunk-*")] == ["chunk-000000-000000.parquet"]
    assert _invoke(args).exit_code == 0
    assert open_scores(out).manifest["complete"]


def test_run_score_teacher_is_the_command_without_the_cli(tiny_beir, tmp_path):
    """The library call behind `score-teacher run`: the same store as the command, a result to render, and the
    request's mistakes refused before anything is written."""
    from embed_kd.errors import EmbedKDError
    from embed_kd.teachers.request import ScoreRequest, run_score_teacher

    req = ScoreRequest(candidates=("bm25:4",), teachers=("bm25", "b2=bm25"), output=str(tmp_path / "lib"),
                       data=str(tiny_beir), weights="bm25=1,b2=3", ensemble_norm="minmax", chunk_size=2,
                       cache_dir=str(tmp_path / "cache"), show_progress=False)
    res = run_score_teacher(req)
    assert res.is_main and not res.distributed and res.summary["complete"] and res.summary["out"] == req.output
    assert res.summary["rows"] == open_scores(req.output).manifest["progress"]["rows"] > 0
    r = _invoke(_args(tiny_beir, tmp_path / "cli", tmp_path / "cache", "--teacher", "bm25", "--teacher", "b2=bm25",
                      "--weights", "bm25=1,b2=3", "--ensemble", "minmax", "--chunk-size", "2"))
    assert r.exit_code == 0, r.output
    assert open_scores(req.output).table().equals(open_scores(tmp_path / "cli").table())
    bad = ScoreRequest(candidates=("bm25:4",), teachers=("bm25",), output=str(tmp_path / "bad"), data=str(tiny_beir),
                       bi_backend="tensorrt")
    with pytest.raises(EmbedKDError, match="--bi-backend must be one of torch, openvino, onnx"):
        run_score_teacher(bad)
    assert not (tmp_path / "bad").exists()


def test_shards_merge_equals_clean(tiny_beir, tiny_ce, tmp_path):
    extra = ("--teacher", f"ce:{tiny_ce}", "--chunk-size", "2")
    cache = tmp_path / "cache"
    assert _invoke(_args(tiny_beir, tmp_path / "clean", cache, *extra)).exit_code == 0
    for i in range(2):
        r = _invoke(_args(tiny_beir, tmp_path / f"s{i}", cache, *extra, "--shard", f"{i}/2"))
        assert r.exit_code == 0, r.output
    r = _invoke(["score-teacher", "merge", str(tmp_path / "s0"), "-o", str(tmp_path / "m")])
    assert r.exit_code == 2 and "shard(s) 1/2 missing" in r.output and not (tmp_path / "m").exists()
    r = _invoke(["score-teacher", "merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "-o", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert open_scores(tmp_path / "m").table().equals(open_scores(tmp_path / "clean").table())


def test_exports(tiny_beir, tiny_ce, tmp_path):
    import datasets

    out = tmp_path / "s"
    assert _invoke(_args(tiny_beir, out, tmp_path / "cache", "--teacher", f"ce:{tiny_ce}")).exit_code == 0
    store = open_scores(out)
    tsv = tmp_path / "triples.tsv"
    r = _invoke(["score-teacher", "export", str(out), "--format", "margin-mse-tsv", "-o", str(tsv)])
    assert r.exit_code == 0, r.output
    lines = [ln.split("\t") for ln in tsv.read_text().splitlines()]
    labels = {(q, d): lab for q, rows in store.iter_queries() for d, _, lab in rows}
    scores = {(q, d): s for q, rows in store.iter_queries() for d, s, _ in rows}
    assert lines and all(len(ln) == 5 for ln in lines)
    for ps, ns, q, p, n in lines:
        assert labels[(q, p)] > 0 and labels[(q, n)] == 0
        assert float(ps) == pytest.approx(scores[(q, p)], rel=1e-6) and float(ns) == pytest.approx(scores[(q, n)], rel=1e-6)
    n_expected = sum(sum(1 for r_ in rows if r_[2] > 0) * sum(1 for r_ in rows if r_[2] == 0)
                     for _, rows in store.iter_queries())
    assert len(lines) == n_expected
    r = _invoke(["score-teacher", "export", str(out), "--format", "margin-mse-tsv", "-o", str(tsv)])
    assert r.exit_code == 2 and "--overwrite" in r.output

    hf = tmp_path / "hf"
    r = _invoke(["score-teacher", "export", str(out), "--format", "hf-margin-mse", "-o", str(hf)])
    assert r.exit_code == 0, r.output
    ds = datasets.load_from_disk(str(hf))
    assert ds.column_names == ["query", "positive", "negative", "label"] and len(ds) == n_expected
    first = lines[0]
    assert ds[0]["label"] == pytest.approx(float(first[0]) - float(first[1]), rel=1e-5, abs=1e-6)

    lw = tmp_path / "lw"
    r = _invoke(["score-teacher", "export", str(out), "--format", "hf-listwise", "--negatives", "2", "-o", str(lw)])
    assert r.exit_code == 0, r.output
    ds = datasets.load_from_disk(str(lw))
    assert ds.column_names == ["query", "positive", "negative_1", "negative_2", "label"]
    assert all(len(x) == 3 for x in ds["label"])


# ----------------------------------------------------------------------------------------- bad input

def _assert_clean_error(r, out, *needles, warnings=()):
    """Exit 2 with one ``Error:`` line, after exactly the ``warnings`` lines (substrings, in order)."""
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == len(warnings) + 1, r.output
    for ln, w in zip(lines, warnings):
        assert ln.startswith("WARNING ") and w in ln, r.output
    err = lines[len(warnings):]
    assert err[0].startswith("Error: "), r.output
    assert "Traceback" not in r.output
    for n in needles:
        assert n in err[0], err[0]
    if out is not None:
        assert not Path(out).exists()


def test_unknown_teacher(tiny_beir, tmp_path):
    out = tmp_path / "o"
    r = _invoke(_args(tiny_beir, out, tmp_path / "cache", "--teacher", "no-such-model-xyz"))
    _assert_clean_error(r, out, "unknown teacher", "no-such-model-xyz")
    r = _invoke(_args(tiny_beir, out, tmp_path / "cache", "--teacher", "bm25", "--candidates", "splade:3"))
    _assert_clean_error(r, out, "unknown source 'splade'")


def test_empty_split(tiny_beir, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_beir, data)
    (data / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n")
    out = tmp_path / "o"
    _assert_clean_error(_invoke(_args(data, out, tmp_path / "cache", "--teacher", "bm25")), out, "train.tsv", "no judgments")


def test_malformed_qrels(tiny_beir, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_beir, data)
    (data / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq-cat-train\tcat-1\n")
    out = tmp_path / "o"
    _assert_clean_error(_invoke(_args(data, out, tmp_path / "cache", "--teacher", "bm25")), out, "train.tsv:2",
                        "3 tab-separated fields")


def test_store_from_another_config_refused(tiny_beir, tiny_ce, tmp_path):
    out = tmp_path / "s"
    assert _invoke(_args(tiny_beir, out, tmp_path / "cache", "--teacher", "bm25", "--chunk-size", "2")).exit_code == 0
    before = {p.name: p.read_bytes() for p in (out / "shards").iterdir()}
    manifest = (out / "manifest.json").read_text()
    r = _invoke(_args(tiny_beir, out, tmp_path / "cache", "--teacher", f"ce:{tiny_ce}"))
    _assert_clean_error(r, None, "another config", "teachers", "--overwrite")
    assert {p.name: p.read_bytes() for p in (out / "shards").iterdir()} == before  # untouched
    assert (out / "manifest.json").read_text() == manifest
    # a reader given another store's scores for this dataset is refused too
    from embed_kd.data import load_beir
    from embed_kd.errors import ArtifactError

    with pytest.raises(ArtifactError, match="another dataset/split"):
        open_scores(out).check_dataset(load_beir(tiny_beir, "test"))
    r = _invoke(_args(tiny_beir, out, tmp_path / "cache", "--teacher", f"ce:{tiny_ce}", "--overwrite"))
    assert r.exit_code == 0, r.output
    assert open_scores(out).manifest["teachers"][0]["kind"] == "cross-encoder"


def _backend_case(tiny_beir, tiny_ce, tmp_path):
    """(resources, teacher spec, pairs, exact torch scores) shared by the backend tests."""
    from embed_kd.candidates.shared import SharedResources
    from embed_kd.data import load_beir
    from embed_kd.index.cache import EmbeddingCache
    from embed_kd.teachers.scorers import CrossEncoderTeacher, parse_teacher_spec

    ds = load_beir(tiny_beir, "train")
    res = SharedResources(ds, cache=EmbeddingCache(tmp_path / "cache"))
    pairs = [(ds.queries[q], ds.doc_text(d)) for q in ds.queries for d in list(ds.corpus)[:9]]
    spec = parse_teacher_spec(f"ce:{tiny_ce}")
    return res, spec, pairs, CrossEncoderTeacher(spec, res, batch_size=8).score_texts(pairs)


def test_onnx_backends(tiny_beir, tiny_ce, tmp_path):
    """Fast mode: ONNX Runtime fp32 equals torch; int8 runs and is recorded in the store's teacher entry."""
    pytest.importorskip("onnxruntime")
    from embed_kd.teachers.scorers import CrossEncoderTeacher

    res, spec, pairs, exact = _backend_case(tiny_beir, tiny_ce, tmp_path)
    fp32 = CrossEncoderTeacher(spec, res, batch_size=8, backend="onnx")
    np.testing.assert_allclose(fp32.score_texts(pairs), exact, atol=1e-4)
    int8 = CrossEncoderTeacher(spec, res, batch_size=8, backend="onnx-int8").score_texts(pairs)
    assert int8.shape == exact.shape and np.isfinite(int8).all()
    exports = sorted(p.name for p in (tmp_path / "cache" / "onnx").iterdir())
    assert len(exports) == 2 and all((tmp_path / "cache" / "onnx" / e / "meta.json").is_file() for e in exports)

    out = tmp_path / "s"
    args = _args(tiny_beir, out, tmp_path / "cache", "--teacher", f"ce:{tiny_ce}", "--backend", "onnx-int8",
                 "--chunk-size", "2")
    assert _invoke(args).exit_code == 0
    assert open_scores(out).manifest["teachers"][0]["backend"] == "onnx-int8"
    r = _invoke(_args(tiny_beir, out, tmp_path / "cache", "--teacher", f"ce:{tiny_ce}"))
    _assert_clean_error(r, None, "another config", "teachers")


def test_weights_from_ensemble_weights_file(tiny_beir, tmp_path):
    from embed_kd.errors import EmbedKDError
    from embed_kd.teachers.combine import parse_weights

    doc = {"schema": "embed-kd/ensemble-weights@1", "norm": "minmax", "fusion": "wsum",
           "weights": {"bm25": 0.25, "dense": 0.75}}
    f = tmp_path / "w.json"
    f.write_text(json.dumps(doc))
    assert parse_weights(str(f), ["bm25", "dense"]) == {"bm25": 0.25, "dense": 0.75}
    with pytest.raises(EmbedKDError, match="teachers are"):
        parse_weights(str(f), ["bm25", "ce"])
    out = tmp_path / "o"
    r = _invoke(_args(tiny_beir, out, tmp_path / "cache", "--teacher", "bm25", "--teacher", "b2=bm25",
                      "--weights", str(f)))
    _assert_clean_error(r, out, "weights are for")
    doc["weights"] = {"bm25": 0.25, "b2": 0.75}
    f.write_text(json.dumps(doc))
    r = _invoke(_args(tiny_beir, out, tmp_path / "cache", "--teacher", "bm25", "--teacher", "b2=bm25",
                      "--weights", str(f)))
    _assert_clean_error(r, out, "norm 'minmax'", "--ensemble minmax")
    r = _invoke(_args(tiny_beir, out, tmp_path / "cache", "--teacher", "bm25", "--teacher", "b2=bm25",
                      "--weights", str(f), "--ensemble", "minmax"))
    assert r.exit_code == 0, r.output
    assert open_scores(out).manifest["ensemble"] == {"norm": "minmax", "weights": {"bm25": 0.25, "b2": 0.75}}


def test_bi_encoder_and_bm25_teachers_agree_with_their_retrievers(tiny_beir, tiny_model, tmp_path):
    """A bi-encoder teacher's score is the similarity FAISS ranked by; BM25's the score bm25s ranked by."""
    out = tmp_path / "s"
    r = _invoke(_args(tiny_beir, out, tmp_path / "cache", "--candidates", f"dense:{tiny_model}:5",
                      "--teacher", f"bi:{tiny_model}", "--teacher", "bm25", "--ensemble", "mean"))
    assert r.exit_code == 0, r.output
    store = open_scores(out)
    name = tiny_model.name
    assert [t["kind"] for t in store.manifest["teachers"]] == ["bi-encoder", "bm25"]
    t = store.table().to_pydict()
    for src, col in (("dense", f"score__{name}"), ("bm25", "score__bm25")):
        for q in dict.fromkeys(t["query_id"]):
            got = sorted((t[f"rank__{src}"][i], t[col][i]) for i in range(len(t["query_id"]))
                         if t["query_id"][i] == q and t[f"rank__{src}"][i] > 0)
            assert got, (src, q)
            assert [r_ for r_, _ in got] == list(range(1, len(got) + 1))  # ranks 1..n, no gaps
            scores = [s for _, s in got]
            assert all(a >= b - 1e-5 for a, b in zip(scores, scores[1:])), (src, q, scores)
    # mean ensemble = plain average of the raw columns
    np.testing.assert_allclose(t["score"], (np.array(t[f"score__{name}"]) + np.array(t["score__bm25"])) / 2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bi_backend", ["openvino", "onnx"])
def test_bi_backend_equals_torch_and_is_recorded(tiny_beir, tiny_model, tmp_path, bi_backend):
    """--bi-backend runs dense candidates and bi-encoder teachers with a float32 graph: the same candidates and
    scores within 1e-4; the manifest records the runtime, and a store of the other runtime is another config."""
    pytest.importorskip("openvino" if bi_backend == "openvino" else "onnxruntime")

    def run(out, *extra):
        r = _invoke(_args(tiny_beir, out, tmp_path / "cache", "--candidates", f"dense:{tiny_model}:5",
                          "--teacher", f"bi:{tiny_model}", "--chunk-size", "2", *extra))
        assert r.exit_code == 0, r.output
        return open_scores(out)

    ref, fast = run(tmp_path / "torch"), run(tmp_path / "fast", "--bi-backend", bi_backend)
    t_ref, t_fast = ref.table().to_pydict(), fast.table().to_pydict()
    for col in ("query_id", "doc_id", "label", "rank__bm25", "rank__dense"):
        assert t_fast[col] == t_ref[col], col
    assert np.std(t_ref["score"]) > 0
    np.testing.assert_allclose(t_fast["score"], t_ref["score"], atol=1e-4, rtol=0)
    m_ref, m_fast = ref.manifest, fast.manifest
    assert m_fast["teachers"][0]["backend"] == bi_backend and m_ref["teachers"][0]["backend"] == "torch"
    dense = {c["name"]: c for c in m_fast["candidates"]}["dense"]
    assert dense["backend"] == bi_backend and "backend" not in {c["name"]: c for c in m_ref["candidates"]}["dense"]
    assert dense["model_fingerprint"] == {c["name"]: c for c in m_ref["candidates"]}["dense"]["model_fingerprint"]
    assert m_fast["config_fingerprint"] != m_ref["config_fingerprint"]
    # the document embeddings of each runtime have their own cache entry; the conversion is cached once
    metas = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "embeddings").glob("*/meta.json")]
    assert sorted(str(m.get("backend")) for m in metas if "queries:" not in m["corpus_fingerprint"]) == \
        sorted(["None", f"{bi_backend}-f32"])
    assert len(list((tmp_path / "cache" / "bi-encoder").iterdir())) == 1
    r = _invoke(_args(tiny_beir, tmp_path / "fast", tmp_path / "cache", "--candidates", f"dense:{tiny_model}:5",
                      "--teacher", f"bi:{tiny_model}", "--chunk-size", "2"))
    _assert_clean_error(r, None, "another config")
    # the same runtime again is the same config: the complete store is kept, not refused as another config
    r = _invoke(_args(tiny_beir, tmp_path / "fast", tmp_path / "cache", "--candidates", f"dense:{tiny_model}:5",
                      "--teacher", f"bi:{tiny_model}", "--chunk-size", "2", "--bi-backend", bi_backend))
    _assert_clean_error(r, None, "already complete")


def test_torch_bf16_backend(tiny_beir, tiny_ce, tmp_path, cpu_bf16, caplog):
    """Fast mode torch-bf16: the same predict with the model in bfloat16; close to exact, recorded in the
    store; on a CPU without native bf16 (faked) it warns that bf16 is emulated, on one with it it does not."""
    from scipy.stats import kendalltau

    from embed_kd.teachers.scorers import CrossEncoderTeacher

    res, spec, pairs, exact = _backend_case(tiny_beir, tiny_ce, tmp_path)
    with caplog.at_level("WARNING", logger="embed_kd"):
        teacher = CrossEncoderTeacher(spec, res, batch_size=8, backend="torch-bf16")
    emulated = [r for r in caplog.records if "no native bfloat16" in r.getMessage()]
    assert len(emulated) == (0 if cpu_bf16 else 1), caplog.text
    bf16 = teacher.score_texts(pairs)
    assert bf16.dtype == np.float32 and bf16.shape == exact.shape
    # bfloat16 keeps 8 significant bits: scores move a little (on this random tiny model up to ~5% of
    # their range), rankings barely
    assert np.abs(bf16 - exact).max() <= 0.1 * float(exact.max() - exact.min())
    assert kendalltau(bf16, exact).statistic >= 0.9

    out = tmp_path / "s"
    args = _args(tiny_beir, out, tmp_path / "cache", "--teacher", f"ce:{tiny_ce}", "--backend", "torch-bf16")
    assert _invoke(args).exit_code == 0
    assert open_scores(out).manifest["teachers"][0]["backend"] == "torch-bf16"


def test_openvino_backends(tiny_beir, tiny_ce, tmp_path, cpu_bf16, caplog):
    """OpenVINO: float32 equals torch (exact within 1e-4); bf16 is close and ranks alike; both cached,
    recorded in the store with the precision that ran, and a resumed run with another backend is refused.
    Without native bf16 (faked) openvino-bf16 warns and asks OpenVINO for float32; with it, it asks for
    bf16 (and OpenVINO compiles bf16 where the real CPU has it)."""
    pytest.importorskip("openvino")
    import openvino as ov
    from scipy.stats import kendalltau

    from embed_kd.teachers.openvino_backend import SCHEMA
    from embed_kd.teachers.scorers import CrossEncoderTeacher

    res, spec, pairs, exact = _backend_case(tiny_beir, tiny_ce, tmp_path)
    f32 = CrossEncoderTeacher(spec, res, batch_size=8, backend="openvino")
    assert f32.manifest_entry()["precision"] == "f32"
    np.testing.assert_allclose(f32.score_texts(pairs), exact, atol=1e-4)
    # batch composition must not change a pair's score (padding is masked): score one pair alone
    np.testing.assert_allclose(f32.score_texts(pairs[3:4]), exact[3:4], atol=1e-4)
    with caplog.at_level("WARNING", logger="embed_kd"):
        bf16 = CrossEncoderTeacher(spec, res, batch_size=8, backend="openvino-bf16")
    fallback = [r for r in caplog.records if "running float32 instead" in r.getMessage()]
    assert len(fallback) == (0 if cpu_bf16 else 1), caplog.text
    assert bf16._runtime.requested == ("bf16" if cpu_bf16 else "f32")
    real_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")  # the real CPU, unfaked
    assert bf16.manifest_entry()["precision"] == ("bf16" if cpu_bf16 and real_bf16 else "f32")
    fast = bf16.score_texts(pairs)
    assert fast.dtype == np.float32 and fast.shape == exact.shape
    assert np.abs(fast - exact).max() <= 0.1 * float(exact.max() - exact.min())
    assert kendalltau(fast, exact).statistic >= 0.9
    exports = list((tmp_path / "cache" / "openvino").iterdir())  # one conversion serves both precisions
    assert len(exports) == 1
    meta = json.loads((exports[0] / "meta.json").read_text())
    assert meta["schema"] == SCHEMA and meta["model_fingerprint"] == f32.fingerprint

    out = tmp_path / "s"
    args = _args(tiny_beir, out, tmp_path / "cache", "--teacher", f"ce:{tiny_ce}", "--backend", "openvino",
                 "--chunk-size", "2")
    assert _invoke(args).exit_code == 0, "openvino run failed"
    entry = open_scores(out).manifest["teachers"][0]
    assert (entry["backend"], entry["precision"]) == ("openvino", "f32")
    r = _invoke(_args(tiny_beir, out, tmp_path / "cache", "--teacher", f"ce:{tiny_ce}", "--backend", "openvino-bf16"))
    _assert_clean_error(r, None, "another config", "teachers",
                        warnings=() if cpu_bf16 else ("openvino-bf16: this CPU has no native bfloat16",))
