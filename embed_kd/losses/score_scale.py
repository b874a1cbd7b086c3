r"""Put a teacher's scores on the student's range before a score loss (Margin-MSE, KL) sees them.

A cross-encoder emits logits (about -10..10), an ensemble emits sums of z-scores, BM25 emits
unbounded scores; a normalised bi-encoder's dot product lives in [-1, 1]. Margin-MSE regresses the
student's margins onto the teacher's, so the teacher's margins must be reachable:

.. math::

    \tilde s_{q,i} = \alpha \cdot \mathrm{norm}_q(s_{q,\cdot})_i

:math:`\mathrm{norm}_q` (``examples.score_norm``: zscore | minmax | none, over each query's whole
candidate list) is applied once, when the examples are built (:mod:`embed_kd.training.data`, with
:func:`embed_kd.teachers.fusion.normalize_scores` — the one score normaliser); this loss applies
:math:`\alpha` (``losses.score_scale``). Margin-MSE only sees differences, so a shift is irrelevant
to it; the scale is what matters. Example: an ensemble's z-scores have a per-query std of about 1
while MiniLM's cosine scores over the same candidates have a std of about 0.1, hence ``scale=0.1``.

References: Hofstätter et al. 2020, *Improving Efficient Neural Ranking Models with
Cross-Architecture Knowledge Distillation* (arXiv:2010.02666) — Margin-MSE is sensitive to the
teachers' score ranges, which is why they are fixed per teacher there.

Inputs / labels of :class:`ScaledScoreLoss` (it forwards everything to the wrapped loss):

+-----------------------------------------------+------------------------------------------------------+
| Inputs                                        | Labels                                               |
+===============================================+======================================================+
| whatever the wrapped loss takes               | teacher scores ``(batch, n_candidates)``, one row per |
| (e.g. query, positive, negative_1..n)         | query; multiplied by ``scale``, then passed on       |
+-----------------------------------------------+------------------------------------------------------+

>>> import torch
>>> scale_scores(torch.tensor([[3.0, 1.0, -1.0]]), 0.5)
tensor([[ 1.5000,  0.5000, -0.5000]])
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor, nn


def scale_scores(scores: Tensor, scale: float = 1.0) -> Tensor:
    """``scores`` (shape ``(batch, n)``) as float32, multiplied by ``scale``."""
    if scores.dim() != 2:
        raise ValueError(f"expected teacher scores of shape (batch, n_candidates), got {tuple(scores.shape)}")
    return scores.to(torch.float32) * float(scale)


class ScaledScoreLoss(nn.Module):
    """Wrap a score loss (``MarginMSELoss``, ``DistillKLDivLoss``) so it sees transformed teacher scores.

    Args:
        loss: the sentence-transformers score loss to wrap (it keeps its own model).
        scale: multiply the (already normalised, ``examples.score_norm``) scores by this.

    Labels must be scores of shape ``(batch, n_candidates)`` (the "one score per column" form that
    ``MarginMSELoss`` and ``DistillKLDivLoss`` accept).
    """

    def __init__(self, loss: nn.Module, scale: float = 1.0) -> None:
        super().__init__()
        self.loss = loss
        self.model = loss.model
        self.scale = float(scale)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        return self.loss(sentence_features, scale_scores(labels, self.scale))

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], labels: Tensor) -> Tensor:
        return self.loss.compute_loss_from_embeddings(embeddings, scale_scores(labels, self.scale))

    def get_config_dict(self) -> dict[str, Any]:
        inner = self.loss.get_config_dict() if hasattr(self.loss, "get_config_dict") else {}
        return {"loss": type(self.loss).__name__, "scale": self.scale, **inner}
