r"""Term-bias fit: distil teacher scores into the per-term output bias of a SPLADE head.

A SPLADE weight (:mod:`embed_kd.students.sparse`) is

.. math::

    w_t(x) = \log\bigl(1 + \mathrm{ReLU}(\max_{i \in x} z_{i,t}(x) + b_t)\bigr)

with :math:`z_{i,t}` the bias-free MLM logit of term :math:`t` at token :math:`i` and :math:`b_t` the
head's output bias. :math:`b_t` is the same at every position, so it moves out of the max: the
encoder's whole contribution to a text is its **max-logit vector** :math:`m_t(x) = \max_i z_{i,t}(x)`,
and :math:`w_t = \log(1 + \mathrm{ReLU}(m_t + b_t))`. With the encoder frozen, the max-logits of the
corpus and the training queries are computed once (:func:`max_logits`, cached by the caller), and
the 30k biases — one "how much does this term matter" knob per vocabulary entry, which is what BM25's
IDF provides and an untrained or briefly trained MLM head lacks — are fitted on **every** teacher
score of every training query in minutes on a CPU (:func:`fit_term_bias`):

.. math::

    \mathcal{L}(b) = \frac{1}{|Q|}\sum_{q}\mathrm{KL}\bigl(\mathrm{softmax}(\tau\,\tilde s^{T}_{q})
        \,\big\|\,\mathrm{softmax}(s_{q})\bigr)
        + \lambda_q\,\mathrm{FLOPS}(w(Q)) + \lambda_d\,\mathrm{FLOPS}(w(D))
        + \mu\,\overline{(b - b^{0})^2},
    \qquad s_{q,d} = \sigma\,\langle w(q), w(d)\rangle

where :math:`\tilde s^T_q` are the teacher's scores of q's candidates z-scored per query (or the
Margin-MSE variant over sampled (positive-ish, negative) pairs), FLOPS is SPLADE's regulariser
:math:`\sum_t (\mathrm{mean}_x w_t(x))^2` (sentence-transformers' ``FlopsLoss``) and the last term
keeps terms with little evidence near their start :math:`b^0`; :math:`\sigma > 0` is a learned
score scale (it does not change any ranking, so the saved model does without it).

The fitted bias is written into the model's MLM head (:func:`set_term_bias`), so the result is an
ordinary ``SparseEncoder`` — saved, loaded and evaluated like any other sparse student, and a valid
start for further ``SpladeLoss`` training. References: SPLADE v2 (Formal et al. 2021,
arXiv:2109.10086) for the weights and FLOPS; Margin-MSE (Hofstätter et al. 2020) / listwise KL for
the distillation losses.

Inputs of :func:`fit_term_bias`:

=================  ==========================  =============================================
argument           shape / type                 meaning
=================  ==========================  =============================================
``query_max``      ``[n_queries, vocab]``       max-logits of the training queries
``doc_max``        ``[n_docs, vocab]``          max-logits of the documents candidates point to
``groups``         list of (q row, doc rows,    per query: its candidates' rows in ``doc_max``
                   teacher scores)              and the teacher's score of each
``init``           ``[vocab]``                  the starting bias :math:`b^0`
=================  ==========================  =============================================

>>> import torch
>>> m = torch.tensor([[2.0, -1.0, 0.5]])
>>> [round(float(w), 4) for w in splade_weights(m, torch.tensor([-1.0, 0.0, 0.0]))[0]]
[0.6931, 0.0, 0.4055]
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from embed_kd.errors import EmbedKDError
from embed_kd.models import forget_fingerprint

logger = logging.getLogger(__name__)

#: offset added to the head's bias while max-logits are read through ``SpladePooling`` (so that no
#: logit is clipped by the ReLU); checked after the fact
PROBE_OFFSET = 200.0


def splade_weights(max_logit, bias):
    """``log1p(relu(max_logit + bias))`` — SPLADE term weights from max-logits and a term bias.

    ``max_logit``: ``[n, vocab]`` tensor; ``bias``: ``[vocab]``. Pure function (see module doctest).
    """
    import torch

    if max_logit.shape[-1] != bias.shape[-1]:
        raise EmbedKDError(f"term bias: expected a bias of {max_logit.shape[-1]} terms, got {bias.shape[-1]}")
    return torch.log1p(torch.relu(max_logit + bias))


def _bias_parameter(model):
    """The MLM head's output-bias parameter of a ``SparseEncoder`` (the one the decoder adds)."""
    first = model[0]
    mlm = getattr(first, "auto_model", None) or getattr(first, "model", None)
    out = mlm.get_output_embeddings() if mlm is not None and hasattr(mlm, "get_output_embeddings") else None
    bias = getattr(out, "bias", None)
    if bias is None:
        raise EmbedKDError(f"term bias: {type(mlm).__name__} has no output bias on its MLM decoder")
    return bias


