"""Encoding texts with a bi-encoder: one place that decides batching, normalisation and progress.

``SentenceTransformer.encode`` already sorts each call's texts by length (longest first) so that a
batch pads to similar lengths, and restores the input order; we keep that and add the decisions
the rest of embed-kd relies on: whether embeddings are normalised (cosine models), a progress
bar with a description, and a refusal of non-finite embeddings (:mod:`embed_kd.numeric`).
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np

from embed_kd.numeric import check_finite_array

logger = logging.getLogger(__name__)


def uses_cosine(model) -> bool:
    """True when the model's similarity is cosine (so embeddings are L2-normalised for FAISS IP)."""
    name = getattr(model, "similarity_fn_name", None) or "cosine"
    return str(name).lower() in {"cosine", "cos", "cos_sim"}


def encode_texts(model, texts: Sequence[str], *, batch_size: int = 32, normalize: bool | None = None,
                 role: str = "document", show_progress: bool = True,
                 progress: Callable[[int], object] | None = None) -> np.ndarray:
    """Encode ``texts`` to a float32 matrix in input order.

    ``role`` is ``"query"`` or ``"document"``: models that declare query/document prompts (e5, bge)
    get them through ``encode_query`` / ``encode_document``; others encode the text as it is.

    ``progress`` (e.g. a tqdm bar's ``update``) is called with the number of texts after every
    batch: the texts are length-sorted as ``SentenceTransformer.encode`` sorts one call's inputs and
    encoded one batch per call, so the batches are the ones a single call would form.
    """
    if normalize is None:
        normalize = uses_cosine(model)
    fn = getattr(model, f"encode_{role}", None) or model.encode
    texts = list(texts)
    if progress is None:
        emb = fn(texts, batch_size=batch_size, show_progress_bar=show_progress, convert_to_numpy=True,
                 normalize_embeddings=normalize)
        return _finite(np.ascontiguousarray(emb, dtype=np.float32), model, role)
    order = np.argsort([-len(t) for t in texts])  # SentenceTransformer.encode's own length sort
    out = None
    for a in range(0, len(texts), batch_size):
        idx = order[a : a + batch_size]
        emb = np.asarray(fn([texts[i] for i in idx], batch_size=batch_size, show_progress_bar=False,
                            convert_to_numpy=True, normalize_embeddings=normalize), dtype=np.float32)
        if out is None:
            out = np.empty((len(texts), emb.shape[-1]), dtype=np.float32)
        out[idx] = _finite(emb, model, role)
        progress(len(idx))
    return out if out is not None else encode_texts(model, texts, batch_size=batch_size, normalize=normalize,
                                                    role=role, show_progress=False)


def _finite(emb: np.ndarray, model, role: str) -> np.ndarray:
    """Refuse NaN / ±inf embeddings (a diverged model): they would rank every document equal, silently."""
    if not np.isfinite(emb).all():
        name = getattr(model, "embed_kd_spec", None) or type(model).__name__
        check_finite_array(emb, f"model '{name}' returned non-finite {role} embeddings (its weights may be NaN)")
    return emb


def embedding_dim(model) -> int:
    getter = getattr(model, "get_embedding_dimension", None) or getattr(model, "get_sentence_embedding_dimension", None)
    dim = getter() if getter else None
    if dim is None:
        dim = int(model.encode(["dimension probe"], show_progress_bar=False).shape[-1])
    return int(dim)
