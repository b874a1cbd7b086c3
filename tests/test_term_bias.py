"""Term-bias fit (embed_kd.students.term_bias): max-logits reproduce the model's SPLADE vectors, the
bias is read/written in the MLM head, the losses are hand-checked, and a fit on tiny tensors learns the
teacher's ranking."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_sparse import build_tiny_mlm  # noqa: E402

from embed_kd.errors import EmbedKDError  # noqa: E402
from embed_kd.students.term_bias import (  # noqa: E402
    TermBiasFitOptions,
    fit_term_bias,
    get_term_bias,
    idf_bias,
    max_logits,
    set_term_bias,
    splade_weights,
    term_bias_loss,
)


@pytest.fixture(scope="module")
def tiny_sparse_tb(tmp_path_factory):
    from embed_kd.students.sparse import SparseHeadOptions, sparse_encoder_from_mlm_folder

    path = build_tiny_mlm(tmp_path_factory.mktemp("models") / "tiny-mlm-tb")
    torch.manual_seed(0)
    return sparse_encoder_from_mlm_folder(path, SparseHeadOptions(query_length=16, document_length=32))


TEXTS = ["the cat sat on the mat", "a dog ran in the park", "cats and dogs"]


@pytest.mark.parametrize("role", ["query", "document"])
def test_max_logits_reproduce_the_models_vectors(tiny_sparse_tb, role):
    bias = get_term_bias(tiny_sparse_tb)
    m = max_logits(tiny_sparse_tb, TEXTS, role=role, show_progress=False)
    assert m.shape == (3, len(bias)) and m.dtype == np.float32
    ref = getattr(tiny_sparse_tb, f"encode_{role}")(TEXTS, convert_to_tensor=True, convert_to_sparse_tensor=False)
    ref = ref.to_dense() if ref.is_sparse else ref
    w = splade_weights(torch.from_numpy(m), torch.from_numpy(bias))
    np.testing.assert_allclose(w.numpy(), ref.numpy(), atol=1e-4)
    np.testing.assert_array_equal(get_term_bias(tiny_sparse_tb), bias)  # the probe offset was removed


def test_set_term_bias_changes_the_encoding_and_round_trips(tiny_sparse_tb, tmp_path):
    from sentence_transformers.sparse_encoder import SparseEncoder

    from embed_kd.models import fingerprint_model

    old = get_term_bias(tiny_sparse_tb)
    m = max_logits(tiny_sparse_tb, TEXTS, role="document", show_progress=False)
    new = old - 0.5 + 0.01 * np.arange(len(old), dtype=np.float32)
    fp_before = fingerprint_model(tiny_sparse_tb)
    set_term_bias(tiny_sparse_tb, new)
    try:
        assert fingerprint_model(tiny_sparse_tb) != fp_before  # the cached fingerprint was dropped
        enc = tiny_sparse_tb.encode_document(TEXTS, convert_to_tensor=True, convert_to_sparse_tensor=False)
        enc = enc.to_dense() if enc.is_sparse else enc
        np.testing.assert_allclose(splade_weights(torch.from_numpy(m), torch.from_numpy(new)).numpy(), enc.numpy(),
                                   atol=1e-4)
        tiny_sparse_tb.save_pretrained(str(tmp_path / "saved"))
        reloaded = SparseEncoder(str(tmp_path / "saved"), device="cpu")
        np.testing.assert_allclose(get_term_bias(reloaded), new, atol=1e-6)
    finally:
        set_term_bias(tiny_sparse_tb, old)
    with pytest.raises(EmbedKDError, match="expected shape"):
        set_term_bias(tiny_sparse_tb, np.zeros(3, dtype=np.float32))


def test_losses_hand_computed():
    q = torch.tensor([[1.0, 0.0]])
    d = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]]])  # student scores 1, 0, 2
    teacher = torch.tensor([[0.0, 1.0, 5.0]])
    mask = torch.tensor([[True, True, False]])  # the third candidate is padding
    # margin_mse over valid pairs (i, j) in {0,1}^2: margins student (0, 1, -1, 0), teacher*2 (0, -2, 2, 0)
    mm = term_bias_loss(q, d, teacher, mask, loss="margin_mse", temperature=2.0)
    assert float(mm) == pytest.approx((0 + 9 + 9 + 0) / 4)
    kl = term_bias_loss(q, d, teacher, mask, loss="kl", temperature=1.0)
    p = torch.softmax(torch.tensor([0.0, 1.0]), 0)
    s = torch.log_softmax(torch.tensor([1.0, 0.0]), 0)
    assert float(kl) == pytest.approx(float((p * (p.log() - s)).sum()), rel=1e-5)
    with pytest.raises(EmbedKDError, match="expected q_w"):
        term_bias_loss(q, d, teacher[:, :2], mask, loss="kl", temperature=1.0)


def test_fit_learns_which_terms_matter():
    """Two documents match a query on term 0 (informative for the teacher) or term 1 (noise): the fit
    raises term 0's bias relative to term 1's until the student ranks as the teacher does."""
    rng = np.random.default_rng(0)
    n_q, vocab = 40, 6
    qmax = np.full((n_q, vocab), 1.0, dtype=np.float32)
    docs, groups = [], []
    for qi in range(n_q):
        noise = rng.normal(0, 0.1, 2).astype(np.float32)
        good = np.array([3.0 + noise[0], -5.0, -5.0, -5.0, -5.0, -5.0], dtype=np.float32)
        bad = np.array([-5.0, 4.0 + noise[1], -5.0, -5.0, -5.0, -5.0], dtype=np.float32)
        docs += [good, bad]
        groups.append((qi, [2 * qi, 2 * qi + 1], [2.0, -2.0]))
    dmax = np.stack(docs)
    init = np.zeros(vocab, dtype=np.float32)

    def agreement(b):
        q = splade_weights(torch.from_numpy(qmax), torch.from_numpy(b))
        d = splade_weights(torch.from_numpy(dmax), torch.from_numpy(b))
        s = (q @ d.T).numpy()
        return float(np.mean([s[i, 2 * i] > s[i, 2 * i + 1] for i in range(n_q)]))

    assert agreement(init) == 0.0  # the noisy term wins at the start
    bias, info = fit_term_bias(qmax, dmax, groups, init,
                               TermBiasFitOptions(steps=60, lr=0.1, queries_per_step=8, query_flops_weight=0.0,
                                                  doc_flops_weight=0.0, l2_to_init=0.0),
                               evaluate=agreement, eval_every=20, show_progress=False)
    assert agreement(bias) == 1.0 and bias[0] > bias[1]
    assert info["best_dev"] == 1.0 and info["history"][0] == {"step": 0, "dev": 0.0}


def test_idf_bias_and_shape_errors():
    m = np.array([[3.0, 9.0], [3.0, 9.0], [-9.0, 9.0]], dtype=np.float32)
    b = idf_bias(m, -5.0, 2.0)
    assert b[0] > b[1]  # term 1 is active everywhere: the common term starts weaker
    assert float(b.mean()) == pytest.approx(-5.0)
    with pytest.raises(EmbedKDError, match="vocab sizes differ"):
        fit_term_bias(np.zeros((1, 3), np.float32), np.zeros((2, 2), np.float32), [(0, [0, 1], [1.0, 0.0])],
                      np.zeros(2, np.float32))
    with pytest.raises(EmbedKDError, match="two or more"):
        fit_term_bias(np.zeros((1, 2), np.float32), np.zeros((2, 2), np.float32), [(0, [0], [1.0])],
                      np.zeros(2, np.float32))


# --- the term-bias stage of `embed-kd train --student-type sparse` --------------------------------------

@pytest.fixture(scope="module")
def tiny_store_tb(tiny_beir, tiny_model, tmp_path_factory) -> Path:
    from test_train_e2e import write_tiny_store

    return write_tiny_store(tiny_beir, tiny_model, tmp_path_factory.mktemp("scores") / "tiny-train-tb")


def test_train_term_bias_stage_only(tmp_path, tiny_beir, tiny_store_tb):
    """train.max_steps 0 + sparse.term_bias_steps: the encoder is untouched, the head's bias is fitted,
    the result is a SparseEncoder folder whose manifest records the stage."""
    import json

    import yaml
    from click.testing import CliRunner
    from sentence_transformers.sparse_encoder import SparseEncoder

    from embed_kd.cli import main

    mlm = build_tiny_mlm(tmp_path / "mlm", seed=1)
    cfg = {
        "data": str(tiny_beir), "scores": str(tiny_store_tb), "output": str(tmp_path / "tb"),
        "student": {"type": "sparse", "model": str(mlm)},
        "examples": {"negatives": 2, "dev_queries": 2, "min_candidates": 4},
        "losses": {"score": "margin_mse", "score_documents": "student", "align": "none"},
        "sparse": {"query_length": 16, "document_length": 32, "dev_pool": 5, "term_bias_steps": 12,
                   "term_bias_eval_every": 4, "term_bias_lr": 0.1},
        "train": {"max_steps": 0, "batch_size": 4},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(main, ["train", str(path), "--no-progress", "-q"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "tb"
    m = json.loads((out / "embed_kd_train.json").read_text())
    tb = m["term_bias"]
    assert m["training"]["global_step"] == 0 and tb["steps"] == 12 and tb["documents"] > 0
    assert [h["step"] for h in tb["history"]] == [0, 4, 8, 12]
    assert tb["best_dev"] == max(h["dev"] for h in tb["history"]) and tb["dev_before"] == tb["history"][0]["dev"]
    model = SparseEncoder(str(out), device="cpu")
    bias = get_term_bias(model)
    # the tiny MLM's bias starts as one constant (0); the saved one is the best dev step's
    assert np.allclose(bias, 0.0) if tb["best_step"] == 0 else not np.allclose(bias, bias[0])
    # the manifest names the model that was saved, not the one the stage started from
    assert (m["student"]["fingerprint"] != m["student"]["init_fingerprint"]) == (tb["best_step"] != 0)
    # the trained-from-nothing config is refused with one clear line
    cfg["sparse"]["term_bias_steps"] = 0
    path.write_text(yaml.safe_dump({**cfg, "output": str(tmp_path / "none")}))
    r = CliRunner().invoke(main, ["train", str(path), "--no-progress", "-q"])
    assert r.exit_code == 2 and "nothing to train" in r.output
