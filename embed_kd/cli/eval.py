"""``embed-kd eval``: retrieval quality of a model (or a student/teacher pair) on a BEIR split."""

from __future__ import annotations

import click

from embed_kd.cli.backend import backend_option
from embed_kd.cli.compress import compression_from_flags, compression_options
from embed_kd.cli.common import device_option, note, run_command, set_threads, setup_logging, verbosity_options


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
    from embed_kd.evaluation.request import EvalRequest, run_eval

    setup_logging(verbose, quiet)
    set_threads(threads)
    req = EvalRequest(
        data=data, split=split, corpus_file=corpus_file, model=model, query_model=query_model, doc_model=doc_model,
        mteb_tasks=mteb_tasks, output=output, overwrite=overwrite, save_run=save_run, index_kind=index_kind,
        top_k=top_k, batch_size=batch_size, cache_dir=cache_dir, use_cache=not no_cache, limit_queries=limit_queries,
        limit_docs=limit_docs, allow_missing_ids=allow_missing_ids, ignore_identical_ids=ignore_identical_ids,
        threads=threads, show_progress=not no_progress, ensemble_config=ensemble_config, save_weights=save_weights,
        rerank_model=rerank_model, rerank_depth=rerank_depth, doc_top_k=doc_top_k, query_top_k=query_top_k,
        loyalty_teacher=loyalty_teacher, allow_teacher_mismatch=allow_teacher_mismatch, sts=sts, sts_split=sts_split,
        sts_teacher=sts_teacher, compression=compression_from_flags(truncate_dim, precision, rescore),
        backend=backend, device=device)
    res = run_eval(req)
    if not res.is_main:  # under torchrun: rank 0 reports
        return
    {"mteb": _echo_mteb, "sts": _echo_sts_only}.get(res.mode, _echo_retrieval)(res.document, output, verbose)


def _echo_retrieval(result: dict, output, verbose) -> None:
    from embed_kd.evaluation.report import markdown_table, timings_table

    click.echo(markdown_table([result]))
    if "sparse" in result:
        sp = result["sparse"]
        click.echo(f"\nsparse: query non-zeros {sp['avg_query_nnz']:.1f}, document non-zeros {sp['avg_doc_nnz']:.1f}"
                   + (f" (top-{sp['doc_top_k']} of {sp['avg_doc_nnz_unpruned']:.1f})" if sp["doc_top_k"] else "")
                   + f", FLOPS {sp['flops']:.3f} per (query, doc), {sp['postings_per_query']:,.0f} postings per query")
    if "loyalty" in result:
        ly = result["loyalty"]
        fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        click.echo(f"\nloyalty to {ly['teacher']['spec']}: top-10 overlap {fmt(ly['top10_overlap'])}, "
                   f"Spearman {fmt(ly['spearman'])}, query cosine {fmt(ly['query_cosine'])}, "
                   f"doc cosine {fmt(ly['doc_cosine'])}")
    if "sts" in result:
        _echo_sts(result["sts"])
    if verbose:
        click.echo()
        click.echo(timings_table(result))
    note(f"\n{result['dataset']['n_queries']} queries × {result['dataset']['n_docs']} docs; "
         f"doc cache: {result['cache']['docs']}; total {result['timings']['total_s']:.1f}s"
         + (f"; written to {output}" if output else ""))


def _echo_sts_only(result: dict, output, verbose) -> None:
    _echo_sts(result)
    if output:
        note(f"written to {output}")


def _echo_sts(result: dict) -> None:
    from embed_kd.evaluation.sts import sts_table

    rows = [result] if not result.get("teacher") else [
        {**result, "model": result["teacher"]["model"], "metrics": result["teacher"]["metrics"], "teacher": None},
        result]
    click.echo("\n" + sts_table(rows))
    note(result["encoding"])


def _echo_mteb(result: dict, output, verbose) -> None:
    from embed_kd.evaluation.mteb_eval import mteb_table

    click.echo(mteb_table(result))
    qps = result["throughput"]["queries_per_s"]
    note(f"\nMTEB {result['versions']['mteb']}, {result['mode']}; "
         + (f"query encoding {qps:.1f} queries/s; " if qps else "")
         + f"doc cache: {result['cache']['docs']}; total {result['timings']['total_s']:.1f}s"
         + (f"; written to {output}" if output else ""))
