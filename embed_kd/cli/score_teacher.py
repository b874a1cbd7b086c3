"""``embed-kd score-teacher``: candidates + teacher scores on disk (run / merge / export)."""

from __future__ import annotations

import click

from embed_kd.cli.common import device_option, note, run_command, set_threads, setup_logging, verbosity_options
from embed_kd.cli.options import encoding_options
from embed_kd.teachers.bi_backend import BACKENDS as BI_BACKENDS
from embed_kd.teachers.scorers import BACKENDS


class _DefaultRunGroup(click.Group):
    """``score-teacher --data …`` runs the ``run`` subcommand; ``merge`` / ``export`` are subcommands."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group("score-teacher", cls=_DefaultRunGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def score_teacher_group() -> None:
    """Mine candidates and store teacher scores for a BEIR split (resumable, shardable).

    \b
    Score:   embed-kd score-teacher --data scifact --split train --candidates bm25:50 \\
               --candidates dense:minilm-l6:50 --teacher ce:runs/my-ce -o scores/scifact-ce
    Ensemble: --teacher bm25 --teacher minilm-l6 --ensemble zscore [--weights bm25=1,minilm-l6=2]
    Shards:  --shard 0/2 -o scores/s0  and  --shard 1/2 -o scores/s1, then
             embed-kd score-teacher merge scores/s0 scores/s1 -o scores/all
    Launch:  torchrun --nproc-per-node 4 -m embed_kd score-teacher ... -o scores/all
             (one shard per process, merged and checked by rank 0; docs/scaling.md)
    Export:  embed-kd score-teacher export scores/all --format margin-mse-tsv -o triples.tsv
    """


def _parse_shard(ctx, param, value):
    if value is None:
        return None
    try:
        i, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"expected I/N (e.g. 0/4), got {value!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise click.BadParameter(f"expected 0 <= I < N, got {value!r}")
    return (i, n)


@score_teacher_group.command("run")
@click.option("--data", help="BEIR folder, or a dataset name resolved under $EMBED_KD_DATA.")
@click.option("--split", default="train", show_default=True,
              help="qrels split whose queries are scored (with --queries: the store's split label).")
@click.option("--queries", "queries_file", help="Score these queries instead (no judgments, no positives added): "
                                                "JSONL {_id,text}, TSV id<TAB>text, or one query a line; .gz; hf:.")
@click.option("--corpus", "corpus_file", help="Corpus file (JSONL/TSV/plain text, .gz, hf:) instead of --data's.")
@click.option("--candidates", "candidates", multiple=True, required=True,
              help="Candidate source, repeatable: bm25:K or dense:MODEL:K (optionally NAME=...).")
@click.option("--teacher", "teachers", multiple=True, required=True,
              help="Teacher, repeatable: ce:MODEL, bi:MODEL, bm25, or MODEL (optionally NAME=...).")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Score store folder.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store made with another config.")
@click.option("--ensemble", "ensemble_norm", type=click.Choice(["zscore", "minmax", "mean", "none"]), default="zscore",
              show_default=True, help="With several teachers: per-query normalisation before the weighted average.")
@click.option("--weights", help="Ensemble weights, e.g. ce=2,bm25=1 (default 1 each), or a weights JSON from "
                                "`embed-kd eval --ensemble … --save-weights`.")
@click.option("--activation", type=click.Choice(["none", "sigmoid"]), default="none", show_default=True,
              help="Cross-encoder output: raw logits (none) or sigmoid.")
@click.option("--max-length", type=click.IntRange(8), help="Cross-encoder max tokens (default: the model's).")
@click.option("--backend", type=click.Choice(list(BACKENDS)), default="torch", show_default=True,
              help="Cross-encoder runtime: torch (exact), torch-bf16 (weights in bfloat16), torch-fp16 (float16 "
                   "weights: the fast mode on a GPU), openvino (float32, "
                   "scores within ~1e-5 of torch, faster), openvino-bf16 (fast mode for CPUs with "
                   "AVX512-BF16/AMX), or ONNX Runtime with fp32 or int8 weights.")
@click.option("--bi-backend", type=click.Choice(list(BI_BACKENDS)), default="torch", show_default=True,
              help="Runtime of the bi-encoders (dense:MODEL:K candidates, bi:MODEL teachers): torch, or OpenVINO / "
                   "ONNX Runtime in float32 (embeddings within ~1e-5 of torch; converted once, cached by model "
                   "fingerprint; recorded in the store).")
@click.option("--chunk-size", default=32, show_default=True, type=click.IntRange(1),
              help="Queries per committed chunk (the unit of resume).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1), help="Pairs per model batch.")
@click.option("--shard", callback=_parse_shard, help="Score only shard I of N (I/N, 0-based); merge them after.")
@click.option("--limit", type=click.IntRange(1), help="Smoke run: only the first N judged queries.")
@click.option("--no-positives", is_flag=True, help="Do not add qrels positives that no source retrieved.")
@click.option("--allow-missing-ids", is_flag=True, help="Drop (and count) qrels rows naming unknown ids.")
@encoding_options
@device_option
@verbosity_options
@run_command
def run_command_(data, split, queries_file, corpus_file, candidates, teachers, output, overwrite, ensemble_norm, weights,
                 activation, max_length, backend, bi_backend, chunk_size, batch_size, shard, limit, no_positives,
                 allow_missing_ids, cache_dir, no_cache, threads, no_progress, verbose, quiet, device=None):
    """Score candidates of a split with one or more teachers into a score store (resumes by default)."""
    from embed_kd.teachers.request import ScoreRequest, ScoringInterrupted, run_score_teacher

    setup_logging(verbose, quiet)
    set_threads(threads)
    req = ScoreRequest(
        candidates=candidates, teachers=teachers, output=output, data=data, split=split, queries_file=queries_file,
        corpus_file=corpus_file, overwrite=overwrite, ensemble_norm=ensemble_norm, weights=weights,
        activation=activation, max_length=max_length, backend=backend, bi_backend=bi_backend, chunk_size=chunk_size,
        batch_size=batch_size, shard=shard, limit=limit, include_positives=not no_positives,
        allow_missing_ids=allow_missing_ids, cache_dir=cache_dir, use_cache=not no_cache,
        show_progress=not no_progress, device=device)
    try:
        res = run_score_teacher(req)
    except ScoringInterrupted as exc:
        if exc.is_main:
            click.echo(exc.message, err=True)
        raise SystemExit(130) from None
    if not res.is_main:  # under torchrun: rank 0 reports
        return
    s = res.summary
    rate = f"{s['pairs_per_s']:.1f} pairs/s" if s["pairs_per_s"] else "n/a"
    if res.distributed:
        click.echo(f"{res.world_size} processes, one shard each, merged into {s['out']}", err=True)
    note(f"{s['out']}: {s['rows']} rows, complete={s['complete']}; this run scored {s['queries_scored']} "
         f"queries / {s['pairs']} pairs ({rate}), skipped {s['chunks_skipped']} committed chunk(s); "
         f"{s['total_s']:.1f}s")


def _parse_columns(ctx, param, value):
    out = {}
    for item in filter(None, (x.strip() for x in (value or "").split(","))):
        role, eq, col = item.partition("=")
        if not eq or not role.strip() or not col.strip():
            raise click.BadParameter(f"expected role=column[,role=column...], got {item!r}")
        out[role.strip()] = col.strip()
    return out


@score_teacher_group.command("import")
@click.argument("files", nargs=-1, required=True)
@click.option("--format", "fmt", required=True,
              type=click.Choice(["margin-mse-tsv", "st-scores-pkl", "hf-columns", "listwise", "flag-jsonl"]),
              help="margin-mse-tsv: pos_score neg_score qid pos_id neg_id; st-scores-pkl: pickled {qid: {pid: score}}; "
                   "hf-columns: HF dataset / Parquet (query_id, passage_id, score, or query_id, positive_id, "
                   "negative_id, margin); listwise: query_id, document_ids[], scores[]; flag-jsonl: FlagEmbedding "
                   "{query, pos, neg, pos_scores, neg_scores} (schemas: docs/formats.md).")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Score store folder to write.")
@click.option("--data", help="BEIR folder or name whose ids the file uses (its --split gives the query order).")
@click.option("--split", default="train", show_default=True, help="Split of --data (or a label for --queries).")
@click.option("--corpus", "corpus_file", help="Corpus file instead of (or replacing) --data's: JSONL/TSV/text, .gz, hf:.")
@click.option("--queries", "queries_file", help="Queries file (no judgments): JSONL/TSV/text, .gz, hf:.")
@click.option("--columns", callback=_parse_columns, help="hf-columns / listwise: role=column pairs, e.g. "
                                                          "query_id=qid,passage_id=pid,score=ce_score.")
@click.option("--candidates", "candidates_file", type=click.Path(dir_okay=False),
              help="st-scores-pkl: msmarco-hard-negatives.jsonl(.gz) candidate lists (keeps only their pairs).")
@click.option("--teacher-name", default="imported", show_default=True, help="Name of the score column (score__NAME).")
@click.option("--allow-missing-ids", is_flag=True, help="Drop (and count) rows naming ids the dataset lacks.")
@click.option("--overwrite", is_flag=True, help="Replace --output if it is a score store.")
@verbosity_options
@run_command
def import_command(files, fmt, output, data, split, corpus_file, queries_file, columns, candidates_file, teacher_name,
                   allow_missing_ids, overwrite, verbose, quiet):
    """Import teacher scores someone already computed into a score store (train reads it like any other).

    \b
    embed-kd score-teacher import --format margin-mse-tsv --data msmarco -o scores/hofstaetter triples.tsv.gz
    embed-kd score-teacher import --format flag-jsonl -o scores/flag train.jsonl
    """
    from embed_kd.teachers.importers import ImportOptions, import_scores

    setup_logging(verbose, quiet)
    s = import_scores(files, output, ImportOptions(
        fmt=fmt, data=data, split=split, corpus=corpus_file, queries=queries_file, columns=columns,
        candidates=candidates_file, teacher_name=teacher_name, allow_missing_ids=allow_missing_ids,
        overwrite=overwrite))
    imp = s["imported"]
    miss = imp["missing_ids"]
    click.echo(f"{s['out']}: {s['rows']} {s['score_kind']} rows for {s['queries_with_rows']}/{s['n_queries']} queries "
               f"from {imp['rows_read']} input rows ({fmt}); labels: {imp['labels']}; duplicates merged "
               f"{imp['duplicates']}; rows dropped for unknown ids {miss['rows_dropped']}; {s['total_s']:.1f}s ("
               + ", ".join(f"{k.removesuffix('_s')} {v:.1f}s" for k, v in s["timings"].items()) + ")", err=True)


@score_teacher_group.command("merge")
@click.argument("shards", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Merged store folder.")
@click.option("--overwrite", is_flag=True, help="Replace --output if it exists.")
@verbosity_options
@run_command
def merge_command(shards, output, overwrite, verbose, quiet):
    """Join the shard folders of a --shard I/N run into one complete store (checks completeness)."""
    from embed_kd.teachers.store import merge_stores

    setup_logging(verbose, quiet)
    store = merge_stores(shards, output, overwrite=overwrite)
    click.echo(f"{output}: merged {len(shards)} shard(s), {store.manifest['progress']['rows']} rows, "
               f"{store.manifest['dataset']['n_queries']} queries", err=True)


@score_teacher_group.command("export")
@click.argument("store", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["margin-mse-tsv", "hf-margin-mse", "hf-listwise", "hf-scores"]),
              required=True, help="margin-mse-tsv: pos_score neg_score qid pos_id neg_id; hf-*: a datasets folder "
                                  "(save_to_disk) with texts, ready for sentence-transformers losses.")
@click.option("--output", "-o", required=True, type=click.Path(), help="Output file (tsv) or folder (hf-*).")
@click.option("--overwrite", is_flag=True, help="Replace --output if it exists.")
@click.option("--column", default="score", show_default=True, help="Score column: score or score__<teacher>.")
@click.option("--negatives", type=click.IntRange(1), help="Negatives per positive / per list (highest-scored first; "
                                                          "default all for TSV, 8 for hf-listwise).")
@click.option("--data", help="BEIR folder or name, for texts (hf-margin-mse / hf-listwise); default: the store's.")
@verbosity_options
@run_command
def export_command(store, fmt, output, overwrite, column, negatives, data, verbose, quiet):
    """Export a score store as Margin-MSE triples (TSV) or a Hugging Face dataset."""
    from embed_kd.teachers import export as ex
    from embed_kd.teachers.store import open_scores

    setup_logging(verbose, quiet)
    st = open_scores(store)
    if fmt == "margin-mse-tsv":
        n = ex.export_margin_mse_tsv(st, output, column=column, negatives_per_positive=negatives, overwrite=overwrite)
    else:
        kind = fmt.removeprefix("hf-")
        n = ex.export_hf(st, output, kind=kind, column=column, negatives=negatives, data=data, overwrite=overwrite)
    click.echo(f"{output}: {n} rows ({fmt})", err=True)
