r"""Checkpoint weight averaging (Weight-Averaged KD).

The final student is the element-wise mean of the weights of the last :math:`K` checkpoints of one
run:

.. math::

    \theta_{avg} = \frac{1}{K} \sum_{k=1}^{K} \theta_{t_k}

Averaging checkpoints along one trajectory (Izmailov et al. 2018, SWA; Wortsman et al. 2022,
model soups) lands in a flatter region and was reported to make distilled students more robust
under domain shift (Weight-Averaged KD). Only floating-point tensors are averaged; integer buffers
(e.g. ``position_ids``) are taken from the last checkpoint. All checkpoints must have the same
parameter names and shapes (they do within one run).

>>> import torch
>>> average_state_dicts([{"w": torch.tensor([1.0, 3.0])}, {"w": torch.tensor([3.0, 5.0])}])["w"].tolist()
[2.0, 4.0]
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Sequence

from embed_kd.errors import ArtifactError
from embed_kd.models import forget_fingerprint

logger = logging.getLogger(__name__)
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def average_state_dicts(states: Sequence[dict]) -> dict:
    """Element-wise mean of float tensors across ``states`` (other tensors: from the last state)."""
    import torch

    if not states:
        raise ValueError("nothing to average")
    keys = list(states[-1])
    for i, st in enumerate(states):
        if list(st) != keys:
            raise ArtifactError(f"checkpoint {i} has different parameters than the last one; cannot average")
    out = {}
    for k in keys:
        last = states[-1][k]
        if torch.is_floating_point(last):
            shapes = {tuple(st[k].shape) for st in states}
            if len(shapes) != 1:
                raise ArtifactError(f"parameter {k} has different shapes across checkpoints: {sorted(shapes)}")
            out[k] = torch.stack([st[k].to(torch.float32) for st in states]).mean(0).to(last.dtype)
        else:
            out[k] = last.clone()
    return out


def list_checkpoints(folder: str | Path) -> list[Path]:
    """``checkpoint-<step>`` sub-folders of ``folder``, sorted by step."""
    folder = Path(folder)
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CKPT.match(p.name))] \
        if folder.is_dir() else []
    return [p for _, p in sorted(found)]


def average_checkpoints(model, checkpoints: Sequence[str | Path]):
    """Load each checkpoint (a sentence-transformers folder, loaded with ``type(model)``: a
    SentenceTransformer or a SparseEncoder) and put their mean weights into ``model``."""
    states = []
    for p in checkpoints:
        try:
            states.append({k: v.detach().cpu() for k, v in type(model)(str(p), device="cpu").state_dict().items()})
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{p}: cannot load checkpoint for averaging ({exc})") from None
    model.load_state_dict(average_state_dicts(states))
    logger.info("averaged the weights of %d checkpoints: %s", len(states), ", ".join(Path(p).name for p in checkpoints))
    return model


def finish_checkpoints(student, ckpt_dir: str | Path, step: int, average, evaluator=None):
    """After training: save the final checkpoint if the trainer did not, average the last
    ``average.last`` checkpoints into ``student`` when ``average.enabled``, then run ``evaluator``.

    Returns ``(all checkpoint paths, averaged checkpoint paths, dev metrics or None)``. Shared by
    dense and sparse runs.
    """
    ckpt_dir = Path(ckpt_dir)
    final_ckpt = ckpt_dir / f"checkpoint-{step}"
    if not final_ckpt.exists():
        student.save(str(final_ckpt))
    ckpts = list_checkpoints(ckpt_dir)
    averaged: list[Path] = []
    if average.enabled and average.last > 1 and len(ckpts) > 1:
        averaged = ckpts[-average.last:]
        average_checkpoints(student, averaged)
    dev_final = evaluator(student) if evaluator else None
    forget_fingerprint(student)  # the weights changed
    return ckpts, averaged, dev_final
