r"""A declared weight on one loss of a multi-loss run.

sentence-transformers trains several objectives in one run by giving the trainer a dict of datasets
and a dict of losses (one loss per dataset, batches interleaved by ``multi_dataset_batch_sampler``).
It has no per-loss weight; this wrapper adds one:

.. math::

    \mathcal{L}_w = w \cdot \mathcal{L}

Inputs and labels are those of the wrapped loss.

>>> import torch
>>> class Const(torch.nn.Module):
...     model = None
...     def forward(self, features, labels):
...         return torch.tensor(2.0)
>>> WeightedLoss(Const(), 0.25)([], None)
tensor(0.5000)
"""

from __future__ import annotations

from typing import Any, Iterable

from torch import Tensor, nn


class WeightedLoss(nn.Module):
    """``weight * loss(features, labels)``; ``weight`` must be finite and ≥ 0."""

    def __init__(self, loss: nn.Module, weight: float = 1.0) -> None:
        super().__init__()
        weight = float(weight)
        if not weight >= 0 or weight == float("inf"):
            raise ValueError(f"loss weight must be a finite number >= 0, got {weight}")
        self.loss = loss
        self.model = getattr(loss, "model", None)
        self.weight = weight

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> Tensor:
        return self.weight * self.loss(sentence_features, labels)

    def get_config_dict(self) -> dict[str, Any]:
        inner = self.loss.get_config_dict() if hasattr(self.loss, "get_config_dict") else {}
        return {"loss": type(self.loss).__name__, "weight": self.weight, **inner}
