"""Re-rank a first-stage run with a cross-encoder, the way BEIR measures re-rankers.

BEIR (Thakur et al., 2021, §4) re-ranks the top-K of a first-stage retriever (BM25, K = 100) with
a cross-encoder and scores the result with the same qrels. We do the same for any first stage
``eval`` can run (BM25, a bi-encoder, an ensemble):

- for each query, the first stage's ``depth`` best documents (ties by doc id, as trec_eval) are
  scored by the cross-encoder on ``(query, title + " " + text)``;
- those documents are ranked by the cross-encoder's raw logit; the documents below ``depth`` keep
  their first-stage order *below* every re-ranked document, so Recall@100 of a depth-20 re-rank
  still counts the first stage's ranks 21–100.

Scores in the returned run: re-ranked documents get ``logit + offset`` and the rest their
first-stage score, with ``offset`` chosen per query so that every re-ranked document scores above
every other one (only the order matters to the metrics).

The cross-encoder scoring is :func:`embed_kd.teachers.rerank_scores.score_pairs`, the merge
:func:`embed_kd.runs.merge_rerank`.
"""

from __future__ import annotations

import logging
import time

from embed_kd.data.beir import BeirDataset
from embed_kd.runs import Run, evaluate_run, merge_rerank, top_k
from embed_kd.teachers.rerank_scores import cross_encoder_info, score_pairs

logger = logging.getLogger(__name__)


def rerank_run(model, dataset: BeirDataset, first_stage: Run, *, depth: int = 100, batch_size: int = 32,
               show_progress: bool = True) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Re-rank ``first_stage``'s top-``depth`` with ``model``; returns ``(merged_run, ce_scores)``."""
    heads = top_k(first_stage, depth)
    pairs = {q: list(docs) for q, docs in heads.items()}
    ce = score_pairs(model, dataset.queries, dataset.corpus, pairs, batch_size=batch_size, show_progress=show_progress)
    return merge_rerank(first_stage, ce, depth), ce


def evaluate_rerank(dataset: BeirDataset, model, first_stage_result: dict, *, depth: int = 100, batch_size: int = 32,
                    show_progress: bool = True, ignore_identical_ids: bool = False) -> dict:
    """Turn a first-stage eval result (with its ``run``) into a re-rank result (schema ``embed-kd/eval@1``,
    ``mode: "rerank"``, plus a ``rerank`` block and the first stage's metrics)."""
    t = time.perf_counter()
    run, _ = rerank_run(model, dataset, first_stage_result["run"], depth=depth, batch_size=batch_size,
                        show_progress=show_progress)
    rerank_s = time.perf_counter() - t
    n_pairs = sum(min(depth, len(d)) for d in first_stage_result["run"].values())
    scored = evaluate_run(dataset.qrels, run, ignore_identical_ids=ignore_identical_ids)
    result = dict(first_stage_result)
    result.update(
        mode="rerank",
        first_stage={"mode": first_stage_result["mode"], "query_model": first_stage_result.get("query_model"),
                     "doc_model": first_stage_result.get("doc_model"), "metrics": first_stage_result["metrics"]},
        rerank={"model": cross_encoder_info(model), "depth": depth, "pairs": n_pairs,
                "pairs_per_s": n_pairs / rerank_s if rerank_s > 0 else None},
        metrics=scored["metrics"], per_query=scored["per_query"], run=run,
    )
    result["timings"] = {**first_stage_result["timings"], "rerank_s": rerank_s}
    result["timings"]["total_s"] = first_stage_result["timings"]["total_s"] + rerank_s
    return result
