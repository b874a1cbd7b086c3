"""Compressed outputs: truncation + renormalisation and quantization, against values computed by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from embed_kd.cli import main
from embed_kd.data import load_beir
from embed_kd.encode import encode_texts
from embed_kd.index.compression import CompressedSearch, Compression, calibration_ranges, dequantize, truncate
from embed_kd.models import load_sentence_transformer

DOCS = np.array([[0.0, 1.0, 0.5], [1.0, 0.0, -0.5], [0.5, 0.5, 0.0], [0.2, -1.0, 1.0]], dtype=np.float32)


def test_truncate_renormalises():
    x = np.array([[0.6, 0.0, 0.8], [0.0, 0.0, 1.0], [3.0, 4.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(truncate(x, 2, normalize=True), [[1.0, 0.0], [0.0, 0.0], [0.6, 0.8]], atol=1e-7)
    np.testing.assert_allclose(truncate(x, 2, normalize=False), x[:, :2])
    assert np.array_equal(truncate(x, None, normalize=True), x)  # no truncation: the vectors as they are


def test_int8_codes_and_scores_by_hand():
    ranges = calibration_ranges(DOCS)
    np.testing.assert_array_equal(ranges, [[0.0, -1.0, -0.5], [1.0, 1.0, 1.0]])
    cs = CompressedSearch.build(DOCS, Compression(precision="int8"), normalize=False)
    # code = floor((x - min) / ((max - min) / 255)) - 128, clipped to [0, 255] before the shift, in float32
    # (as sentence-transformers computes it: the maximum lands on 254.99998 → 126, not 127)
    steps = (np.array([1.0, 2.0, 1.5], dtype=np.float32) / np.float32(255)).astype(np.float32)
    by_hand = (np.clip(np.floor((DOCS - ranges[0]) / steps), 0, 255) - 128).astype(np.int64)
    assert by_hand[0].tolist() == [-128, 126, 42]  # 0 → bucket 0; 1.0 of [-1, 1] → 254; 0.5 of [-0.5, 1] → 170
    np.testing.assert_array_equal(cs.stored_codes(np.arange(4)), by_hand)
    q = np.array([[1.0, 0.0, 0.5]], dtype=np.float32)
    q_codes = (np.clip(np.floor((q - ranges[0]) / steps), 0, 255) - 128).astype(np.int64)
    scores, rows = cs.search(q, k=4)
    want = (by_hand @ q_codes[0]).astype(np.float64)
    assert rows[0].tolist() == np.argsort(-want, kind="stable").tolist()
    np.testing.assert_allclose(scores[0], np.sort(want)[::-1])
    assert cs.bytes_per_vector == 3
    # re-scoring: the float query against the dequantised bucket starts
    rs = CompressedSearch.build(DOCS, Compression(precision="int8", rescore=4), normalize=False)
    deq = (by_hand + 128) * steps + ranges[0]
    np.testing.assert_allclose(dequantize(by_hand, "int8", ranges, 3), deq, atol=1e-6)
    s2, r2 = rs.search(q, k=2)
    want2 = deq @ q[0]
    assert r2[0].tolist() == np.argsort(-want2, kind="stable")[:2].tolist()
    np.testing.assert_allclose(s2[0], np.sort(want2)[::-1][:2], atol=1e-6)


@pytest.mark.parametrize("precision", ["binary", "ubinary"])
def test_binary_hamming_and_rescore_by_hand(precision):
    signs = np.where(DOCS > 0, 1.0, -1.0)  # bit = x > 0 → ±1
    q = np.array([[0.3, 0.9, -0.2]], dtype=np.float32)
    qs = np.where(q > 0, 1.0, -1.0)
    cs = CompressedSearch.build(DOCS, Compression(precision=precision), normalize=False)
    scores, rows = cs.search(q, k=4)
    want = signs @ qs[0]  # dim - 2·hamming
    np.testing.assert_array_equal(np.sort(scores[0])[::-1], np.sort(want)[::-1])
    assert [want[r] for r in rows[0]] == sorted(want, reverse=True)
    rs = CompressedSearch.build(DOCS, Compression(precision=precision, rescore=3), normalize=False)
    s2, r2 = rs.search(q, k=2)
    top3 = rows[0][:3]
    float_scores = signs[top3] @ q[0]
    order = np.argsort(-float_scores, kind="stable")[:2]
    assert r2[0].tolist() == top3[order].tolist()
    np.testing.assert_allclose(s2[0], float_scores[order], atol=1e-6)


def test_refusals():
    with pytest.raises(Exception, match="--index flat"):
        Compression(precision="int8").validate(8, "hnsw")
    with pytest.raises(Exception, match="--rescore"):
        Compression(rescore=5).validate(8)
    with pytest.raises(Exception, match="choose 1..8"):
        Compression(truncate_dim=9).validate(8)


def _eval(args, cache_dir, out):
    r = CliRunner().invoke(main, ["eval", "--no-progress", "-q", "--cache-dir", str(cache_dir), *args, "-o", str(out),
                                  "--save-run", str(out.with_suffix(".run.json"))])
    assert r.exit_code == 0, r.output
    return json.loads(out.read_text()), json.loads(out.with_suffix(".run.json").read_text())


@pytest.mark.parametrize("precision", ["float32", "ubinary"])
def test_eval_truncated_equals_brute_force_by_hand(tiny_beir, tiny_model, cache_dir, tmp_path, precision):
    result, run = _eval(["--data", str(tiny_beir), "--model", str(tiny_model), "--truncate-dim", "16", "--precision",
                         precision, "--top-k", "5"], cache_dir, tmp_path / "r.json")
    assert {k: result["index"][k] for k in ("truncate_dim", "precision", "rescore")} == {
        "truncate_dim": 16, "precision": precision, "rescore": None}
    assert result["index"]["bytes_per_doc"] == (2 if precision == "ubinary" else 64)
    ds = load_beir(tiny_beir, "test")
    model = load_sentence_transformer(tiny_model)
    from embed_kd.data.beir import doc_text

    d = encode_texts(model, [doc_text(ds.corpus[i]) for i in ds.corpus], show_progress=False)[:, :16]
    qids = list(ds.queries)
    q = encode_texts(model, [ds.queries[i] for i in qids], role="query", show_progress=False)[:, :16]
    d, q = d / np.linalg.norm(d, axis=1, keepdims=True), q / np.linalg.norm(q, axis=1, keepdims=True)
    if precision == "ubinary":
        d, q = np.where(d > 0, 1.0, -1.0), np.where(q > 0, 1.0, -1.0)
    ids = list(ds.corpus)
    for i, qid in enumerate(qids):
        got = run[qid]
        want = d @ q[i]
        top = sorted(got.values(), reverse=True)
        np.testing.assert_allclose(top, np.sort(want)[::-1][:5], atol=1e-5)
        for doc_id, score in got.items():
            assert score == pytest.approx(float(want[ids.index(doc_id)]), abs=1e-5)


def test_index_build_and_serve_compressed(tiny_beir, tiny_model, cache_dir, tmp_path):
    from embed_kd.index.store import open_index
    from embed_kd.serve.engine import SearchEngine

    idx = tmp_path / "idx"
    r = CliRunner().invoke(main, ["index", "build", "--no-progress", "-q", "--cache-dir", str(cache_dir), "--data",
                                  str(tiny_beir), "--model", str(tiny_model), "--truncate-dim", "24",
                                  "--precision", "int8", "-o", str(idx)])
    assert r.exit_code == 0, r.output
    m = json.loads((idx / "manifest.json").read_text())
    assert m["dim"] == 24 and m["compression"]["precision"] == "int8" and len(m["compression"]["ranges"][0]) == 24
    assert m["factory"] == "SQ8_direct_signed"
    engine = SearchEngine.load(idx)
    texts = ["cat purr ?", "the sun is a star"]
    hits = engine.search_items([(t, 5) for t in texts])
    # the same search in memory: the index's own codes, queries quantized with the recorded ranges
    ds_model = load_sentence_transformer(tiny_model)
    opened = open_index(idx)
    q = encode_texts(ds_model, texts, role="query", show_progress=False)
    scores, rows = opened.compressed.search(q, 5)
    assert [h[2] for h in hits] == rows.tolist()
    # serve-time compression of a float index gives what a compressed build gives
    flat = tmp_path / "flat"
    r = CliRunner().invoke(main, ["index", "build", "--no-progress", "-q", "--cache-dir", str(cache_dir), "--data",
                                  str(tiny_beir), "--model", str(tiny_model), "-o", str(flat)])
    assert r.exit_code == 0, r.output
    live = SearchEngine.load(flat, compression=Compression(truncate_dim=24, precision="int8"))
    assert live.search_items([(t, 5) for t in texts]) == hits
    with pytest.raises(Exception, match="only --rescore may change"):
        SearchEngine.load(idx, compression=Compression(precision="ubinary"))


def test_cli_refuses_bad_compression(tiny_beir, tiny_model, cache_dir, tmp_path):
    r = CliRunner().invoke(main, ["eval", "-q", "--no-progress", "--cache-dir", str(cache_dir), "--data",
                                  str(tiny_beir), "--model", str(tiny_model), "--precision", "int8", "--index", "hnsw"])
    assert r.exit_code == 2 and "--index flat" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["eval", "-q", "--data", str(tiny_beir), "--model", "bm25", "--truncate-dim", "8"])
    assert r.exit_code == 2 and "dense" in r.output
