"""``embed-kd eval``: retrieval quality of a model (or a student/teacher pair) on a BEIR split."""

from __future__ import annotations

import time
from pathlib import Path

import click

from embed_kd.cli.backend import backend_option
from embed_kd.cli.compress import compression_from_flags, compression_options
from embed_kd.cli.common import device_option, run_command, set_threads, setup_logging, verbosity_options


@click.command("eval")
@click.option("--data", help="BEIR folder, or a dataset name resolved under $EMBED_KD_DATA / downloaded "
              "(required, except with --mteb where it replaces a retrieval task's hub data).")
@click.option("--split", default="test", show_default=True, help="qrels split to evaluate.")
@click.option("--corpus", "corpus_file", help="Corpus file (JSONL/TSV/plain text, .gz, hf:) replacing --data's corpus.")
@click.option("--model", help="Symmetric mode: one bi-encoder for queries and documents ('bm25' for BM25).")
@click.option("--query-model", help="Asymmetric mode: the model that encodes queries (the student).")
@click.option("--doc-model", help="Asymmetric mode: the model that encodes documents (the teacher).")
@click.option("--mteb", "mteb_tasks", metavar="TASK[,TASK…]",
              help="Run these MTEB tasks with the model(s) instead (beir:FOLDER = a local BEIR retrieval task).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the result JSON here.")
@click.option("--overwrite", is_flag=True, help="Replace --output if it exists.")
@click.option("--save-run", type=click.Path(dir_okay=False), help="Also write the run (qid → doc → score) as JSON.")
@click.option("--index", "index_kind", type=click.Choice(["flat", "hnsw", "ivfpq", "auto"]), default="flat",
              show_default=True,
              help="FAISS index: exact inner product, or approximate for large corpora.")
