"""TREC runs — the currency between search, candidates, teachers, training's dev slices and
evaluation: cut a run to its top K, put a re-ranked head above the rest, and score a run with
``pytrec_eval`` (the trec_eval implementation BEIR and MTEB use).

Inputs are TREC-style dicts: ``qrels[qid][doc_id] = relevance`` (int) and
``run[qid][doc_id] = score`` (float, higher is better).

=================  ==============================================  ==========================
metric             definition                                      pytrec_eval measure
=================  ==============================================  ==========================
``ndcg_at_K``      nDCG over the top K (graded gains)              ``ndcg_cut.K``
``recall_at_K``    share of relevant documents in the top K        ``recall.K``
``mrr_at_K``       1/rank of the first relevant doc in the top K   ``recip_rank`` on the run
                                                                   truncated to its top K
=================  ==============================================  ==========================

Means are taken over every judged query (a query the run misses counts 0), except that, like
BEIR's ``EvaluateRetrieval.evaluate``, ``ignore_identical_ids=True`` first removes a document whose
id equals its query's id from the run.

>>> qrels = {"q1": {"d1": 1}, "q2": {"d3": 1}}
>>> run = {"q1": {"d1": 2.0, "d2": 1.0}, "q2": {"d1": 3.0, "d3": 2.0}}
>>> m = evaluate_run(qrels, run)["metrics"]
>>> round(m["ndcg_at_10"], 4), m["recall_at_100"], m["mrr_at_10"]
(0.8155, 1.0, 0.75)
"""

from __future__ import annotations

from typing import Iterable, Mapping

Run = Mapping[str, Mapping[str, float]]

DEFAULT_NDCG = (10,)
DEFAULT_RECALL = (100,)
DEFAULT_MRR = (10,)


def top_k(run: Mapping[str, Mapping[str, float]], k: int) -> dict[str, dict[str, float]]:
    """Each query's ``k`` best documents (ties broken by doc id, descending, as trec_eval does)."""
    out = {}
    for qid, docs in run.items():
        ranked = sorted(docs.items(), key=lambda x: (x[1], x[0]), reverse=True)[:k]
        out[qid] = dict(ranked)
    return out


def evaluate_run(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    *,
    ndcg_at: Iterable[int] = DEFAULT_NDCG,
    recall_at: Iterable[int] = DEFAULT_RECALL,
    mrr_at: Iterable[int] = DEFAULT_MRR,
    ignore_identical_ids: bool = False,
) -> dict:
    """Return ``{"metrics": {name: mean}, "per_query": {qid: {name: value}}}``."""
    import pytrec_eval

    run = {q: {d: float(s) for d, s in docs.items() if not (ignore_identical_ids and d == q)}
           for q, docs in run.items() if q in qrels}
    qrels = {q: dict(d) for q, d in qrels.items()}
    ndcg_at, recall_at, mrr_at = list(ndcg_at), list(recall_at), list(mrr_at)
    measures = {f"ndcg_cut.{','.join(map(str, ndcg_at))}", f"recall.{','.join(map(str, recall_at))}"}
    per_query: dict[str, dict[str, float]] = {q: {} for q in qrels}
    scored = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    for q, vals in scored.items():
        for k in ndcg_at:
            per_query[q][f"ndcg_at_{k}"] = vals[f"ndcg_cut_{k}"]
        for k in recall_at:
            per_query[q][f"recall_at_{k}"] = vals[f"recall_{k}"]
    for k in mrr_at:
        rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top_k(run, k))
        for q, vals in rr.items():
            per_query[q][f"mrr_at_{k}"] = vals["recip_rank"]
    names = [f"ndcg_at_{k}" for k in ndcg_at] + [f"recall_at_{k}" for k in recall_at] + [f"mrr_at_{k}" for k in mrr_at]
    n = len(qrels)
    metrics = {name: sum(per_query[q].get(name, 0.0) for q in qrels) / n for name in names}
    return {"metrics": metrics, "per_query": per_query, "n_queries": n}


def merge_rerank(first_stage: Run, reranked: Run, depth: int) -> dict[str, dict[str, float]]:
    """Put each query's re-ranked documents (by their new score) above the rest of its first stage.

    Re-ranked documents get ``score + offset``, the rest their first-stage score, with ``offset``
    chosen per query so that every re-ranked document scores above every other one.

    >>> merge_rerank({"q": {"a": 3.0, "b": 2.0, "c": 1.0}}, {"q": {"a": -1.0, "b": 4.0}}, depth=2)["q"]
    {'b': 7.0, 'a': 2.0, 'c': 1.0}
    """
    out = {}
    for q, docs in first_stage.items():
        new = reranked.get(q, {})
        rest = {d: float(s) for d, s in docs.items() if d not in new}
        if not new:
            out[q] = rest
            continue
        floor = max(rest.values()) if rest else 0.0
        offset = floor - min(new.values()) + 1.0
        merged = {d: s + offset for d, s in sorted(new.items(), key=lambda x: (-x[1], x[0]))}
        merged.update(sorted(rest.items(), key=lambda x: (-x[1], x[0])))
        out[q] = merged
    return out
