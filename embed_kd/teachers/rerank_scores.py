"""Raw cross-encoder logits for candidate (query, document) pairs — the re-ranking stage of
``eval --rerank`` (:mod:`embed_kd.evaluation.rerank`) and of ensemble teachers
(:mod:`embed_kd.teachers.ensemble`).

Documents are ``title + " " + text`` (:func:`embed_kd.data.beir.doc_text`); pairs are sorted by
text length before batching (less padding) and restored afterwards; the logit is the raw output
(no activation).
"""

from __future__ import annotations

from typing import Mapping

from embed_kd.data.beir import doc_text
from embed_kd.models import fingerprint_model, model_name


def cross_encoder_info(model) -> dict:
    """``{"spec", "fingerprint", "max_length"}`` of a loaded ``CrossEncoder``."""
    return {"spec": model_name(model), "fingerprint": fingerprint_model(model),
            "max_length": getattr(model, "max_seq_length", None)}


def score_pairs(model, queries: Mapping[str, str], corpus: Mapping[str, Mapping[str, str]],
                pairs: Mapping[str, list[str]], *, batch_size: int = 32, show_progress: bool = True
                ) -> dict[str, dict[str, float]]:
    """Raw cross-encoder logits for ``pairs[qid] = [doc_id, ...]`` → ``{qid: {doc_id: logit}}``.

    Pairs are sorted by text length before batching (less padding) and restored afterwards.
    """
    import torch

    flat = [(q, d) for q, docs in pairs.items() for d in docs]
    if not flat:
        return {q: {} for q in pairs}
    texts = [(queries[q], doc_text(corpus[d])) for q, d in flat]
    order = sorted(range(len(flat)), key=lambda i: -len(texts[i][1]))
    scores = model.predict([texts[i] for i in order], batch_size=batch_size, show_progress_bar=show_progress,
                           activation_fn=torch.nn.Identity(), convert_to_numpy=True)
    out: dict[str, dict[str, float]] = {q: {} for q in pairs}
    for i, s in zip(order, scores):
        q, d = flat[i]
        out[q][d] = float(s)
    return out
