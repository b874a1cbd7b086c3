"""``embed-kd train``: distil a dense student from a score teacher and an embedding teacher."""

from __future__ import annotations

import click

from embed_kd.cli.common import device_option, run_command, set_threads, setup_logging, verbosity_options


def _layers(text: str | None):
    if text is None:
        return None
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected comma-separated layer indices, e.g. 0,2,4") from None


@click.command("train")
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--data", help="BEIR folder or dataset name (its train split; overrides the config).")
@click.option("--split", help="qrels split whose queries train the student (default train; never test).")
@click.option("--queries", "queries_file", help="Queries file without judgments (JSONL/TSV/text, .gz, hf:); dev: loyalty.")
@click.option("--corpus", "corpus_file", help="Corpus file (JSONL/TSV/plain text, .gz, hf:) instead of --data's.")
@click.option("--scores", type=click.Path(file_okay=False), help="Score store from `embed-kd score-teacher` on the same split.")
@click.option("--teacher", help="Embedding teacher (alignment targets + frozen documents), e.g. minilm-l6.")
@click.option("--student", help="Student model: path, hub id or preset.")
@click.option("--student-type", type=click.Choice(["dense", "sparse", "static"]),
              help="dense (default); sparse: a SPLADE SparseEncoder trained with SpladeLoss + FLOPS (docs/sparse.md); "
                   "static: a StaticEmbedding query encoder initialised from the teacher (docs/static.md).")
@click.option("--student-from-teacher", is_flag=True, default=None, help="Cut the student out of the teacher (with --keep-layers).")
@click.option("--keep-layers", help="Teacher layers the cut student keeps, e.g. 0,2,4.")
@click.option("--output", "-o", type=click.Path(file_okay=False), help="Output folder (a sentence-transformers model).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value, e.g. train.lr=1e-4 (repeatable).")
@click.option("--overwrite", is_flag=True, help="Replace the output folder if it exists.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last checkpoint (OUTPUT.work/); "
                                                    "a config's finished phases are reused.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Embedding cache root (default $EMBED_KD_CACHE).")
@click.option("--limit-queries", type=click.IntRange(1), help="Smoke run: only the first N train queries.")
@click.option("--limit-docs", type=click.IntRange(1), help="Smoke run: judged docs + others up to N docs.")
@click.option("--threads", type=click.IntRange(1), help="torch CPU threads.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("--print-config", is_flag=True, help="Print the resolved config as YAML and exit.")
@device_option
@verbosity_options
@run_command
def train_command(config, data, split, queries_file, corpus_file, scores, teacher, student, student_type, student_from_teacher, keep_layers, output, overrides,
                  overwrite, resume, cache_dir, limit_queries, limit_docs, threads, no_progress, print_config,
                  verbose, quiet, device=None):
    """Train a small query encoder: Margin-MSE / KL on teacher scores + alignment to the teacher's embeddings.

    \b
    embed-kd train eval/configs/scifact-l3.yaml
    embed-kd train --data scifact --scores runs/scifact-train-ens --teacher minilm-l6 \\
        --student-from-teacher --keep-layers 0,2,4 -o runs/student --set train.max_steps=200
    torchrun --nproc-per-node 2 -m embed_kd train CONFIG   (DDP; global batch = 2 × train.batch_size)

    A config with `phases:` trains them in order, each from the previous output (embed_kd.training.phases).
    """
    setup_logging(verbose, quiet)
    set_threads(threads)
    from embed_kd.training.config import config_from_cli

    cfg = config_from_cli(config, student_type=student_type, overrides=overrides, data=data, split=split,
                          queries=queries_file, corpus=corpus_file, device=device, scores=scores, teacher=teacher,
                          output=output, **{"student.model": student, "student.from_teacher": student_from_teacher,
                                            "student.keep_layers": _layers(keep_layers)})
    if print_config:
        import yaml

        click.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return
    from embed_kd.training.phases import train_phases  # one run, or the config's phases in order

    m = train_phases(cfg, overwrite=overwrite, resume=resume, show_progress=not no_progress, cache_dir=cache_dir,
                      limit_queries=limit_queries, limit_docs=limit_docs, config_file=config,
                      overrides=list(overrides))
    from embed_kd.distributed import get_world

    if not get_world().is_main:  # under torchrun: rank 0 reports
        return
    tr = m["training"]
    ex = m["examples"]
    for ph in m.get("phases") or []:
        dev = (ph["dev"] or {}).get("dev_ndcg_at_10")
        click.echo(f"phase {ph['phase']} ({ph['name']}): {ph['global_step']} steps, {ph['train_time_s'] / 60:.1f} min"
                   + (f", dev nDCG@10 {dev:.4f}" if dev is not None else "") + f" → {ph['output']}")
    if m.get("phases"):
        from embed_kd.training.config import phase_configs

        click.echo(f"phase {len(m['phases']) + 1} ({phase_configs(cfg)[-1][0]}):")
    click.echo(f"student: {m['student']['init']} → {cfg.output}")
    click.echo(f"examples: score {ex['score']['examples'] if ex['score'] else 0}, "
               f"align {ex['align']['texts'] if ex['align'] else 0}; steps {tr['global_step']}; "
               f"training {tr['train_time_s'] / 60:.1f} min"
               + (" (stopped by the time budget)" if tr["stopped_by_time_budget"] else ""))
    if m["averaging"]["applied"]:
        click.echo(f"weights averaged over {', '.join(m['averaging']['checkpoints'])}")
    if m["dev"]:
        d = m["dev"]["metrics_final"]
        mode = "re-ranking a candidate pool" if m["student"].get("type") == "sparse" else "asymmetric"
        if "dev_ndcg_at_10" in d:
            click.echo(f"dev ({len(m['dataset']['dev_queries'])} held-out train queries, {mode}): "
                       f"nDCG@10 {d['dev_ndcg_at_10']:.4f}")
        if "dev_top10_overlap" in d:  # unjudged queries: loyalty to the teacher instead of nDCG
            click.echo(f"dev ({len(m['dataset']['dev_queries'])} held-out unjudged train queries, loyalty to the "
                       f"teacher): top-10 overlap {d['dev_top10_overlap']:.4f}, Spearman "
                       f"{d.get('dev_spearman', float('nan')):.4f}")
        if "dev_query_nnz" in d:
            click.echo(f"dev sparsity: query non-zeros {d['dev_query_nnz']:.1f}, document non-zeros "
                       f"{d['dev_doc_nnz']:.1f} (pool of {m['dev'].get('pool_docs')} docs)")
