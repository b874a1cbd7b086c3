"""Stop a training run at its first non-finite loss, with a clear error and no output.

A diverged run (``train.lr=inf``, a loss scale too large, NaN inputs) does not fail by itself:
the trainer keeps stepping on NaN gradients and saves NaN weights that evaluate to nothing. The
guard is a forward hook on every loss module (:func:`guard_losses`): each step, the loss value
the trainer is about to back-propagate is checked, and a NaN or ±inf raises
:class:`NonFiniteLossError` — naming the loss, the step and the value — out of ``trainer.train``.

What the callers do with it (dense and sparse ``embed-kd train``, ``train-teacher``): nothing is
written to ``OUTPUT``, and the work folder (``OUTPUT.work``, or ``train-teacher``'s temporary
checkpoints) is **removed**, not left resumable — resuming it with the same config would reach
the same loss again, so the corrected rerun starts clean (a rerun with another config would be
refused by ``--resume`` anyway: ``run.json`` fingerprints the config).

>>> import torch
>>> class Square(torch.nn.Module):
...     def forward(self, x):
...         return (x ** 2).mean()
>>> loss = Square()
>>> _ = guard_losses({"score": loss})
>>> float(loss(torch.tensor([1.0, 3.0])))
5.0
>>> loss(torch.tensor([float("inf")]))
Traceback (most recent call last):
...
embed_kd.training.finite_guard.NonFiniteLossError: training stopped at step 2: the score loss is inf (not finite)

A loss that returns its terms (sentence-transformers' ``SpladeLoss``: ``base_loss`` and the FLOPS
regularisers) names the term that is not finite:

>>> class Terms(torch.nn.Module):
...     def forward(self, x):
...         return {"base_loss": x.mean(), "query_regularizer_loss": x.abs().sum()}
>>> terms = Terms()
>>> _ = guard_losses(terms)
>>> try:
...     terms(torch.tensor([float("nan")]))
... except NonFiniteLossError as exc:
...     print(exc)
training stopped at step 1: the base_loss term of the training loss is nan (not finite)
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

from embed_kd.errors import EmbedKDError


class NonFiniteLossError(EmbedKDError):
    """A loss became NaN or infinite during training (the message names the loss and the step)."""


def _tensors(output):
    import torch

    if isinstance(output, torch.Tensor):
        yield None, output
    elif isinstance(output, Mapping):
        for k, v in output.items():
            if isinstance(v, torch.Tensor):
                yield str(k), v


def guard_losses(losses, *, step: Callable[[], int] | None = None) -> list:
    """Register the check on each loss module (``{name: module}`` or one module); returns the hook
    handles. ``step`` reports the trainer's step for the message (default: calls counted here)."""
    import torch

    modules = losses.items() if isinstance(losses, Mapping) else [("training", losses)]
    handles = []
    for name, module in modules:
        calls = [0]

        def hook(mod, args, output, _name=name, _calls=calls):
            _calls[0] += 1
            for part, t in _tensors(output):
                if t.numel() and t.is_floating_point() and not bool(torch.isfinite(t.detach()).all()):
                    value = float(t.detach().float().reshape(-1)[0]) if t.numel() == 1 else "non-finite"
                    label = f"{_name} loss" if part is None else f"{part} term of the {_name} loss"
                    at = step() + 1 if step is not None else _calls[0]
                    shown = value if isinstance(value, str) else ("nan" if math.isnan(value) else repr(value))
                    raise NonFiniteLossError(f"training stopped at step {at}: the {label} is {shown} (not finite)")

        handles.append(module.register_forward_hook(hook))
    return handles


def diverged_message(exc: NonFiniteLossError, *, work: str, lr) -> str:
    """The user-facing sentence: what happened, what was (not) kept, what to change."""
    return (f"{exc}; the run diverged (train.lr = {lr} may be too high, or a loss scale / the teacher scores are "
            f"out of range). Nothing was saved and {work} was removed; fix the config and rerun")