def get_term_bias(model) -> np.ndarray:
    """The current per-term output bias of a sparse model's MLM head (float32 copy)."""
    return _bias_parameter(model).detach().float().cpu().numpy().copy()


def set_term_bias(model, bias) -> None:
    """Write ``bias`` (``[vocab]``) into the MLM head in place (every tensor that shares it follows)."""
    import torch

    param = _bias_parameter(model)
    values = torch.as_tensor(np.asarray(bias, dtype=np.float32))
    if values.shape != param.shape:
        raise EmbedKDError(f"term bias: expected shape {tuple(param.shape)}, got {tuple(values.shape)}")
    with torch.no_grad():
        param.copy_(values.to(param.dtype))
    forget_fingerprint(model)  # the weights changed
    # some heads keep a second reference (BERT: cls.predictions.bias and decoder.bias): keep them equal
    first = model[0]
    mlm = getattr(first, "auto_model", None) or getattr(first, "model", None)
    preds = getattr(getattr(mlm, "cls", None), "predictions", None)
    if preds is not None and getattr(preds, "bias", None) is not None and preds.bias is not param:
        with torch.no_grad():
            preds.bias.copy_(values.to(preds.bias.dtype))


def max_logits(model, texts: Sequence[str], *, role: str = "document", batch_size: int = 32,
               show_progress: bool = True) -> np.ndarray:
    """Bias-free max-logits ``m_t(x) = max_i z_{i,t}(x)`` of ``texts``: float32 ``[len(texts), vocab]``.

    Read through the model's own ``encode_query`` / ``encode_document`` (same tokenisation, lengths and
    pooling as retrieval): the head's bias is raised by :data:`PROBE_OFFSET` so that no logit is
    clipped, the pooled ``log1p`` is inverted, and the bias is restored afterwards.
    """
    import torch

    if role not in ("query", "document"):
        raise EmbedKDError(f"max_logits: role must be query or document, got {role!r}")
    if getattr(model[-1], "pooling_strategy", "max") != "max" or getattr(model[-1], "activation_function", "relu") != "relu":
        raise EmbedKDError("term bias: needs SpladePooling('max', 'relu') (the bias moves out of a max only)")
    bias = get_term_bias(model)
    set_term_bias(model, bias + PROBE_OFFSET)
    try:
        fn = getattr(model, f"encode_{role}")
        pooled = fn(list(texts), batch_size=batch_size, show_progress_bar=show_progress, convert_to_tensor=True,
                    convert_to_sparse_tensor=False)
        pooled = (pooled.to_dense() if getattr(pooled, "is_sparse", False) else pooled).cpu()  # a GPU run's too
        out = torch.expm1(pooled.double()) - PROBE_OFFSET - torch.from_numpy(bias).double()
    finally:
        set_term_bias(model, bias)
    if len(texts) and bool((pooled <= 0).any()):
        raise EmbedKDError(f"max_logits: some logits are below -{PROBE_OFFSET}; cannot read them unclipped")
    return out.float().numpy()


