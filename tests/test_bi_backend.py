"""``--backend openvino|onnx`` for bi-encoders: exact-grade (torch's embeddings up to rounding), cached, recorded."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from click.testing import CliRunner

from embed_kd.cli import main
from embed_kd.models import fingerprint_model, load_sentence_transformer
from embed_kd.teachers.bi_backend import with_backend

TEXTS = ["cat purr kitten ?", "the sun is a star of light and heat, a longer text than the others", "dna"]


@pytest.mark.parametrize("backend", ["openvino", "onnx"])
def test_graph_backend_equals_torch(tiny_model, tmp_path, backend):
    pytest.importorskip("openvino" if backend == "openvino" else "onnxruntime")
    ref_model = load_sentence_transformer(tiny_model)
    ref = ref_model.encode(TEXTS, batch_size=2)
    fast = with_backend(load_sentence_transformer(tiny_model), backend, cache_root=tmp_path)
    np.testing.assert_allclose(fast.encode(TEXTS, batch_size=2), ref, atol=1e-5, rtol=0)
    assert fast.embed_kd_backend == f"{backend}-f32" and fingerprint_model(fast) == fingerprint_model(ref_model)
    (folder,) = (tmp_path / "bi-encoder").iterdir()
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["schema"] == "embed-kd/bi-encoder-export@1" and meta["backend"] == backend
    again = with_backend(load_sentence_transformer(tiny_model), backend, cache_root=tmp_path)  # from the cache
    np.testing.assert_allclose(again.encode(TEXTS), ref_model.encode(TEXTS), atol=1e-5, rtol=0)
    assert [p.name for p in (tmp_path / "bi-encoder").iterdir()] == [folder.name]


def test_eval_backend_same_metrics_own_cache_entry(tiny_beir, tiny_model, tiny_model_b, cache_dir, tmp_path):
    pytest.importorskip("openvino")

    def run(name, *extra):
        out = tmp_path / f"{name}.json"
        r = CliRunner().invoke(main, ["eval", "--no-progress", "-q", "--cache-dir", str(cache_dir), "--data",
                                      str(tiny_beir), "--query-model", str(tiny_model_b), "--doc-model",
                                      str(tiny_model), "--allow-teacher-mismatch", *extra, "-o", str(out)])
        assert r.exit_code == 0, r.output
        return json.loads(out.read_text())

    torch_r, ov_r = run("torch"), run("ov", "--backend", "openvino")
    assert {k: round(v, 4) for k, v in ov_r["metrics"].items()} == {k: round(v, 4) for k, v in torch_r["metrics"].items()}
    assert ov_r["doc_model"]["backend"] == ov_r["query_model"]["backend"] == "openvino-f32"
    assert "backend" not in torch_r["doc_model"]
    assert ov_r["doc_model"]["fingerprint"] == torch_r["doc_model"]["fingerprint"]
    assert ov_r["cache"]["path"] != torch_r["cache"]["path"]  # entries of two backends never mix
    meta = json.loads((__import__("pathlib").Path(ov_r["cache"]["path"]) / "meta.json").read_text())
    assert meta["backend"] == "openvino-f32"


def test_index_add_backend_equals_a_torch_build(tiny_beir, tiny_model, cache_dir, tmp_path):
    """``index add --backend openvino`` (documents from a gzipped TSV) appends what torch would have (same hits, scores within 1e-5) and records
    the runtime in its batch; the index's doc model (fingerprint) is unchanged."""
    pytest.importorskip("openvino")
    from embed_kd.data import load_corpus
    from embed_kd.index.store import open_index

    def index(*args):
        r = CliRunner().invoke(main, ["index", *args, "--no-progress", "-q", "--cache-dir", str(cache_dir)])
        assert r.exit_code == 0, r.output
        return r

    corpus = load_corpus(tiny_beir / "corpus.jsonl")
    new = tmp_path / "new.tsv.gz"  # `index add --docs` takes any corpus file the readers take, not only BEIR's
    new.write_bytes(gzip.compress(("id\ttitle\ttext\n" + "".join(f"{d}\t{v['title']}\t{v['text']}\n" for d, v in
                                                                 list(corpus.items())[20:])).encode()))
    part, full = tmp_path / "part", tmp_path / "full"
    index("build", "--data", str(tiny_beir), "--doc-model", str(tiny_model), "-o", str(part), "--limit-docs", "20")
    index("add", str(part), "--docs", str(new), "--backend", "openvino")
    index("build", "--data", str(tiny_beir), "--doc-model", str(tiny_model), "-o", str(full))
    a, b = open_index(part), open_index(full)
    assert a.ids == b.ids and a.manifest["doc_model"] == b.manifest["doc_model"]
    assert a.manifest["corpus"]["fingerprint"] == b.manifest["corpus"]["fingerprint"]
    assert [x.get("backend") for x in a.manifest["batches"]] == [None, "openvino-f32"]
    np.testing.assert_allclose(a.index.reconstruct_n(0, a.n), b.index.reconstruct_n(0, b.n), atol=1e-5, rtol=0)
    q = b.index.reconstruct_n(0, b.n)[::5]
    ra, rb = a.search(q, k=5), b.search(q, k=5)
    assert [r[0] for r in ra] == [r[0] for r in rb]
    assert "encoded with openvino-f32" in CliRunner().invoke(main, ["index", "info", str(part)]).stdout


def test_serve_backend_same_hits(tiny_beir, tiny_model, cache_dir, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from embed_kd.serve.engine import SearchEngine

    monkeypatch.setenv("EMBED_KD_CACHE", str(cache_dir))
    idx = tmp_path / "idx"
    r = CliRunner().invoke(main, ["index", "build", "--no-progress", "-q", "--cache-dir", str(cache_dir), "--data",
                                  str(tiny_beir), "--doc-model", str(tiny_model), "-o", str(idx)])
    assert r.exit_code == 0, r.output
    items = [(t, 5) for t in TEXTS]
    plain, fast = SearchEngine.load(idx), SearchEngine.load(idx, backend="onnx")
    assert fast.query_info["backend"] == "onnx-f32" and fast.alignment == "same model"
    got, want = fast.search_items(items), plain.search_items(items)
    assert [g[0] for g in got] == [w[0] for w in want]
    np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], atol=1e-5)


@pytest.mark.parametrize("mode", ["bm25", "ensemble", "mteb", "sts"])
def test_eval_backend_refused_where_it_would_be_ignored(mode, tiny_beir, tiny_model, tmp_path):
    """--backend converts the dense retrieval's encoders; modes that run on torch refuse it (one Error line,
    exit 2, before any work) instead of silently ignoring it."""
    ens = tmp_path / "ens.yaml"
    ens.write_text("schema: embed-kd/ensemble@1\nnorm: zscore\nmembers:\n  - {name: b, spec: bm25}\n")
    args = {"bm25": ["--data", str(tiny_beir), "--model", "bm25"],
            "ensemble": ["--data", str(tiny_beir), "--ensemble", str(ens)],
            "mteb": ["--mteb", "SciFact", "--model", str(tiny_model)],
            "sts": ["--sts", str(tmp_path / "pairs.tsv"), "--model", str(tiny_model)]}[mode]
    r = CliRunner().invoke(main, ["eval", "--backend", "openvino", "--no-progress", "-q", *args,
                                  "-o", str(tmp_path / "r.json")])
    errors = [line for line in r.output.splitlines() if line.startswith("Error: ")]
    assert r.exit_code == 2 and len(errors) == 1 and "--backend openvino" in errors[0], r.output
    assert not (tmp_path / "r.json").exists()
