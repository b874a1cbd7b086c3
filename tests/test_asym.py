"""The asymmetric Router artifact: one SentenceTransformer folder, student queries × teacher documents."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from embed_kd.cli import main
from embed_kd.models import fingerprint_model, load_sentence_transformer
from embed_kd.students.asym import build_asym, is_asym_folder, split_routes

TEXTS = ["cat purr kitten ?", "the sun is a star of light", "dna and protein in the cell", "wave"]


@pytest.fixture(scope="module")
def student(tmp_path_factory, tiny_model_wide) -> Path:
    """A 48-dim encoder with a learned projection to the teacher's 32 dims (the student shape embed-kd trains)."""
    from embed_kd.students.build import with_projection

    path = tmp_path_factory.mktemp("asym") / "student"
    with_projection(load_sentence_transformer(tiny_model_wide, device="cpu"), 32).save(str(path))
    return path


@pytest.fixture(scope="module")
def asym(tmp_path_factory, student, tiny_model) -> Path:
    out = tmp_path_factory.mktemp("asym-out") / "asym"
    build_asym(str(student), str(tiny_model), out)
    return out


def test_router_routes_equal_the_two_models(asym, student, tiny_model):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(asym), device="cpu")
    s = SentenceTransformer(str(student), device="cpu")
    t = SentenceTransformer(str(tiny_model), device="cpu")
    assert [type(m).__name__ for m in s.children()][-2:] == ["Dense", "Normalize"]  # the projection is in the route
    q, d = model.encode_query(TEXTS), model.encode_document(TEXTS)
    np.testing.assert_allclose(q, s.encode(TEXTS), atol=1e-6, rtol=0)
    np.testing.assert_allclose(d, t.encode(TEXTS), atol=1e-6, rtol=0)
    assert not np.allclose(q, d, atol=1e-3)  # two towers, really
    np.testing.assert_allclose(model.encode(TEXTS), d, atol=1e-6, rtol=0)  # plain encode: the document route


