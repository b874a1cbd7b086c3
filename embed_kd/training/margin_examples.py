"""Score examples from a store that holds teacher *margins* (``score_kind: margin``), trained on as margins.

An imported file may know only :math:`m = s(q, d^+) - s(q, d^-)` per triple (e.g. the
``sentence-transformers/msmarco`` margin subsets; :mod:`embed_kd.teachers.importers`). No absolute
score is made up: an example is a positive and ``negatives`` of *its* negatives, labelled

.. math::  [\\,0,\\; -m_1,\\; \\dots,\\; -m_N\\,] \\cdot c

which is exact for both score losses: ``MarginMSELoss`` only reads ``label[0] - label[i] = m_i``,
and the listwise ``DistillKLDivLoss`` takes a softmax over the list, which does not change when
every score shifts by the positive's unknown absolute score. ``c`` is ``1 / std`` of all the
store's margins when ``examples.score_norm`` is ``zscore`` or ``minmax`` (a margin has no per-query
location to normalise, so a store-wide scale stands in for the per-query z-score), ``1`` for
``none``; ``losses.score_scale`` multiplies as usual.

Negatives of a positive are ranked hardest first (smallest margin) and drawn with the declared
``examples.sampling``; rounds cycle through a query's positives, as for absolute scores. The rows
have the layout of :mod:`embed_kd.training.data` (``score_documents: teacher`` or ``student``).

>>> group_margins([("p1", "n1", 2.0), ("p1", "n2", 0.5), ("p2", "n1", 1.0)])
{'p1': [('n2', 0.5), ('n1', 2.0)], 'p2': [('n1', 1.0)]}
"""

from __future__ import annotations

import logging
import random

import numpy as np

from embed_kd.data.beir import doc_text
from embed_kd.errors import EmbedKDError

logger = logging.getLogger(__name__)


def group_margins(rows: list[tuple[str, str, float]]) -> dict[str, list[tuple[str, float]]]:
    """``{pos_id: [(neg_id, margin), ...]}``, negatives hardest (smallest margin) first, positives in order."""
    out: dict[str, list[tuple[str, float]]] = {}
    for p, n, m in rows:
        out.setdefault(p, []).append((n, m))
    return {p: sorted(v, key=lambda x: (x[1], x[0])) for p, v in out.items()}


def margin_scale(store, score_norm: str) -> float:
    """``1 / std`` of the store's margins (``zscore`` / ``minmax``), or 1 (``none``)."""
    if score_norm == "none":
        return 1.0
    m = store.table(["score"]).column("score").to_numpy()
    std = float(np.std(m)) if len(m) > 1 else 0.0
    return 1.0 / std if std > 1e-12 else 1.0


def build_margin_examples(store, dataset, train_qids: list[str], *, negatives: int, sampling: str, rounds: int,
                          score_norm: str, documents: str, doc_row: dict[str, int] | None, seed: int,
                          keep_docs=None):
    """:class:`~embed_kd.training.data.ScoreExamples` for ``train_qids`` from a margin store (module docstring)."""
    import pyarrow as pa

    from embed_kd.training.data import ScoreExamples, sample_negatives

    scale = margin_scale(store, score_norm)
    want = set(train_qids)
    rng = random.Random(seed)
    rows: list[dict] = []
    seen = set()
    for qid, triples in store.iter_margins():
        if qid not in want:
            continue
        if keep_docs is not None:
            triples = [t for t in triples if t[0] in keep_docs and t[1] in keep_docs]
        unknown = next((d for t in triples for d in t[:2] if d not in dataset.corpus), None)
        if unknown is not None:
            raise EmbedKDError(f"score store: query {qid!r} names document {unknown!r} that is not in the corpus "
                               "(scores made on another corpus?)")
        groups = group_margins(triples)
        if not groups:
            continue
        seen.add(qid)
        positives = list(groups)
        for r in range(rounds):
            pos = positives[r % len(positives)]
            ranked = [n for n, _ in groups[pos]]
            margin = dict(groups[pos])
            negs = sample_negatives(ranked, negatives, sampling, rng)
            if len(negs) < negatives:  # pad by repeating (a fixed column count), as for absolute scores
                negs = (negs * (negatives // max(1, len(negs)) + 1))[:negatives]
            labels = [0.0] + [-margin[n] * scale for n in negs]
            docs = [pos, *negs]
            if documents == "teacher":
                rows.append({"query": dataset.queries[qid],
                             "label": [[float(doc_row[d]), float(s)] for d, s in zip(docs, labels)]})
            else:
                row = {"query": dataset.queries[qid]}
                row.update({f"doc_{i}": doc_text(dataset.corpus[d]) for i, d in enumerate(docs)})
                row["label"] = [float(s) for s in labels]
                rows.append(row)
    if not rows:
        raise EmbedKDError(f"{store.path}: no training examples could be built from its margins (no train query "
                           "of the dataset has a triple in the store)")
    stats = {"queries": len(seen), "examples": len(rows), "skipped_not_in_store": len(want - seen),
             "negatives": negatives, "sampling": sampling, "rounds": rounds, "score_norm": score_norm,
             "documents": documents, "score_kind": "margin", "margin_scale": scale}
    logger.info("margin examples: %d rows from %d queries (%d negatives x %d, scale %.4g)", len(rows), len(seen),
                negatives, rounds, scale)
    return ScoreExamples(pa.Table.from_pylist(rows), stats)
