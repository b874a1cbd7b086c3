"""``embed-kd report``: one markdown table from several ``embed-kd eval`` result files."""

from __future__ import annotations

import click

from embed_kd.cli.common import run_command


@click.command("report")
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@run_command
def report_command(results) -> None:
    """Print a markdown table of eval RESULTS (JSON files written by `embed-kd eval -o`)."""
    from embed_kd.errors import ArtifactError
    from embed_kd.evaluation.report import markdown_table
    from embed_kd.io import read_json

    loaded = []
    for path in results:
        r = read_json(path, "eval result")
        if not isinstance(r, dict) or r.get("schema") != "embed-kd/eval@1":
            raise ArtifactError(f"{path}: not an embed-kd eval result (schema embed-kd/eval@1)")
        loaded.append(r)
    click.echo(markdown_table(loaded))
