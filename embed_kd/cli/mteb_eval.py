"""``embed-kd eval --mteb TASK[,TASK…]``: the MTEB branch of ``eval`` (kept out of eval.py's body).

Not a command of its own: :func:`run_mteb_eval` is called by ``embed-kd eval`` when ``--mteb`` is
given; it loads the models, resolves the tasks (:mod:`embed_kd.evaluation.mteb_eval`), runs them,
writes the ``embed-kd/mteb@1`` JSON and prints a table.
"""

from __future__ import annotations

import time
import warnings

import click


def run_mteb_eval(spec: str, *, data, split, model, query_model, doc_model, output, overwrite, batch_size,
                  limit_queries, limit_docs, allow_missing_ids, show_progress, cache_dir=None,
                  use_cache=True) -> None:
    from embed_kd.errors import EmbedKDError
    from embed_kd.evaluation.mteb_eval import mteb_table, parse_task_names, resolve_tasks, run_mteb
    from embed_kd.io import atomic_write_json, refuse_existing
    from embed_kd.models import load_sentence_transformer

    if model == "bm25":
        raise EmbedKDError("--mteb needs an embedding model (MTEB does not run bm25)")
    if output:
        from embed_kd.evaluation.outputs import MTEB_RESULT

        refuse_existing(output, overwrite, artifact=MTEB_RESULT)
    try:
        import mteb  # noqa: F401
    except ImportError:
        raise EmbedKDError("--mteb needs the 'mteb' package: pip install 'embed-kd[mteb]'") from None
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"mteb(\.|$)")
    if not show_progress:
        import datasets

        datasets.disable_progress_bars()
    names = parse_task_names(spec)
    tasks = resolve_tasks(names, data=data, split=split, limit_queries=limit_queries, limit_docs=limit_docs,
                          allow_missing_ids=allow_missing_ids)
    t = time.perf_counter()
    from embed_kd.students.asym import document_route, query_route, split_routes

    if model:  # an asym (Router) model runs asymmetrically: queries by its query route, documents by its document route
        qm, dm = split_routes(load_sentence_transformer(model))
        dm = None if dm is qm else dm
    else:
        qm, dm = query_route(load_sentence_transformer(query_model)), document_route(load_sentence_transformer(doc_model))
    result = run_mteb(tasks, qm, dm, batch_size=batch_size, show_progress=show_progress,
                      timings={"load_models_s": time.perf_counter() - t}, cache_dir=cache_dir, use_cache=use_cache)
    if output:
        atomic_write_json(output, result, overwrite=overwrite)
    click.echo(mteb_table(result))
    qps = result["throughput"]["queries_per_s"]
    click.echo(f"\nMTEB {result['versions']['mteb']}, {result['mode']}; "
               + (f"query encoding {qps:.1f} queries/s; " if qps else "")
               + f"doc cache: {result['cache']['docs']}; total {result['timings']['total_s']:.1f}s" + (f"; written to {output}" if output else ""),
               err=True)
