r"""Score distillation against frozen teacher document embeddings (the asymmetric setting).

In asymmetric search the student encodes only queries; documents are encoded once by the embedding
teacher. This wrapper trains exactly that: for each query :math:`q` with candidates
:math:`d_0 \ldots d_n` and score-teacher scores :math:`s_{q,i}`, the student embeds the query,
the documents are looked up in the teacher's (cached, frozen) embedding matrix :math:`T`, and the
wrapped sentence-transformers loss sees ``[e_q, T[d_0], ..., T[d_n]]`` as if they were columns:

.. math::

    \mathcal{L} = \mathrm{inner}\big([f_\theta(q), T_{d_0}, \ldots, T_{d_n}],\ s_{q,\cdot}\big)

e.g. with ``MarginMSELoss``: :math:`\frac1n\sum_{i\ge1}\big((e_q\cdot T_{d_0} - e_q\cdot T_{d_i}) -
(s_{q,0} - s_{q,i})\big)^2`. Only queries go through the student, so a step costs a fraction of
symmetric Margin-MSE (SciFact abstracts are ~20x longer than queries); the document side of the
student is kept in the teacher's space by the alignment loss (LEAF).

References: LEAF (2025), aligned students query documents encoded by the teacher; Hofstätter et
al. 2020 (Margin-MSE); sentence-transformers' ``MarginMSELoss`` / ``DistillKLDivLoss``
(``compute_loss_from_embeddings``).

+----------------------+------------------------------------------------------------------------+
| Inputs               | Labels                                                                 |
+======================+========================================================================+
| query                | ``(batch, n_candidates, 2)``: ``[..., 0]`` row index of the candidate   |
|                      | in the teacher document matrix, ``[..., 1]`` its teacher score          |
+----------------------+------------------------------------------------------------------------+

>>> import torch
>>> T = torch.eye(3)
>>> labels = torch.tensor([[[2.0, 0.9], [0.0, 0.1]]])
>>> docs, scores = gather_documents(T, labels)
>>> docs[0].tolist(), [[round(x, 3) for x in row] for row in scores.tolist()]
([[0.0, 0.0, 1.0]], [[0.9, 0.1]])
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch
from torch import Tensor, nn


def gather_documents(doc_embeddings: Tensor, labels: Tensor) -> tuple[list[Tensor], Tensor]:
    """Split ``labels`` ``(batch, n, 2)`` into per-candidate teacher embeddings and scores ``(batch, n)``."""
    if labels.dim() != 3 or labels.size(-1) != 2:
        raise ValueError(f"expected labels of shape (batch, n_candidates, 2) = [row index, score], "
                         f"got {tuple(labels.shape)}")
    rows = labels[..., 0].round().long()
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= doc_embeddings.size(0)):
        raise ValueError(f"document row index out of range 0..{doc_embeddings.size(0) - 1}: "
                         f"{int(rows.min())}..{int(rows.max())}")
    docs = doc_embeddings[rows]  # (batch, n, dim)
    return [docs[:, i] for i in range(docs.size(1))], labels[..., 1].to(torch.float32)


class TeacherDocumentsLoss(nn.Module):
    """Run a score loss on (student query, frozen teacher documents).

    Args:
        loss: a sentence-transformers loss with ``compute_loss_from_embeddings(embeddings, labels)``
            (``MarginMSELoss``, ``DistillKLDivLoss``, or one wrapped in
            :class:`~embed_kd.losses.score_scale.ScaledScoreLoss`).
        doc_embeddings: ``(n_docs, dim)`` teacher document embeddings (normalised as the teacher
            searches); stored as a buffer, never trained.
    """

    def __init__(self, loss: nn.Module, doc_embeddings: np.ndarray | Tensor) -> None:
        super().__init__()
        self.loss = loss
        self.model = loss.model
        emb = torch.as_tensor(np.asarray(doc_embeddings, dtype=np.float32))
        if emb.dim() != 2:
            raise ValueError(f"doc_embeddings must be 2-D (n_docs, dim), got {tuple(emb.shape)}")
        self.register_buffer("doc_embeddings", emb, persistent=False)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        from sentence_transformers.base.losses.merged_forward import embed_columns

        features = list(sentence_features)
        if len(features) != 1:
            raise ValueError(f"TeacherDocumentsLoss takes one text column (the query), got {len(features)}")
        query = embed_columns(self.model, features)[0]
        docs, scores = gather_documents(self.doc_embeddings.to(query.device), labels.to(query.device))
        if docs and docs[0].size(-1) != query.size(-1):
            raise ValueError(f"student embeddings are {query.size(-1)}-dim but teacher documents are "
                             f"{docs[0].size(-1)}-dim; give the student a projection to the teacher's dim")
        return self.loss.compute_loss_from_embeddings([query, *[d.to(query.dtype) for d in docs]], scores)

    def get_config_dict(self) -> dict[str, Any]:
        inner = self.loss.get_config_dict() if hasattr(self.loss, "get_config_dict") else {}
        return {"loss": type(self.loss).__name__, "documents": "teacher (frozen)",
                "n_docs": int(self.doc_embeddings.size(0)), **inner}
