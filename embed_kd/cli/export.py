"""``embed-kd export asym``: package a student and its teacher as one sentence-transformers Router model."""

from __future__ import annotations

import click

from embed_kd.cli.common import run_command, setup_logging, verbosity_options


@click.group("export")
def export_group() -> None:
    """Write models in forms other tools load directly.

    \b
    embed-kd export asym --query-model runs/student --doc-model minilm-l6 -o models/student-asym
    """


@export_group.command("asym")
@click.option("--query-model", required=True, help="The model that encodes queries (the student).")
@click.option("--doc-model", required=True, help="The model that encodes documents (the teacher).")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Folder to create.")
@click.option("--overwrite", is_flag=True, help="Replace --output if it exists.")
@verbosity_options
@run_command
def asym_command(query_model, doc_model, output, overwrite, verbose, quiet):
    """One Router model: encode_query runs --query-model, encode_document --doc-model.

    Loads with plain SentenceTransformer(OUTPUT) — no embed-kd import, no trust_remote_code — and
    works as one --model in eval, index build, serve and eval --mteb.
    """
    from embed_kd.students.asym import build_asym

    setup_logging(verbose, quiet)
    m = build_asym(query_model, doc_model, output, overwrite=overwrite)
    q, d = m["query"], m["document"]
    click.echo(f"{output}: queries by '{q['spec']}' ({q['params'] / 1e6:.1f}M params, {q['layers']} layers), "
               f"documents by '{d['spec']}' ({d['params'] / 1e6:.1f}M params, {d['layers']} layers), {q['dim']} dims")
