r"""Put a teacher's scores on the student's range before a score loss (Margin-MSE, KL) sees them.

A cross-encoder emits logits (about -10..10), an ensemble emits sums of z-scores, BM25 emits
unbounded scores; a normalised bi-encoder's dot product lives in [-1, 1]. Margin-MSE regresses the
student's margins onto the teacher's, so the teacher's margins must be reachable:

.. math::

    \tilde s_{q,i} = \alpha \cdot \mathrm{norm}_q(s_{q,\cdot})_i

where :math:`\mathrm{norm}_q` is applied to each row (one query and its candidates):

- ``"none"``: :math:`s` unchanged;
- ``"zscore"``: :math:`(s_i - \mu_q) / \sigma_q` (population std; a constant row becomes 0);
- ``"minmax"``: :math:`(s_i - \min_q) / (\max_q - \min_q)` (a constant row becomes 0);
- ``"center"``: :math:`s_i - \mu_q` (margins unchanged; only useful for listwise losses' logits).

and :math:`\alpha` is ``scale``. Margin-MSE only sees differences, so a shift is irrelevant to it;
the scale is what matters. Example: an ensemble's z-scores have a per-query std of about 1 while
MiniLM's cosine scores over the same candidates have a std of about 0.1, hence ``scale=0.1``.

References: Hofstätter et al. 2020, *Improving Efficient Neural Ranking Models with
Cross-Architecture Knowledge Distillation* (arXiv:2010.02666) — Margin-MSE is sensitive to the
teachers' score ranges, which is why they are fixed per teacher there.

Inputs / labels of :class:`ScaledScoreLoss` (it forwards everything to the wrapped loss):

+-----------------------------------------------+------------------------------------------------------+
| Inputs                                        | Labels                                               |
+===============================================+======================================================+
| whatever the wrapped loss takes               | teacher scores ``(batch, n_candidates)``, one row per |
| (e.g. query, positive, negative_1..n)         | query; rows are transformed, then passed on          |
+-----------------------------------------------+------------------------------------------------------+

>>> import torch
>>> transform_scores(torch.tensor([[3.0, 1.0, -1.0]]), norm="zscore", scale=0.5)
tensor([[ 0.6124,  0.0000, -0.6124]])
>>> transform_scores(torch.tensor([[4.0, 2.0, 0.0]]), norm="minmax")
tensor([[1.0000, 0.5000, 0.0000]])
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor, nn

NORMS = ("none", "zscore", "minmax", "center")


def transform_scores(scores: Tensor, norm: str = "none", scale: float = 1.0) -> Tensor:
    """Normalise each row of ``scores`` (shape ``(batch, n)``) with ``norm``, then multiply by ``scale``."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if scores.dim() != 2:
        raise ValueError(f"expected teacher scores of shape (batch, n_candidates), got {tuple(scores.shape)}")
    s = scores.to(torch.float32)
    if norm == "zscore":
        std = s.std(dim=1, unbiased=False, keepdim=True)
        s = torch.where(std > 0, (s - s.mean(dim=1, keepdim=True)) / std.clamp_min(1e-12), torch.zeros_like(s))
    elif norm == "minmax":
        lo, hi = s.min(dim=1, keepdim=True).values, s.max(dim=1, keepdim=True).values
        s = torch.where(hi > lo, (s - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(s))
    elif norm == "center":
        s = s - s.mean(dim=1, keepdim=True)
    return s * float(scale)


class ScaledScoreLoss(nn.Module):
    """Wrap a score loss (``MarginMSELoss``, ``DistillKLDivLoss``) so it sees transformed teacher scores.

    Args:
        loss: the sentence-transformers score loss to wrap (it keeps its own model).
        scale: multiply the (normalised) scores by this.
        norm: per-row normalisation, see :func:`transform_scores`.

    Labels must be scores of shape ``(batch, n_candidates)`` (the "one score per column" form that
    ``MarginMSELoss`` and ``DistillKLDivLoss`` accept).
    """

    def __init__(self, loss: nn.Module, scale: float = 1.0, norm: str = "none") -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.loss = loss
        self.model = loss.model
        self.scale = float(scale)
        self.norm = norm

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        return self.loss(sentence_features, transform_scores(labels, self.norm, self.scale))

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor) -> Tensor:
        return self.loss.compute_loss_from_embeddings(embeddings, transform_scores(labels, self.norm, self.scale))

    def get_config_dict(self) -> dict[str, Any]:
        inner = self.loss.get_config_dict() if hasattr(self.loss, "get_config_dict") else {}
        return {"loss": type(self.loss).__name__, "scale": self.scale, "norm": self.norm, **inner}
