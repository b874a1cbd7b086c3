"""``embed-kd train-teacher``: fine-tune an in-domain cross-encoder teacher (see embed_kd/training/train_teacher.py)."""

from __future__ import annotations

import click

from embed_kd.cli.common import device_option, run_command, set_threads, setup_logging, verbosity_options
from embed_kd.cli.options import encoding_options


@click.command("train-teacher")
@click.option("--data", required=True, help="BEIR folder, or a dataset name resolved under $EMBED_KD_DATA.")
@click.option("--split", default="train", show_default=True, help="Labelled split to train on (never a test split).")
@click.option("--base", default="minilm-l6", show_default=True, help="Starting checkpoint: preset, folder or hub id.")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Folder to save the cross-encoder to.")
@click.option("--overwrite", is_flag=True, help="Replace --output if it exists.")
@click.option("--loss", type=click.Choice(["bce", "listnet", "lambdaloss", "mse", "margin-mse"]), default="listnet",
              show_default=True, help="sentence-transformers cross-encoder loss.")
@click.option("--targets", type=click.Choice(["labels", "ensemble", "ensemble+labels"]), default="ensemble+labels",
              show_default=True, help="qrels labels, the BM25+dense ensemble's z-scores, or both (positives lifted).")
@click.option("--label-boost", default=3.0, show_default=True, type=float, help="Added to a positive's target with ensemble+labels.")
@click.option("--dense-model", default="minilm-l6", show_default=True, help="Dense retriever for hard negatives and targets.")
@click.option("--negatives", default=7, show_default=True, type=click.IntRange(1), help="Hard negatives per query (BM25 + dense, mixed).")
@click.option("--neg-depth", default=30, show_default=True, type=click.IntRange(1), help="Sample negatives from this top-k of each retriever.")
@click.option("--max-length", default=256, show_default=True, type=click.IntRange(8), help="Tokens per (query, document) pair.")
@click.option("--epochs", default=1.0, show_default=True, type=float)
@click.option("--max-steps", default=-1, show_default=True, type=int, help="Stop after N optimizer steps (overrides --epochs).")
@click.option("--max-minutes", type=float, help="Time budget: stop training after this many minutes (best dev checkpoint kept).")
@click.option("--lr", "learning_rate", default=5e-5, show_default=True, type=float)
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(1), help="Examples per step (a list for listwise losses).")
@click.option("--dev-queries", default=100, show_default=True, type=click.IntRange(1), help="Dev slice carved from the split (same as eval --ensemble's).")
@click.option("--eval-queries", default=40, show_default=True, type=click.IntRange(1), help="Dev queries re-ranked at each evaluation.")
@click.option("--eval-depth", default=20, show_default=True, type=click.IntRange(1), help="First-stage docs re-ranked per dev query.")
@click.option("--eval-steps", type=click.IntRange(1), help="Evaluate/checkpoint every N steps (default: 4 times per run).")
@click.option("--early-stopping", "early_stopping_patience", type=click.IntRange(1), help="Stop after N evaluations without dev gain.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="Training precision: auto = bf16 on GPUs that support it, fp16 on other GPUs, fp32 on CPU.")
@click.option("--limit-queries", type=click.IntRange(1), help="Smoke run: only the first N training queries.")
@encoding_options
@device_option
@verbosity_options
@run_command
def train_teacher_command(data, split, base, output, overwrite, loss, targets, label_boost, dense_model, negatives,
                          neg_depth, max_length, epochs, max_steps, max_minutes, learning_rate, batch_size, dev_queries,
                          eval_queries, eval_depth, eval_steps, early_stopping_patience, seed, precision, limit_queries, cache_dir,
                          no_cache, threads, no_progress, verbose, quiet, device=None):
    """Fine-tune a CrossEncoder teacher (hard negatives from BM25 + dense, dev slice from the split).

    \b
    embed-kd train-teacher --data scifact --split train --base minilm-l6 --output runs/ce
    embed-kd eval --data scifact --model bm25 --rerank runs/ce --rerank-depth 20
    """
    from embed_kd.training.teacher_request import TrainTeacherRequest, run_train_teacher
    from embed_kd.training.train_teacher import TrainTeacherConfig

    setup_logging(verbose, quiet)
    set_threads(threads)
    config = TrainTeacherConfig(
        base=base, dense_model=dense_model, loss=loss, targets=targets, label_boost=label_boost, negatives=negatives,
        neg_depth=neg_depth, max_length=max_length, epochs=epochs, max_steps=max_steps, max_minutes=max_minutes,
        learning_rate=learning_rate, batch_size=batch_size, dev_queries=dev_queries, seed=seed,
        eval_queries=eval_queries, eval_depth=eval_depth, eval_steps=eval_steps,
        early_stopping_patience=early_stopping_patience, precision=precision, limit_queries=limit_queries)
    manifest = run_train_teacher(TrainTeacherRequest(
        data=data, output=output, config=config, split=split, overwrite=overwrite, cache_dir=cache_dir,
        use_cache=not no_cache, show_progress=not no_progress, device=device))
    dev = manifest["dev"]
    key = "dev_ndcg@10"
    click.echo(f"saved {output} ({manifest['examples']} examples, {manifest['train']['steps']} steps, "
               f"{manifest['train']['seconds']:.0f}s training)")
    click.echo(f"dev re-rank nDCG@10: {dev['before'].get(key, float('nan')):.4f} before → "
               f"{dev['after'].get(key, float('nan')):.4f} after (first stage "
               f"{dev['after'].get('dev_base_ndcg@10', float('nan')):.4f})")