@click.option("--top-k", default=100, show_default=True, type=click.IntRange(1), help="Documents retrieved per query.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1), help="Encoding batch size.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Embedding cache root (default $EMBED_KD_CACHE or ~/.cache/embed_kd).")
@click.option("--no-cache", is_flag=True, help="Do not read or write the document-embedding cache.")
@click.option("--limit-queries", type=click.IntRange(1), help="Smoke run: only the first N judged queries.")
@click.option("--limit-docs", type=click.IntRange(1), help="Smoke run: judged docs of kept queries + others up to N docs.")
@click.option("--allow-missing-ids", is_flag=True, help="Drop (and count) qrels rows naming unknown ids instead of failing.")
@click.option("--ignore-identical-ids", is_flag=True, help="Drop a retrieved doc whose id equals the query id (BEIR's option).")
@click.option("--threads", type=click.IntRange(1), help="torch CPU threads (default: torch's choice).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("--ensemble", "ensemble_config", type=click.Path(dir_okay=False),
              help="Evaluate an ensemble teacher from this YAML (members, norm, fusion, weights or fit: dev).")
@click.option("--save-weights", type=click.Path(dir_okay=False),
              help="With --ensemble: write the (fitted) weights JSON that score-teacher reads.")
@click.option("--rerank", "rerank_model", help="Re-rank the first stage's top-K with this cross-encoder (folder/preset).")
@click.option("--rerank-depth", default=100, show_default=True, type=click.IntRange(1), help="K for --rerank (BEIR: 100).")
@click.option("--doc-top-k", type=click.IntRange(1),
              help="Sparse models: keep each document vector's K largest weights (static index pruning).")
@click.option("--query-top-k", type=click.IntRange(1), help="Sparse models: keep each query vector's K largest weights.")
@click.option("--loyalty-teacher", help="Also report loyalty to this embedding teacher (top-10 overlap, Spearman, cosine).")
@click.option("--allow-teacher-mismatch", is_flag=True,
              help="Asymmetric mode: evaluate even when --query-model declares another embedding teacher than "
                   "--doc-model (a warning instead of a refusal).")
@click.option("--sts", "sts", metavar="FILE|stsb",
              help="Also (or, without --data, only) measure cosine Spearman/Pearson on an STS file of scored "
                   "sentence pairs; 'stsb' = the STS Benchmark under $EMBED_KD_DATA/stsb.")
@click.option("--sts-split", type=click.Choice(["train", "dev", "test"]), default="test", show_default=True,
              help="Split of --sts stsb.")
@click.option("--sts-teacher", help="Reference model for --sts (reported beside, with the ratio; default: an "
              "asymmetric pair's --doc-model).")
@compression_options
@backend_option
@device_option
@verbosity_options
@run_command
def eval_command(data, split, corpus_file, model, query_model, doc_model, mteb_tasks, output, overwrite, save_run, index_kind, top_k,
                 batch_size, cache_dir, no_cache, limit_queries, limit_docs, allow_missing_ids,
                 ignore_identical_ids, threads, no_progress, ensemble_config, save_weights, rerank_model,
                 rerank_depth, doc_top_k, query_top_k, loyalty_teacher, allow_teacher_mismatch, sts, sts_split, sts_teacher, verbose, quiet, device=None,
                 truncate_dim=None, precision=None, rescore=None, backend="torch"):
    """Encode, index with FAISS and score with pytrec_eval (nDCG@10, Recall@100, MRR@10).

    A SparseEncoder (SPLADE) model is searched exactly on a SciPy sparse inverted index instead
    (non-zeros and FLOPs reported; --doc-top-k / --query-top-k prune the vectors).

    \b
    Symmetric:   embed-kd eval --data scifact --model minilm-l6
    Sparse:      embed-kd eval --data scifact --model runs/sparse-student --doc-top-k 128
    Asymmetric:  embed-kd eval --data scifact --query-model runs/student --doc-model minilm-l6
    BM25:        embed-kd eval --data scifact --model bm25
    STS only:    embed-kd eval --sts stsb --model runs/student --sts-teacher minilm-l6
    """
    from embed_kd import distributed as dist
    from embed_kd.errors import EmbedKDError
    from embed_kd.io import atomic_write_json, check_writable, refuse_existing

    setup_logging(verbose, quiet)
    set_threads(threads)
    world = dist.init()  # under torchrun: the corpus is encoded data-parallel, rank 0 writes and prints
    from embed_kd.device import select_device
    select_device(device)  # --device / $EMBED_KD_DEVICE / auto; logged once
    if model and (query_model or doc_model):
        raise EmbedKDError("pass either --model (symmetric) or --query-model/--doc-model (asymmetric), not both")
    if ensemble_config and (model or query_model or doc_model):
        raise EmbedKDError("--ensemble replaces --model/--query-model/--doc-model: pass one or the other")
    if save_weights and not ensemble_config:
        raise EmbedKDError("--save-weights needs --ensemble")
    if not ensemble_config and not model and not (query_model and doc_model):
        raise EmbedKDError("pass --model, or both --query-model and --doc-model")
    if loyalty_teacher and (ensemble_config or model == "bm25"):
        raise EmbedKDError("--loyalty-teacher compares a dense retriever's embeddings with the teacher's: it needs "
                           "--model M or --query-model/--doc-model (not bm25 or --ensemble)")
    if mteb_tasks:
        if world.distributed:
            raise EmbedKDError("--mteb runs MTEB's own evaluation loop in one process; launch it without torchrun")
        if ensemble_config or rerank_model or save_run:
            raise EmbedKDError("--mteb runs MTEB's own search and scoring: --ensemble/--rerank/--save-run do not apply")
        from embed_kd.cli.mteb_eval import run_mteb_eval

        return run_mteb_eval(mteb_tasks, data=data, split=split, model=model, query_model=query_model,
                             doc_model=doc_model, output=output, overwrite=overwrite, batch_size=batch_size,
                             limit_queries=limit_queries, limit_docs=limit_docs, allow_missing_ids=allow_missing_ids,
                             show_progress=not no_progress, cache_dir=cache_dir, use_cache=not no_cache)
    if sts_teacher and not sts:
        raise EmbedKDError("--sts-teacher needs --sts")
    if sts and (ensemble_config or model == "bm25"):
        raise EmbedKDError("--sts measures a bi-encoder's embeddings: pass --model M or --query-model/--doc-model "
                           "(not bm25 or --ensemble)")
    if sts and not data:
        return _sts_only(sts, sts_split, model=model, query_model=query_model, doc_model=doc_model,
                         sts_teacher=sts_teacher, output=output, overwrite=overwrite, save_run=save_run,
                         rerank_model=rerank_model, loyalty_teacher=loyalty_teacher, batch_size=batch_size,
                         show_progress=not no_progress, world=world)
    if not data:
        raise EmbedKDError("--data is required (it is optional only with --mteb or --sts)")
    if (doc_top_k or query_top_k) and not _any_sparse(model, query_model, doc_model):
        raise EmbedKDError("--doc-top-k / --query-top-k prune sparse vectors; pass a sparse model (--model SPARSE_MODEL)")
    from embed_kd.evaluation import outputs

    # before any work: two flags naming one file, and outputs that are not embed-kd's of that kind
    outputs.check_distinct({"-o": output, "--save-run": save_run, "--save-weights": save_weights})
    for path, artifact in ((output, outputs.EVAL_RESULT), (save_run, outputs.RUN),
                           (save_weights, outputs.ENSEMBLE_WEIGHTS)):
        if path:
            refuse_existing(path, overwrite, artifact=artifact)
            check_writable(path)  # a read-only or missing folder fails now, not after the encode

    from embed_kd.data import load_beir, resolve_dataset
    from embed_kd.evaluation.report import markdown_table, timings_table
    from embed_kd.evaluation.retrieval_eval import EvalOptions, evaluate_bm25, evaluate_dense
    from embed_kd.models import load_sentence_transformer

    t = time.perf_counter()
    folder = resolve_dataset(data)
    if corpus_file:
        from embed_kd.data.inputs import load_inputs

        dataset = load_inputs(data=folder, split=split, corpus=corpus_file, allow_missing_ids=allow_missing_ids)
    else:
        dataset = load_beir(folder, split, name=Path(folder).name, allow_missing_ids=allow_missing_ids)
    if limit_queries or limit_docs:
        dataset = dataset.sliced(limit_queries, limit_docs)
    load_data_s = time.perf_counter() - t

    opts = EvalOptions(top_k=top_k, index=index_kind, batch_size=batch_size, cache_dir=cache_dir,
                       use_cache=not no_cache, ignore_identical_ids=ignore_identical_ids,
                       show_progress=not no_progress, timings={"load_data_s": load_data_s},
                       compression=compression_from_flags(truncate_dim, precision, rescore))
    if opts.compression is not None and (ensemble_config or model == "bm25" or _any_sparse(model, query_model, doc_model)):
        raise EmbedKDError("--truncate-dim / --precision / --rescore compress dense embeddings: they need a dense "
                           "--model or --query-model/--doc-model (not bm25, a sparse model or --ensemble)")
    in_memory = {}  # spec -> model already loaded (reused by --sts)
    if ensemble_config:
        from embed_kd.evaluation.ensemble_eval import evaluate_ensemble_from_config

        result = evaluate_ensemble_from_config(ensemble_config, dataset, folder, opts, save_weights=save_weights,
                                               overwrite=overwrite)
    elif model == "bm25":
        result = evaluate_bm25(dataset, options=opts)
    elif _any_sparse(model, query_model, doc_model):
        if not model:
            raise EmbedKDError("sparse models are evaluated symmetrically (queries and documents in one vocabulary "
                               "space): pass --model SPARSE_MODEL instead of --query-model/--doc-model")
        if loyalty_teacher:
            raise EmbedKDError("--loyalty-teacher compares dense embeddings; it does not apply to a sparse model")
        from embed_kd.evaluation.sparse_eval import evaluate_sparse
        from embed_kd.models import load_sparse_encoder

        t = time.perf_counter()
        sm = in_memory[model] = load_sparse_encoder(model)
        opts.timings["load_models_s"] = time.perf_counter() - t
        result = evaluate_sparse(dataset, sm, options=opts, doc_top_k=doc_top_k, query_top_k=query_top_k)
        result.pop("_matrices")
    else:
        t = time.perf_counter()
        from embed_kd.students.asym import document_route, query_route, split_routes

        if model:  # an asym (Router) model splits into its query and document towers
            qm, dm = split_routes(load_sentence_transformer(model))
        else:
            qm, dm = query_route(load_sentence_transformer(query_model)), document_route(load_sentence_transformer(doc_model))
        if backend != "torch":  # converted once (cached), the same weights: the fingerprints stay
            from embed_kd.teachers.bi_backend import with_backend

            conv = Path(cache_dir) if cache_dir else None
            qm, dm = (with_backend(m, backend, threads=threads, cache_root=conv) for m in (qm, dm))
        opts.timings["load_models_s"] = time.perf_counter() - t
        in_memory.update({model or query_model: qm, doc_model or model: dm})
        alignment = None
        if not model:
            from embed_kd.models import model_info
            from embed_kd.students.alignment import query_model_alignment

            q_info, d_info = model_info(qm), model_info(dm)
            if q_info["dim"] == d_info["dim"]:  # else evaluate_dense refuses the dimensions
                alignment = query_model_alignment(query_model, q_info, d_info, allow_mismatch=allow_teacher_mismatch,
                                                  docs="--doc-model's documents")
        result = evaluate_dense(dataset, qm, dm, options=opts)
        if alignment is not None:
            result["alignment"] = alignment

    if loyalty_teacher:
        from embed_kd.evaluation.loyalty import evaluate_loyalty

        result["loyalty"] = evaluate_loyalty(dataset, qm, dm, load_sentence_transformer(loyalty_teacher),
                                             options=opts, run=result["run"])
    if rerank_model:
        from embed_kd.evaluation.rerank import evaluate_rerank
        from embed_kd.models import load_cross_encoder

        result = evaluate_rerank(dataset, load_cross_encoder(rerank_model, role="--rerank"), result, depth=rerank_depth,
                                 batch_size=batch_size, show_progress=not no_progress,
                                 ignore_identical_ids=ignore_identical_ids)
    if sts:
        from embed_kd.evaluation.sts import evaluate_sts_specs

        result["sts"] = evaluate_sts_specs(sts, sts_split, model=model, query_model=query_model, doc_model=doc_model,
                                           teacher=sts_teacher, loaded=in_memory,
                                           batch_size=batch_size, show_progress=not no_progress)
    run = result.pop("run")
    if not world.is_main:
        return
    written = []
    try:  # both outputs or neither: a failed -o removes the --save-run file written just before
        if save_run:
            atomic_write_json(save_run, run, overwrite=overwrite)
            written.append(Path(save_run))
        if output:
            atomic_write_json(output, result, overwrite=overwrite)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    click.echo(markdown_table([result]))
    if "sparse" in result:
        sp = result["sparse"]
        click.echo(f"\nsparse: query non-zeros {sp['avg_query_nnz']:.1f}, document non-zeros {sp['avg_doc_nnz']:.1f}"
                   + (f" (top-{sp['doc_top_k']} of {sp['avg_doc_nnz_unpruned']:.1f})" if sp["doc_top_k"] else "")
                   + f", FLOPS {sp['flops']:.3f} per (query, doc), {sp['postings_per_query']:,.0f} postings per query")
    if loyalty_teacher:
        ly = result["loyalty"]
        fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        click.echo(f"\nloyalty to {ly['teacher']['spec']}: top-10 overlap {fmt(ly['top10_overlap'])}, "
                   f"Spearman {fmt(ly['spearman'])}, query cosine {fmt(ly['query_cosine'])}, "
                   f"doc cosine {fmt(ly['doc_cosine'])}")
    if sts:
        _echo_sts(result["sts"])
    if verbose:
        click.echo()
        click.echo(timings_table(result))
    click.echo(f"\n{result['dataset']['n_queries']} queries × {result['dataset']['n_docs']} docs; "
               f"doc cache: {result['cache']['docs']}; total {result['timings']['total_s']:.1f}s"
               + (f"; written to {output}" if output else ""), err=True)


def _any_sparse(*specs) -> bool:
    from embed_kd.models import is_sparse_model

    return any(s and is_sparse_model(s) for s in specs)


def _sts_only(sts, split, *, model, query_model, doc_model, sts_teacher, output, overwrite, save_run, rerank_model,
              loyalty_teacher, batch_size, show_progress, world):
    """``eval --sts`` without ``--data``: STS correlations only (an ``embed-kd/sts@1`` result)."""
    from embed_kd.errors import EmbedKDError
    from embed_kd.evaluation.sts import evaluate_sts_specs, sts_document
    from embed_kd.io import atomic_write_json

    from embed_kd.io import check_writable, refuse_existing

    if save_run or rerank_model or loyalty_teacher:
        raise EmbedKDError("--save-run/--rerank/--loyalty-teacher are retrieval options; --sts without --data "
                           "measures STS only")
    if output:
        from embed_kd.evaluation.outputs import STS_RESULT

        refuse_existing(output, overwrite, artifact=STS_RESULT)  # only an earlier STS result is replaced
        check_writable(output)
    result = sts_document(evaluate_sts_specs(sts, split, model=model, query_model=query_model, doc_model=doc_model,
                                             teacher=sts_teacher, batch_size=batch_size,
                                             show_progress=show_progress))
    if not world.is_main:
        return
    if output:
        atomic_write_json(output, result, overwrite=overwrite)
    _echo_sts(result)
    if output:
        click.echo(f"written to {output}", err=True)


def _echo_sts(result: dict) -> None:
    from embed_kd.evaluation.sts import sts_table

    rows = [result] if not result.get("teacher") else [
        {**result, "model": result["teacher"]["model"], "metrics": result["teacher"]["metrics"], "teacher": None},
        result]
    click.echo("\n" + sts_table(rows))
    click.echo(result["encoding"], err=True)
