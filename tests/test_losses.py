"""Loss wrappers against hand-computed values on tiny tensors (and the real ST losses they wrap)."""

from __future__ import annotations


import pytest
import torch
from sentence_transformers.sentence_transformer.losses import DistillKLDivLoss, MarginMSELoss

from embed_kd.losses import ScaledScoreLoss, TeacherDocumentsLoss, WeightedLoss, gather_documents, scale_scores


class _NoModel(torch.nn.Module):
    """Stands in for the student where only ``compute_loss_from_embeddings`` is exercised."""


def test_scale_scores_by_hand():
    s = torch.tensor([[3.0, 1.0, -1.0], [2.0, 2.0, 2.0]], dtype=torch.float64)
    out = scale_scores(s, 0.5)
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.tensor([[1.5, 0.5, -0.5], [1.0, 1.0, 1.0]]))
    with pytest.raises(ValueError, match=r"\(batch, n_candidates\)"):
        scale_scores(torch.ones(3))


def test_scaled_margin_mse_by_hand():
    q, pos, neg = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    loss = ScaledScoreLoss(MarginMSELoss(_NoModel()), scale=0.25)
    # student margin = 1 - 0 = 1; teacher margin = 0.25 * (4 - 2) = 0.5; MSE = 0.25
    value = loss.compute_loss_from_embeddings([q, pos, neg], torch.tensor([[4.0, 2.0]]))
    assert value.item() == pytest.approx(0.25)
    # two negatives: margins (1-0, 1-0.6) vs teacher 0.25*(4-2, 4-4) = (0.5, 0) -> ((0.5)^2 + 0.4^2) / 2
    neg2 = torch.tensor([[0.6, 0.8]])
    value = loss.compute_loss_from_embeddings([q, pos, neg, neg2], torch.tensor([[4.0, 2.0, 4.0]]))
    assert value.item() == pytest.approx((0.25 + 0.16) / 2)


def test_weighted_loss_multiplies_and_validates():
    inner = ScaledScoreLoss(MarginMSELoss(_NoModel()), scale=1.0)

    class Fixed(torch.nn.Module):
        model = None

        def forward(self, features, labels):
            return inner.compute_loss_from_embeddings(features, labels)

    emb = [torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])]
    base = Fixed()(emb, torch.tensor([[0.0, 0.0]]))  # (1 - 0)^2 = 1
    assert base.item() == pytest.approx(1.0)
    assert WeightedLoss(Fixed(), 0.3)(emb, torch.tensor([[0.0, 0.0]])).item() == pytest.approx(0.3)
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="weight"):
            WeightedLoss(Fixed(), bad)


def test_gather_documents_and_errors():
    T = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    labels = torch.tensor([[[2.0, 5.0], [0.0, 1.0]], [[1.0, 3.0], [2.0, 2.0]]])
    docs, scores = gather_documents(T, labels)
    assert torch.equal(docs[0], T[[2, 1]]) and torch.equal(docs[1], T[[0, 2]])
    assert torch.equal(scores, torch.tensor([[5.0, 1.0], [3.0, 2.0]]))
    with pytest.raises(ValueError, match="out of range"):
        gather_documents(T, torch.tensor([[[3.0, 1.0], [0.0, 1.0]]]))
    with pytest.raises(ValueError, match=r"\(batch, n_candidates, 2\)"):
        gather_documents(T, torch.ones(2, 3))


def test_teacher_documents_margin_mse_matches_hand_computation(tiny_model):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model), device="cpu")
    model.eval()  # no dropout: the loss must equal the formula on model.encode outputs
    T = torch.nn.functional.normalize(torch.randn(5, 32, generator=torch.Generator().manual_seed(0)), dim=-1)
    queries = ["cat purr ?", "sea wave ?"]
    labels = torch.tensor([[[4.0, 2.0], [1.0, -1.0], [0.0, 0.5]],
                           [[2.0, 1.0], [3.0, 0.0], [4.0, 0.0]]])
    loss = TeacherDocumentsLoss(ScaledScoreLoss(MarginMSELoss(model), scale=0.1), T.numpy())
    features = [model.tokenize(queries)]
    got = loss(features, labels).item()
    q = torch.tensor(model.encode(queries))
    expected = []
    for b in range(2):
        rows = labels[b, :, 0].long()
        s = labels[b, :, 1] * 0.1
        sims = T[rows] @ q[b]
        expected += [((sims[0] - sims[i]) - (s[0] - s[i])) ** 2 for i in (1, 2)]
    assert got == pytest.approx(torch.stack(expected).mean().item(), rel=1e-4, abs=1e-6)
    # gradients reach the student (queries), the teacher documents are a frozen buffer
    model.train()
    out = loss([model.tokenize(queries)], labels)
    out.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert not loss.doc_embeddings.requires_grad


def test_teacher_documents_with_kl_and_dim_mismatch(tiny_model):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model), device="cpu")
    model.eval()
    T = torch.nn.functional.normalize(torch.randn(4, 32, generator=torch.Generator().manual_seed(1)), dim=-1)
    labels = torch.tensor([[[0.0, 3.0], [1.0, 1.0], [2.0, 0.0]]])
    kl = TeacherDocumentsLoss(DistillKLDivLoss(model, student_temperature=0.05), T)
    got = kl([model.tokenize(["dog bark ?"])], labels).item()
    q = torch.tensor(model.encode(["dog bark ?"]))[0]
    student = torch.log_softmax((T[[0, 1, 2]] @ q) / 0.05, dim=0)
    teacher = torch.softmax(torch.tensor([3.0, 1.0, 0.0]), dim=0)
    # DistillKLDivLoss: KL(teacher || student), batchmean, times student_temperature^2
    expected = (teacher * (teacher.log() - student)).sum().item() * 0.05**2
    assert got == pytest.approx(expected, rel=1e-4)
    wide = TeacherDocumentsLoss(MarginMSELoss(model), torch.zeros(4, 48))
    with pytest.raises(ValueError, match="48-dim"):
        wide([model.tokenize(["dog ?"])], labels)