def test_loads_without_embed_kd_or_remote_code(asym):
    code = ("import sys; from sentence_transformers import SentenceTransformer; "
            f"m = SentenceTransformer({str(asym)!r}, device='cpu', trust_remote_code=False); "
            "print(m.encode_query(['cat']).shape[-1], m.encode_document(['cat']).shape[-1], "
            "any(k.startswith('embed_kd') for k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.split() == ["32", "32", "False"]


def test_manifest_card_and_route_fingerprints(asym, student, tiny_model):
    m = json.loads((asym / "embed_kd_asym.json").read_text())
    assert m["schema"] == "embed-kd/asym@1" and is_asym_folder(asym)
    teacher = load_sentence_transformer(tiny_model)
    s = load_sentence_transformer(student)
    assert m["document"]["fingerprint"] == fingerprint_model(teacher)
    assert m["query"]["fingerprint"] == fingerprint_model(s)
    assert m["query"]["params"] == sum(p.numel() for p in s.parameters())
    assert m["query"]["layers"] == 2 and m["query"]["modules"][-2:] == ["Dense", "Normalize"]
    q, d = split_routes(load_sentence_transformer(asym))
    assert (fingerprint_model(q), fingerprint_model(d)) == (m["query"]["fingerprint"], m["document"]["fingerprint"])
    card = (asym / "README.md").read_text()
    assert "| query (`encode_query`) |" in card and f"{m['query']['params'] / 1e6:.2f}M parameters" in card
    declared = json.loads((asym / "embed_kd_manifest.json").read_text())["embedding_teacher"]["fingerprint"]
    assert declared == m["document"]["fingerprint"]
    assert not is_asym_folder(tiny_model)
    plain = load_sentence_transformer(tiny_model)
    assert split_routes(plain) == (plain, plain)


def test_eval_with_asym_model_equals_two_folder_eval(asym, student, tiny_model, tiny_beir, cache_dir, tmp_path):
    def run(*args):
        out = tmp_path / f"r{len(list(tmp_path.iterdir()))}.json"
        r = CliRunner().invoke(main, ["eval", "--no-progress", "-q", "--cache-dir", str(cache_dir), "--data",
                                      str(tiny_beir), *args, "-o", str(out)])
        assert r.exit_code == 0, r.output
        return json.loads(out.read_text())

    two = run("--query-model", str(student), "--doc-model", str(tiny_model))
    one = run("--model", str(asym))
    assert one["mode"] == two["mode"] == "asymmetric"
    assert one["metrics"] == two["metrics"] and one["per_query"] == two["per_query"]
    assert one["query_model"]["fingerprint"] == two["query_model"]["fingerprint"]
    assert one["doc_model"]["fingerprint"] == two["doc_model"]["fingerprint"]
    assert (one["query_model"]["route"], one["doc_model"]["route"]) == ("query", "document")
    assert one["cache"]["docs"] == "hit" and one["cache"]["path"] == two["cache"]["path"]  # the teacher's entry


def test_index_and_serve_with_asym_model(asym, student, tiny_model, tiny_beir, cache_dir, tmp_path):
    from embed_kd.serve.engine import SearchEngine

    idx = tmp_path / "idx"
    r = CliRunner().invoke(main, ["index", "build", "--no-progress", "-q", "--cache-dir", str(cache_dir), "--data",
                                  str(tiny_beir), "--model", str(asym), "-o", str(idx)])
    assert r.exit_code == 0, r.output
    manifest = json.loads((idx / "manifest.json").read_text())
    assert manifest["doc_model"]["fingerprint"] == fingerprint_model(load_sentence_transformer(tiny_model))
    engine = SearchEngine.load(idx)  # no --query-model: the index's (asym) model, i.e. its query route
    assert engine.query_info["fingerprint"] == fingerprint_model(load_sentence_transformer(student))
    assert engine.alignment == "declared"
    by_student = SearchEngine.load(idx, str(student), expect_teacher_fingerprint=manifest["doc_model"]["fingerprint"])
    items = [(t, 5) for t in TEXTS]
    assert engine.search_items(items) == by_student.search_items(items)


def test_export_cli_refuses_overwrite_and_mismatched_dims(student, tiny_model, tiny_model_wide, tmp_path):
    out = tmp_path / "exported"
    args = ["export", "asym", "-q", "--query-model", str(student), "--doc-model", str(tiny_model), "-o", str(out)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert is_asym_folder(out) and "documents by" in r.output
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "refusing" in again.output and is_asym_folder(out)
    bad = CliRunner().invoke(main, ["export", "asym", "--query-model", str(tiny_model_wide), "--doc-model",
                                    str(tiny_model), "-o", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "one embedding space" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "bad").exists()


def test_mteb_with_asym_model_equals_two_folder(asym, student, tiny_model, tiny_beir, tmp_path):
    pytest.importorskip("mteb")

    def run(name, *args):
        out = tmp_path / f"{name}.json"
        r = CliRunner().invoke(main, ["eval", "--no-progress", "-q", "--no-cache", "--mteb", f"beir:{tiny_beir}",
                                      *args, "-o", str(out)])
        assert r.exit_code == 0, r.output
        return json.loads(out.read_text())

    one = run("one", "--model", str(asym))
    two = run("two", "--query-model", str(student), "--doc-model", str(tiny_model))
    assert one["mode"] == two["mode"] == "asymmetric"
    assert one["metrics"] == two["metrics"]
    assert one["doc_model"]["fingerprint"] == two["doc_model"]["fingerprint"]


def test_static_query_tower(tiny_model, tmp_path):
    """A static (embedding-bag) student as the query route: no transformer layers, its own tokenizer."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, StaticEmbedding

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import tiny_tokenizer

    torch.manual_seed(0)
    static = SentenceTransformer(modules=[StaticEmbedding(tiny_tokenizer(), embedding_dim=32), Normalize()],
                                 device="cpu")
    out = tmp_path / "static-asym"
    m = build_asym(static, str(tiny_model), out)
    assert m["query"]["layers"] == 0 and m["query"]["modules"][0] == "StaticEmbedding"
    assert m["query"]["max_seq_length"] is None or isinstance(m["query"]["max_seq_length"], int)
    loaded = SentenceTransformer(str(out), device="cpu")
    np.testing.assert_allclose(loaded.encode_query(TEXTS), static.encode(TEXTS), atol=1e-6, rtol=0)
    np.testing.assert_allclose(loaded.encode_document(TEXTS), SentenceTransformer(str(tiny_model), device="cpu")
                               .encode(TEXTS), atol=1e-6, rtol=0)
    assert "static (no transformer layers)" in (out / "README.md").read_text()
