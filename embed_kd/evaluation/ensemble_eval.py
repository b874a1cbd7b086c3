"""``eval --ensemble CONFIG``: an ensemble teacher (:mod:`embed_kd.teachers.ensemble`) evaluated
as a retriever — an ``embed-kd/eval@1`` result with ``mode: "ensemble"`` and an ``ensemble`` block
(the config, the weights document, each member's metrics, candidates per query).

With ``fit: dev`` the weights are fitted on a dev slice of the ``fit_split`` (``train``), never on
the evaluated split; ``--save-weights`` writes them (``embed-kd/ensemble-weights@1``) atomically.
"""

from __future__ import annotations

import time

import numpy as np

from embed_kd.data import load_beir
from embed_kd.data.beir import BeirDataset
from embed_kd.errors import EmbedKDError
from embed_kd.evaluation.retrieval_eval import eval_result
from embed_kd.io import atomic_write_json
from embed_kd.runs import evaluate_run
from embed_kd.teachers.dev_split import check_fit_split
from embed_kd.teachers.ensemble import (EnsembleConfig, ensemble_run, fit_weights, load_first_stage, load_rerankers,
                                        weights_document)
from embed_kd.teachers.rerank_scores import cross_encoder_info


def evaluate_ensemble(config: EnsembleConfig, dataset: BeirDataset, *, fit_dataset: BeirDataset | None = None,
                      cache_dir=None, use_cache: bool = True, show_progress: bool = True,
                      ignore_identical_ids: bool = False, timings: dict | None = None) -> dict:
    """Evaluate the ensemble on ``dataset`` (an ``embed-kd/eval@1`` result with ``mode: "ensemble"``).

    With ``config.fit == "dev"``, ``fit_dataset`` (the train split) is required and must not be the
    evaluated split's queries: weights come from its dev slice only.
    """
    t0 = time.perf_counter()
    timings = dict(timings or {})
    member_kwargs = {"cache_dir": cache_dir, "use_cache": use_cache, "show_progress": show_progress}
    t = time.perf_counter()
    members = load_first_stage(config, dataset, **member_kwargs)
    rerankers = load_rerankers(config) if config.rerankers else {}
    timings["load_models_s"] = time.perf_counter() - t

    weights = {m.name: config.weights.get(m.name, 1.0) for m in config.members}
    fit = None
    if config.fit == "dev":
        if fit_dataset is None:
            raise EmbedKDError(f"{config.source}: 'fit: dev' needs the {config.fit_split} split to fit on")
        check_fit_split(fit_dataset.split)
        if fit_dataset.split == dataset.split:
            raise EmbedKDError(f"ensemble weights must be fitted on another split than the evaluated one "
                               f"('{dataset.split}')")
        t = time.perf_counter()
        # the members are corpus-wide: reuse them (same corpus) for the dev slice
        same_corpus = fit_dataset.corpus is dataset.corpus or list(fit_dataset.corpus) == list(dataset.corpus)
        fitted = fit_weights(config, fit_dataset, members if same_corpus else None, rerankers,
                             show_progress=show_progress, cache_dir=cache_dir, use_cache=use_cache)
        weights, fit = fitted["weights"], fitted["fit"]
        timings["fit_s"] = time.perf_counter() - t

    t = time.perf_counter()
    run, parts = ensemble_run(config, dataset, weights, members, rerankers, show_progress=show_progress)
    timings["score_s"] = time.perf_counter() - t
    t = time.perf_counter()
    scored = evaluate_run(dataset.qrels, run, ignore_identical_ids=ignore_identical_ids)
    member_metrics = {name: evaluate_run(dataset.qrels, r, ignore_identical_ids=ignore_identical_ids)["metrics"]
                      for name, r in parts["retrieved"].items()}
    if config.rerankers:
        member_metrics["first_stage"] = evaluate_run(dataset.qrels, parts["first_stage"],
                                                     ignore_identical_ids=ignore_identical_ids)["metrics"]
    timings["evaluate_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0 + timings.get("load_data_s", 0.0)

    member_info = [dict(m.info) for m in members]
    for spec in config.rerankers:
        info = cross_encoder_info(rerankers[spec.name])
        member_info.append({"name": spec.name, "kind": spec.kind, "model": spec.model,
                            "model_fingerprint": info["fingerprint"], "max_length": info["max_length"]})
    label = {"spec": f"ensemble: {config.describe()}"}
    result = eval_result("ensemble", dataset, scored, timings, query_model=label, doc_model=label,
                         index={"kind": "ensemble", "top_k": max(m.k for m in config.first_stage)},
                         cache={"docs": "on" if use_cache else "off"})
    n_cand = [len(v) for v in next(iter(parts["scores"].values())).values()]
    result["ensemble"] = {
        "config": config.source,
        "weights_document": weights_document(config, weights, fit, member_info),
        "member_metrics": member_metrics,
        "candidates_per_query": {"mean": float(np.mean(n_cand)) if n_cand else 0.0,
                                 "max": int(max(n_cand)) if n_cand else 0},
    }
    result["run"] = run
    return result


def evaluate_ensemble_from_config(config_path, dataset: BeirDataset, folder, options, *, save_weights=None,
                                  overwrite: bool = False) -> dict:
    """What ``embed-kd eval --ensemble CONFIG`` runs: load the config (and the fit split when
    ``fit: dev``), evaluate, optionally write the weights JSON (atomically, never clobbering)."""
    config = EnsembleConfig.from_yaml(config_path)
    fit_dataset = None
    if config.fit == "dev":
        check_fit_split(config.fit_split)
        fit_dataset = load_beir(folder, config.fit_split, name=dataset.name)
    result = evaluate_ensemble(config, dataset, fit_dataset=fit_dataset, cache_dir=options.cache_dir,
                               use_cache=options.use_cache, show_progress=options.show_progress,
                               ignore_identical_ids=options.ignore_identical_ids, timings=options.timings)
    if save_weights:
        atomic_write_json(save_weights, result["ensemble"]["weights_document"], overwrite=overwrite)
    return result
