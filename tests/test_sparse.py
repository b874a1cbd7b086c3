"""Sparse (SPLADE) students: FLOPS regulariser + loss wiring (hand-computed), the tied MLM head, exact
inverted-index search, and `embed-kd train --student-type sparse` → `embed-kd eval` end to end on tiny
config-built models."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from conftest import VOCAB, tiny_tokenizer  # noqa: E402

from embed_kd.cli import main  # noqa: E402


def build_tiny_mlm(path: Path, *, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A 2-layer ``BertForMaskedLM`` over the tiny VOCAB, built from a config (an MLM checkpoint folder)."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=hidden * 2, max_position_embeddings=64)
    BertForMaskedLM(cfg).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory) -> Path:
    return build_tiny_mlm(tmp_path_factory.mktemp("models") / "tiny-mlm")


@pytest.fixture(scope="module")
def tiny_sparse(tiny_mlm):
    from embed_kd.students.sparse import SparseHeadOptions, sparse_encoder_from_mlm_folder

    torch.manual_seed(0)
    return sparse_encoder_from_mlm_folder(tiny_mlm, SparseHeadOptions(query_length=16, document_length=32))


# --- FLOPS regulariser and loss wiring, hand-computed ------------------------------------------------

def test_flops_regulariser_hand_computed(tiny_sparse):
    from sentence_transformers.sparse_encoder.losses import FlopsLoss

    x = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, 0.0]])
    # mean over the batch = [2, 0, 1]; FLOPS = 2² + 0² + 1² = 5
    assert FlopsLoss(tiny_sparse).compute_loss_from_embeddings(x).item() == pytest.approx(5.0)
    # threshold 1: the second row has 1 non-zero (not > 1) and is masked: mean = [0.5, 0, 1] → 1.25
    assert FlopsLoss(tiny_sparse, threshold=1).compute_loss_from_embeddings(x).item() == pytest.approx(1.25)


def _cfg(**sparse):
    from embed_kd.training.config import TrainConfig

    return TrainConfig.from_dict({
        "data": "d", "scores": "s", "output": "o", "student": {"type": "sparse", "model": "m"},
        "losses": {"score": "margin_mse", "score_documents": "student", "align": "none", "score_scale": 0.5},
        "sparse": {"query_flops_weight": 0.1, "doc_flops_weight": 0.01, **sparse}}).validate()


def test_splade_margin_mse_wiring_on_tiny_tensors(tiny_sparse):
    from embed_kd.training.sparse_run import build_sparse_loss

    loss = build_sparse_loss(_cfg(), tiny_sparse)
    q = torch.tensor([[1.0, 0.0, 1.0]])
    p = torch.tensor([[1.0, 1.0, 0.0]])
    n = torch.tensor([[0.0, 0.0, 2.0]])
    labels = torch.tensor([[3.0, 1.0]])
    # student margin q·p − q·n = 1 − 2 = −1; teacher margin 0.5·(3 − 1) = 1; MSE = (−1 − 1)² = 4
    assert loss.loss.compute_loss_from_embeddings([q, p, n], labels).item() == pytest.approx(4.0)
    assert loss.query_regularizer_weight == 0.1 and loss.document_regularizer_weight == 0.01
    # documents regularised together: mean of [p; n] = [0.5, 0.5, 1] → FLOPS 1.5
    assert loss.document_regularizer.compute_loss_from_embeddings(torch.cat([p, n])).item() == pytest.approx(1.5)
    assert loss.query_regularizer.compute_loss_from_embeddings(q).item() == pytest.approx(2.0)


def test_splade_loss_forward_matches_its_parts(tiny_sparse):
    """SpladeLoss on a real (tiny) model = Margin-MSE + λ_q·FLOPS(queries) + λ_d·FLOPS(documents)."""
    from embed_kd.training.sparse_run import build_sparse_loss

    loss = build_sparse_loss(_cfg(), tiny_sparse)
    tiny_sparse.eval()
    texts = [["cat purr ?", "sun light ?"], ["the cat and a kitten", "the sun is a star"],
             ["the dog barks", "rain and cloud"]]
    features = [tiny_sparse.preprocess(t, task="query" if i == 0 else "document") for i, t in enumerate(texts)]
    labels = torch.tensor([[2.0, -1.0], [1.0, 0.0]])
    with torch.no_grad():
        out = loss(features, labels)
        q, p, n = (tiny_sparse(dict(f))["sentence_embedding"] for f in features)
    margin = (q * p).sum(1) - (q * n).sum(1)
    expected = torch.mean((margin - 0.5 * (labels[:, 0] - labels[:, 1])) ** 2)
    flops = lambda x: torch.sum(x.mean(0) ** 2)  # noqa: E731
    assert out["base_loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["query_regularizer_loss"].item() == pytest.approx(0.1 * flops(q).item(), rel=1e-5)
    assert out["document_regularizer_loss"].item() == pytest.approx(0.01 * flops(torch.cat([p, n])).item(), rel=1e-5)
    assert (q >= 0).all() and q.shape[1] == len(VOCAB)


def test_sparse_config_refuses_dense_only_settings():
    from embed_kd.errors import EmbedKDError
    from embed_kd.training.config import TrainConfig

    base = {"data": "d", "scores": "s", "output": "o", "student": {"type": "sparse", "model": "m"}}
    with pytest.raises(EmbedKDError, match="losses.align"):
        TrainConfig.from_dict(base).validate()  # default align: cosine
    with pytest.raises(EmbedKDError, match="score_documents"):
        TrainConfig.from_dict({**base, "losses": {"align": "none"}}).validate()
    with pytest.raises(EmbedKDError, match="sparse.pooling"):
        _cfg(pooling="mean")
    with pytest.raises(EmbedKDError, match="flops_warmup_ratio"):
        _cfg(flops_warmup_ratio=0)
    with pytest.raises(EmbedKDError, match="student: type"):
        TrainConfig.from_dict({**base, "student": {"type": "colbert", "model": "m"}}).validate()


# --- the MLM head built on an encoder without one ---------------------------------------------------

def test_head_built_on_a_dense_encoder_is_tied_and_reloads(tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sparse_encoder import SparseEncoder
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel

    from embed_kd.students.build import StudentSpec
    from embed_kd.students.sparse import SparseHeadOptions, build_sparse_student

    raw = tmp_path / "enc-hf"
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(raw)
    tiny_tokenizer().save_pretrained(raw)
    t = Transformer(str(raw), max_seq_length=32)
    SentenceTransformer(modules=[t, Pooling(32, "mean"), Normalize()], device="cpu").save(str(tmp_path / "enc"))
    dense_words = t.auto_model.embeddings.word_embeddings.weight.detach().clone()

    model, info = build_sparse_student(StudentSpec(type="sparse", model=str(tmp_path / "enc")),
                                       opts=SparseHeadOptions(head_bias=-1.5, query_length=8, document_length=16))
    mlm = model[0].model
    assert mlm.get_output_embeddings().weight is mlm.get_input_embeddings().weight
    assert torch.equal(mlm.get_input_embeddings().weight, dense_words)  # encoder weights copied in
    assert torch.allclose(mlm.cls.predictions.bias, torch.full((len(VOCAB),), -1.5))
    assert torch.equal(mlm.cls.predictions.transform.dense.weight, torch.eye(32))
    assert "tied" in info["head_init"] and "-1.5" in info["head_init"]
    model.save(str(tmp_path / "sparse"))
    again = SparseEncoder(str(tmp_path / "sparse"), device="cpu")
    texts = ["the cat and a kitten purr", "solar light heat"]
    a = model.encode_document(texts, convert_to_sparse_tensor=False)
    b = again.encode_document(texts, convert_to_sparse_tensor=False)
    assert torch.allclose(a, b, atol=1e-6)
    assert again[0].query_length == 8 and again[0].document_length == 16


# --- exact inverted-index search --------------------------------------------------------------------

def test_sparse_search_matches_dense_brute_force():
    import scipy.sparse as sp

    from embed_kd.evaluation.sparse_eval import flops, postings_per_query, prune_top_k, sparse_search

    rng = np.random.default_rng(0)
    d = rng.random((40, 50)) * (rng.random((40, 50)) < 0.1)
    q = rng.random((7, 50)) * (rng.random((7, 50)) < 0.2)
    D, Q = sp.csr_matrix(d, dtype=np.float32), sp.csr_matrix(q, dtype=np.float32)
    scores, rows = sparse_search(Q, D, k=5, block=3)
    brute = q @ d.T
    for i in range(7):
        assert np.allclose(scores[i], np.sort(brute[i])[::-1][:5], atol=1e-5)
        assert np.allclose(brute[i][rows[i]], scores[i], atol=1e-5)
    # FLOPS = Σ_t p_q(t) p_d(t); postings per query = mean Σ_{t∈q} df(t) = FLOPS × n_docs
    p_q, p_d = (q > 0).mean(0), (d > 0).mean(0)
    assert flops(Q, D) == pytest.approx(float(p_q @ p_d))
    assert postings_per_query(Q, D) == pytest.approx(float(p_q @ p_d) * 40)
    pruned = prune_top_k(D, 2)
    assert np.diff(pruned.indptr).max() <= 2
    for r in range(40):  # the kept weights are each row's largest
        row = d[r]
        kept = pruned[r].toarray()[0]
        assert np.allclose(np.sort(kept[kept > 0])[::-1], np.sort(row[row > 0])[::-1][:2])


# --- end to end: train --student-type sparse, eval, load ---------------------------------------------

@pytest.fixture(scope="module")
def tiny_store_sparse(tiny_beir, tiny_model, tmp_path_factory) -> Path:
    from test_train_e2e import write_tiny_store

    return write_tiny_store(tiny_beir, tiny_model, tmp_path_factory.mktemp("scores") / "tiny-train")


def test_train_sparse_cli_then_eval(tmp_path, tiny_beir, tiny_mlm, tiny_store_sparse, cache_dir):
    import yaml
    from sentence_transformers.sparse_encoder import SparseEncoder

    cfg = {
        "data": str(tiny_beir), "scores": str(tiny_store_sparse), "output": str(tmp_path / "sparse-student"),
        "student": {"model": str(tiny_mlm)},
        "examples": {"negatives": 2, "rounds": 2, "dev_queries": 2, "min_candidates": 4},
        "losses": {"score": "margin_mse", "score_scale": 2.0},
        "sparse": {"query_length": 16, "document_length": 32, "train_document_length": 24,
                   "query_flops_weight": 0.01, "doc_flops_weight": 0.005, "flops_warmup_ratio": 0.5,
                   "dev_pool": 5},
        "train": {"max_steps": 4, "batch_size": 4, "lr": 1e-3, "save_steps": 2, "eval_steps": 2, "logging_steps": 1},
        "average": {"enabled": True, "last": 2},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(main, ["train", str(path), "--student-type", "sparse", "--cache-dir", str(cache_dir),
                                  "--no-progress", "-q"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "sparse-student"
    m = json.loads((out / "embed_kd_train.json").read_text())
    assert m["schema"] == "embed-kd/train-run@1" and m["config"]["student"]["type"] == "sparse"
    assert m["student"]["type"] == "sparse" and m["student"]["vocab_size"] == len(VOCAB)
    assert m["student"]["fingerprint"] != m["student"]["init_fingerprint"]  # it trained
    assert m["training"]["global_step"] == 4 and m["averaging"]["applied"]
    logs = m["training"]["log_history"]
    losses = [h["base_loss"] for h in logs if "base_loss" in h]
    assert losses and all(np.isfinite(losses))
    trace = m["training"]["regularizer_weights"]  # [step, query weight, document weight] per step
    assert [round(r[2], 6) for r in trace] == [0.0, 0.00125, 0.005, 0.005]  # quadratic warm-up over 2 of 4 steps
    assert trace[-1][1] == pytest.approx(0.01)
    dev = m["dev"]["metrics_final"]
    assert 0 <= dev["dev_ndcg_at_10"] <= 1 and dev["dev_doc_nnz"] > 0
    assert "sparse" in (out / "README.md").read_text().lower()
    assert "SparseEncoder" in (out / "README.md").read_text()

    model = SparseEncoder(str(out), device="cpu")  # the saved student loads as a SparseEncoder
    assert model.encode_query(["cat ?"], convert_to_sparse_tensor=False).shape == (1, len(VOCAB))

    res = tmp_path / "eval.json"
    r = CliRunner().invoke(main, ["eval", "--data", str(tiny_beir), "--model", str(out), "--doc-top-k", "4",
                                  "-o", str(res), "--no-progress", "-q"])
    assert r.exit_code == 0, r.output
    e = json.loads(res.read_text())
    assert e["mode"] == "sparse" and e["index"]["kind"] == "scipy-csr"
    sp_ = e["sparse"]
    assert sp_["doc_top_k"] == 4 and 0 < sp_["avg_doc_nnz"] <= 4
    assert sp_["avg_doc_nnz_unpruned"] >= sp_["avg_doc_nnz"]
    assert sp_["postings_per_query"] == pytest.approx(sp_["flops"] * e["dataset"]["n_docs"], rel=1e-6)
    assert 0 <= e["metrics"]["ndcg_at_10"] <= 1

    bad = CliRunner().invoke(main, ["eval", "--data", str(tiny_beir), "--query-model", str(out),
                                    "--doc-model", str(out), "--no-progress"])
    assert bad.exit_code == 2 and "sparse" in bad.output


def test_train_sparse_refuses_align_loss(tmp_path, tiny_beir, tiny_mlm, tiny_store_sparse):
    import yaml

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"data": str(tiny_beir), "scores": str(tiny_store_sparse),
                                    "output": str(tmp_path / "o"), "student": {"type": "sparse", "model": str(tiny_mlm)}}))
    r = CliRunner().invoke(main, ["train", str(path)])
    assert r.exit_code == 2 and "losses.align" in r.output and "Traceback" not in r.output


def test_train_sparse_refuses_read_only_output_before_training(tmp_path, tiny_beir, tiny_mlm, tiny_store_sparse):
    """A read-only output folder is refused up front (the writability check of the shared training
    prologue, :func:`embed_kd.training.prologue.prepare_training_run`), not after the steps are spent."""
    import os

    import yaml
    from reliability_helpers import cli, namespaces_available, read_only

    ro = tmp_path / "ro"
    ro.mkdir()
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({
        "data": str(tiny_beir), "scores": str(tiny_store_sparse), "output": str(ro / "student"),
        "student": {"model": str(tiny_mlm)}, "losses": {"score": "margin_mse"},
        "examples": {"negatives": 2, "dev_queries": 0, "min_candidates": 4},
        "sparse": {"query_length": 16, "document_length": 32}, "train": {"max_steps": 2, "batch_size": 4}}))
    args = ["train", str(path), "--student-type", "sparse", "--no-progress", "-q"]
    if os.geteuid() != 0:  # an ordinary user: permissions are enough (in-process)
        ro.chmod(0o555)
        try:
            r = CliRunner().invoke(main, args)
        finally:
            ro.chmod(0o755)
        code, err = r.exit_code, r.output
    else:  # root ignores permissions: a read-only bind mount (EROFS), in a subprocess
        if not namespaces_available():
            pytest.skip("no private mount namespace here (unshare -r -m): a read-only folder is not testable as root")
        p = cli(*args, wrap=read_only(ro))
        code, err = p.returncode, p.stderr
    # check_writable's message ("... (for OUTPUT)"), not the trainer failing to write a checkpoint
    assert code == 2 and f"{ro}: output folder is not writable (for {ro / 'student'})" in err, err
    assert "Traceback" not in err and err.count("Error:") == 1, err
    assert not list(ro.iterdir())  # no OUTPUT, no OUTPUT.work


def test_eval_pruning_flags_need_a_sparse_model(tiny_beir, tiny_model):
    for model in ("bm25", str(tiny_model)):
        r = CliRunner().invoke(main, ["eval", "--data", str(tiny_beir), "--model", model, "--doc-top-k", "5"])
        assert r.exit_code == 2 and "sparse" in r.output and "Traceback" not in r.output