def idf_bias(doc_max: np.ndarray, base: float, strength: float, *, threshold: float | None = None) -> np.ndarray:
    """A bias prior ``base + strength * (idf_t - mean idf)``: rare terms start stronger (BM25's IDF).

    Document frequency counts the documents where term ``t`` would be active under ``base``
    (``m_t + base > 0``; ``threshold`` overrides ``-base``); idf is BM25's
    ``ln(1 + (N - df + 0.5) / (df + 0.5))``.

    >>> m = np.array([[3.0, 0.0], [3.0, 6.0], [-9.0, 0.0]], dtype=np.float32)
    >>> [round(float(b), 3) for b in idf_bias(m, -5.0, 1.0)]  # term 0 is active nowhere: rarer, stronger
    [-4.451, -5.549]
    """
    thr = -base if threshold is None else threshold
    n = doc_max.shape[0]
    df = (doc_max > thr).sum(axis=0).astype(np.float64)
    idf = np.log1p((n - df + 0.5) / (df + 0.5))
    return (base + strength * (idf - idf.mean())).astype(np.float32)


@dataclass
class TermBiasFitOptions:
    """Hyper-parameters of :func:`fit_term_bias` (``sparse.term_bias`` in a training config)."""

    loss: str = "kl"                 # kl (listwise, all candidates) | margin_mse (sampled pairs)
    steps: int = 300
    queries_per_step: int = 16
    candidates_per_query: int = 64   # sampled per step from a query's list (all when shorter)
    lr: float = 0.05
    temperature: float = 3.0         # teacher z-scores × temperature = target logits (kl); margin scale (margin_mse)
    query_flops_weight: float = 1e-3
    doc_flops_weight: float = 1e-3
    l2_to_init: float = 1e-3
    seed: int = 0


def _zscore(x):
    sd = x.std(unbiased=False)
    return (x - x.mean()) / (sd if float(sd) > 0 else 1.0)


def term_bias_loss(q_w, d_w, teacher, mask, *, loss: str, temperature: float, student_scale=None):
    """Distillation loss of one step. ``q_w [B, V]``, ``d_w [B, K, V]``, ``teacher``/``mask`` ``[B, K]``.

    ``student_scale`` (a scalar tensor, optional) multiplies the student's dot products: a learned
    scale lets the loss match the teacher's spread without moving the biases (rankings do not change
    with it, so the saved model does not need it).

    ``kl``: KL(softmax(temperature·z(teacher)) ‖ softmax(student)) over each query's valid candidates;
    ``margin_mse``: MSE between student and temperature·teacher margins over all valid pairs (i, j).
    """
    import torch

    if d_w.shape[:2] != teacher.shape or teacher.shape != mask.shape or q_w.shape[0] != d_w.shape[0]:
        raise EmbedKDError(f"term bias loss: expected q_w [B,V], d_w [B,K,V], teacher/mask [B,K]; got "
                           f"{tuple(q_w.shape)}, {tuple(d_w.shape)}, {tuple(teacher.shape)}, {tuple(mask.shape)}")
    student = torch.einsum("bv,bkv->bk", q_w, d_w)
    if student_scale is not None:
        student = student * student_scale
    neg = torch.finfo(student.dtype).min
    if loss == "kl":
        target = torch.where(mask, teacher * temperature, torch.full_like(teacher, neg))
        s = torch.where(mask, student, torch.full_like(student, neg))
        p = torch.softmax(target, dim=-1)
        return (p * (torch.log_softmax(target, -1) - torch.log_softmax(s, -1))).where(mask, 0.0).sum(-1).mean()
    if loss == "margin_mse":
        ds = student.unsqueeze(2) - student.unsqueeze(1)
        dt = (teacher.unsqueeze(2) - teacher.unsqueeze(1)) * temperature
        pm = mask.unsqueeze(2) & mask.unsqueeze(1)
        return ((ds - dt) ** 2).where(pm, 0.0).sum() / pm.sum().clamp(min=1)
    raise EmbedKDError(f"term bias: loss must be kl or margin_mse, got {loss!r}")


