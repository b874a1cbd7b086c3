"""``embed-kd report``: a markdown table (and optionally a quality-vs-speed PNG) from eval result files."""

from __future__ import annotations

import click

from embed_kd.cli.common import run_command, setup_logging, verbosity_options


@click.command("report")
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Also write a PNG of nDCG@10 against query-encoding speed (queries/s) here.")
@click.option("--label", "labels", multiple=True, metavar="RESULT=TEXT",
              help="Point label for one result file (default: the query model's name). Repeatable.")
@click.option("--title", help="Plot title.")
@click.option("--teacher", "teacher_path", type=click.Path(exists=True, dir_okay=False),
              help="The result the ×teacher and ×speed columns compare with (default: the first symmetric one).")
@click.option("--overwrite", is_flag=True, help="Replace --plot if it exists.")
@verbosity_options
@run_command
def report_command(results, plot_path, labels, title, teacher_path, overwrite, verbose, quiet) -> None:
    """Print a markdown table of eval RESULTS (JSON files written by `embed-kd eval -o` / `eval --mteb -o`).

    Given a teacher (--teacher, else the first symmetric result) the table adds each row's nDCG@10
    ratio to it and the queries/s its eval measured; a trained student (a query model folder with
    embed_kd_train.json) gets a line saying what it was distilled from.

    STS results (`eval --sts … -o`, or an eval result made with --sts) get a second table: cosine
    Spearman/Pearson with the ratio to the teacher (the result's own --sts-teacher, else the first
    STS row).

    \b
    embed-kd report runs/*.json
    embed-kd report runs/teacher.json runs/cut.json runs/student.json --plot runs/speed.png
    """
    from pathlib import Path

    from embed_kd.errors import EmbedKDError
    from embed_kd.evaluation.mteb_eval import mteb_table
    from embed_kd.evaluation.report import (default_teacher, distillation_lines, markdown_table, read_results,
                                            read_teacher_result)
    from embed_kd.io import refuse_existing

    setup_logging(verbose, quiet)
    if plot_path:
        from embed_kd.evaluation.outputs import PLOT

        refuse_existing(plot_path, overwrite, artifact=PLOT)
    by_file = {}
    for item in labels:
        path, sep, text = item.partition("=")
        if not sep or not text:
            raise EmbedKDError(f"--label {item!r}: use RESULT=TEXT")
        by_file[Path(path).resolve()] = text
    loaded = read_results(results)
    evals = [r for r in loaded if r["schema"] == "embed-kd/eval@1"]
    if evals:
        teacher = read_teacher_result(teacher_path) if teacher_path else default_teacher(evals)
        click.echo(markdown_table(evals, teacher=teacher))
        for line in distillation_lines(evals):
            click.echo(line)
    for r in loaded:
        if r["schema"] == "embed-kd/mteb@1":
            click.echo(f"\nMTEB ({r['mode']}, queries by {r['query_model']['spec']}, docs by {r['doc_model']['spec']}):")
            click.echo(mteb_table(r))
    sts_rows = [r if r["schema"] == "embed-kd/sts@1" else r["sts"] for r in loaded
                if r["schema"] == "embed-kd/sts@1" or isinstance(r.get("sts"), dict)]
    if sts_rows:
        from embed_kd.evaluation.sts import sts_table

        click.echo("\nSTS:\n" + sts_table(sts_rows))
    if plot_path:
        from embed_kd.evaluation.plot import plot_quality_speed, points, speed_table

        # an STS-only result joins the retrieval point of the same query model (its STS Spearman in the table)
        sts_by_model = {key: r["metrics"]["spearman_cosine"] for r in loaded if r["schema"] == "embed-kd/sts@1"
                        for key in (r["model"]["spec"], r["model"].get("fingerprint")) if key}
        keep = [i for i, r in enumerate(loaded) if r["schema"] != "embed-kd/sts@1"]
        results, loaded = [results[i] for i in keep], [loaded[i] for i in keep]
        pts = points(loaded, [by_file.get(Path(p).resolve()) for p in results], sts=sts_by_model)
        click.echo("\n" + speed_table(pts))
        plot_quality_speed(pts, plot_path, title=title, overwrite=overwrite)
        click.echo(f"\nplot written to {plot_path}", err=True)
