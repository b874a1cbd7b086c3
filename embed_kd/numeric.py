"""Finite checks at the numeric boundaries: a NaN or an infinity is refused where it enters.

A non-finite number does not fail loudly by itself: a NaN ensemble weight makes every score NaN,
NaN margins train nothing, an infinite learning rate saves NaN weights that evaluate to nDCG 0.
So every place a number enters embed-kd checks it — flags and config values
(:func:`finite_number`), teacher scores written to and read from a store and embeddings a model
returns (:func:`check_finite_array`), the weights of a model about to be saved
(:func:`check_finite_weights`) — and the training loop stops at the first non-finite loss
(:class:`embed_kd.training.finite_guard.FiniteLossCallback`). Each raises
:class:`~embed_kd.errors.EmbedKDError` naming the value and where it came from.

>>> finite_number("2.5", "--weights: weight of 'ce'")
2.5
>>> finite_number(float("nan"), "--weights: weight of 'ce'")
Traceback (most recent call last):
...
embed_kd.errors.EmbedKDError: --weights: weight of 'ce' must be a finite number, got nan
>>> import numpy as np
>>> check_finite_array(np.array([1.0, np.inf, np.nan]), "teacher 'ce' scores")
Traceback (most recent call last):
...
embed_kd.errors.EmbedKDError: teacher 'ce' scores: 2 of 3 values are not finite (NaN or infinite), the first at position 1
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from embed_kd.errors import EmbedKDError


def finite_number(value: Any, what: str) -> float:
    """``value`` as a float, refusing what is not a number or not finite (NaN, ±inf)."""
    if isinstance(value, bool):
        raise EmbedKDError(f"{what} must be a finite number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise EmbedKDError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise EmbedKDError(f"{what} must be a finite number, got {value!r}")
    return x


def check_finite_array(values, what: str) -> None:
    """Refuse an array (or list) holding NaN or ±inf, naming how many and the first position."""
    arr = np.asarray(values)
    if arr.size == 0 or not np.issubdtype(arr.dtype, np.floating):
        return
    ok = np.isfinite(arr)
    if ok.all():
        return
    bad = np.flatnonzero(~ok.reshape(-1))
    first = np.unravel_index(int(bad[0]), arr.shape)
    where = int(first[0]) if len(first) == 1 else tuple(int(i) for i in first)
    raise EmbedKDError(f"{what}: {bad.size} of {arr.size} values are not finite (NaN or infinite), "
                       f"the first at position {where}")


def nonfinite_parameters(module) -> list[str]:
    """Names of the floating-point parameters/buffers of a torch module holding NaN or ±inf."""
    import torch

    bad = []
    for name, t in module.state_dict().items():
        if torch.is_floating_point(t) and not bool(torch.isfinite(t).all()):
            bad.append(name)
    return bad


def check_finite_weights(module, what: str) -> None:
    """Refuse to save a model whose weights hold NaN or ±inf (a diverged run)."""
    bad = nonfinite_parameters(module)
    if bad:
        raise EmbedKDError(f"{what}: {len(bad)} weight tensor(s) hold NaN or infinite values (e.g. {bad[0]}); the "
                           "training diverged — lower the learning rate or the loss scales; nothing was saved")