def fit_term_bias(query_max: np.ndarray, doc_max: np.ndarray, groups: list[tuple[int, list[int], list[float]]],
                  init: np.ndarray, opts: TermBiasFitOptions | None = None,
                  evaluate: Callable[[np.ndarray], float] | None = None, eval_every: int = 50,
                  show_progress: bool = True) -> tuple[np.ndarray, dict]:
    """Fit the term bias (formula in the module docstring); returns ``(bias, info)``.

    ``evaluate(bias) -> float`` (e.g. dev nDCG@10), when given, is called every ``eval_every`` steps
    and at the end; the best-scoring bias is returned (``info["best_step"]``).
    """
    import torch
    from sentence_transformers.sparse_encoder.losses import FlopsLoss
    from tqdm.auto import tqdm

    opts = opts or TermBiasFitOptions()
    if query_max.shape[1] != doc_max.shape[1] or init.shape != (doc_max.shape[1],):
        raise EmbedKDError(f"term bias: vocab sizes differ: queries {query_max.shape}, documents {doc_max.shape}, "
                           f"init {init.shape}")
    groups = [g for g in groups if len(g[1]) >= 2]
    if not groups:
        raise EmbedKDError("term bias: no query has two or more scored candidates")
    flops = FlopsLoss(model=None).compute_loss_from_embeddings  # SPLADE's FLOPS: sum_t mean_x(w_t)^2
    qm, dm = torch.from_numpy(np.asarray(query_max)), torch.from_numpy(np.asarray(doc_max))
    b0 = torch.from_numpy(np.asarray(init, dtype=np.float32))
    bias = torch.nn.Parameter(b0.clone())
    log_scale = torch.nn.Parameter(torch.zeros(()))  # learned student score scale (ranking-invariant)
    optim = torch.optim.Adam([bias, log_scale], lr=opts.lr)
    rng = np.random.default_rng(opts.seed)
    K = opts.candidates_per_query
    best = (-math.inf, 0, b0.numpy().copy())
    info: dict = {"steps": opts.steps, "history": []}

    def _eval(step: int) -> None:
        nonlocal best
        if evaluate is None:
            return
        val = float(evaluate(bias.detach().numpy().copy()))
        info["history"].append({"step": step, "dev": val})
        if val > best[0]:
            best = (val, step, bias.detach().numpy().copy())

    _eval(0)
    bar = tqdm(range(1, opts.steps + 1), desc="term-bias fit", disable=not show_progress)
    for step in bar:
        pick = rng.choice(len(groups), size=min(opts.queries_per_step, len(groups)), replace=False)
        rows_q, rows_d, teach, mask = [], [], [], []
        for gi in pick:
            qrow, drows, scores = groups[gi]
            sel = rng.choice(len(drows), size=min(K, len(drows)), replace=False)
            t = _zscore(torch.tensor([scores[i] for i in sel], dtype=torch.float32))
            pad = K - len(sel)
            rows_q.append(qrow)
            rows_d.append([drows[i] for i in sel] + [drows[sel[0]]] * pad)
            teach.append(torch.cat([t, torch.zeros(pad)]))
            mask.append(torch.tensor([True] * len(sel) + [False] * pad))
        q_w = splade_weights(qm[rows_q].float(), bias)
        d_w = splade_weights(dm[torch.tensor(rows_d)].float(), bias)
        teacher, valid = torch.stack(teach), torch.stack(mask)
        distill = term_bias_loss(q_w, d_w, teacher, valid, loss=opts.loss, temperature=opts.temperature,
                                 student_scale=log_scale.exp())
        reg = (opts.query_flops_weight * flops(q_w) + opts.doc_flops_weight * flops(d_w.reshape(-1, d_w.shape[-1]))
               + opts.l2_to_init * ((bias - b0) ** 2).mean())
        total = distill + reg
        optim.zero_grad()
        total.backward()
        optim.step()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{float(distill.detach()):.4f}", reg=f"{float(reg.detach()):.4f}")
        if step % eval_every == 0 or step == opts.steps:
            _eval(step)
    info["student_scale"] = float(log_scale.detach().exp())
    if evaluate is None:
        return bias.detach().numpy().copy(), info
    info.update({"best_step": best[1], "best_dev": best[0]})
    return best[2], info
