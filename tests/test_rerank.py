"""Cross-encoder re-ranking: merge maths by hand, a tiny config-built CrossEncoder, and the eval wiring."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from embed_kd.data import load_beir
from embed_kd.evaluation.rerank import rerank_run
from embed_kd.runs import merge_rerank, top_k
from embed_kd.teachers.rerank_scores import score_pairs


def build_tiny_cross_encoder(bi_encoder_dir, out_dir, seed: int = 0):
    """``BertForSequenceClassification(num_labels=1)`` + the tiny bi-encoder's tokenizer, loadable by CrossEncoder."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    hf = bi_encoder_dir.parent / f"{bi_encoder_dir.name}-hf"
    tok = BertTokenizerFast.from_pretrained(str(hf))
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=1)
    BertForSequenceClassification(cfg).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def tiny_ce(tiny_model, tmp_path_factory):
    return build_tiny_cross_encoder(tiny_model, tmp_path_factory.mktemp("models") / "tiny-ce")


def test_merge_rerank_by_hand():
    first = {"q": {"a": 5.0, "b": 4.0, "c": 3.0, "d": 2.0}}
    out = merge_rerank(first, {"q": {"a": 0.1, "b": 0.3, "c": 0.2}}, depth=3)["q"]
    assert list(out) == ["b", "c", "a", "d"]            # re-ranked top 3, then the rest in first-stage order
    assert min(out[d] for d in "abc") > out["d"]
    assert merge_rerank({"q": {"a": 1.0}}, {}, depth=3) == {"q": {"a": 1.0}}


def test_score_pairs_are_raw_logits(tiny_beir, tiny_ce):
    from sentence_transformers import CrossEncoder

    ds = load_beir(tiny_beir, "test")
    ce = CrossEncoder(str(tiny_ce), device="cpu")
    q = next(iter(ds.queries))
    docs = list(ds.corpus)[:4]
    got = score_pairs(ce, ds.queries, ds.corpus, {q: docs}, show_progress=False)[q]
    import torch

    from embed_kd.data.beir import doc_text

    want = ce.predict([(ds.queries[q], doc_text(ds.corpus[d])) for d in docs], activation_fn=torch.nn.Identity())
    assert [got[d] for d in docs] == pytest.approx([float(x) for x in want], abs=1e-5)


def test_rerank_run_orders_head_by_cross_encoder(tiny_beir, tiny_ce):
    from sentence_transformers import CrossEncoder

    ds = load_beir(tiny_beir, "test")
    ce = CrossEncoder(str(tiny_ce), device="cpu")
    first = {q: {d: float(len(ds.corpus) - i) for i, d in enumerate(ds.corpus)} for q in ds.queries}
    merged, ce_scores = rerank_run(ce, ds, first, depth=5, show_progress=False)
    for q in ds.queries:
        head = list(top_k(first, 5)[q])
        assert set(ce_scores[q]) == set(head)
        ranked = list(merged[q])
        assert ranked[:5] == sorted(head, key=lambda d: (-ce_scores[q][d], d))
        assert ranked[5:] == list(first[q])[5:]


def test_eval_cli_rerank(tiny_beir, tiny_ce, tmp_path):
    from embed_kd.cli import main

    base, rr = tmp_path / "bm25.json", tmp_path / "rr.json"
    r1 = CliRunner().invoke(main, ["eval", "--data", str(tiny_beir), "--model", "bm25", "-o", str(base), "-q",
                                   "--no-progress"])
    assert r1.exit_code == 0, r1.output
    r2 = CliRunner().invoke(main, ["eval", "--data", str(tiny_beir), "--model", "bm25", "--rerank", str(tiny_ce),
                                   "--rerank-depth", "3", "-o", str(rr), "-q", "--no-progress"])
    assert r2.exit_code == 0, r2.output
    b, r = json.loads(base.read_text()), json.loads(rr.read_text())
    assert r["mode"] == "rerank" and r["rerank"]["depth"] == 3
    assert r["first_stage"]["metrics"] == b["metrics"]
    assert 0 < r["rerank"]["pairs"] <= 3 * b["dataset"]["n_queries"]
    # re-ranking only reorders the top 3: Recall@100 of the first stage is unchanged
    assert r["metrics"]["recall_at_100"] == pytest.approx(b["metrics"]["recall_at_100"])
