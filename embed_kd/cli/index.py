"""``embed-kd index build|add|info``: a persisted FAISS index of documents encoded by the doc model (teacher)."""

from __future__ import annotations

import json

import click

from embed_kd.cli.backend import backend_option
from embed_kd.cli.compress import compression_from_flags, compression_options
from embed_kd.cli.common import device_option, run_command, set_threads, setup_logging, verbosity_options
from embed_kd.cli.options import encoding_options


def _summary(manifest: dict, path: str) -> str:
    dm = manifest["doc_model"]
    return (f"{path}: {manifest['kind']} index of {manifest['n']} docs × {manifest['dim']} dims "
            f"(normalize={manifest['normalize']}); doc model '{dm['spec']}' ({dm['fingerprint']}); "
            f"corpus '{manifest['corpus']['name']}' ({manifest['corpus']['fingerprint']})")


@click.group("index")
def index_group() -> None:
    """Build, extend and inspect a persisted FAISS index (documents encoded by the teacher).

    \b
    embed-kd index build --data scifact --doc-model minilm-l6 -o indexes/scifact-minilm
    embed-kd index add indexes/scifact-minilm --docs new_docs.jsonl
    embed-kd index info indexes/scifact-minilm
    """


def _with_common(fn):
    """``--batch-size`` and the encoding-run flags (:func:`embed_kd.cli.options.encoding_options`)."""
    fn = encoding_options(fn)
    return click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1),
                        help="Encoding batch size.")(fn)


@index_group.command("build")
@click.option("--data", required=True, help="BEIR folder, dataset name, or a corpus file (JSONL/TSV/plain text, .gz, hf:).")
@click.option("--doc-model", "--model", "doc_model", required=True,
              help="The model that encodes the documents (the teacher; an asym model: its document route).")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Index folder to create.")
@click.option("--index", "kind", type=click.Choice(["flat", "hnsw", "ivfpq", "auto"]), default="flat",
              show_default=True, help="FAISS index: exact inner product, approximate for large corpora, or auto "
                                      "(by corpus size; docs/scaling.md).")
@click.option("--limit-docs", type=click.IntRange(1), help="Smoke run: only the first N documents.")
@click.option("--overwrite", is_flag=True, help="Replace --output if it exists.")
@_with_common
@compression_options
@backend_option
@device_option
@verbosity_options
@run_command
def build_command(data, doc_model, output, kind, limit_docs, overwrite, batch_size, cache_dir, no_cache, threads,
                  no_progress, verbose, quiet, device=None, truncate_dim=None, precision=None, rescore=None,
                  backend="torch"):
    """Encode a corpus with --doc-model and write an index folder (atomic: all or nothing).

    Under torchrun / accelerate launch every process encodes a share of the corpus; rank 0 writes.
    """
    from embed_kd.serve.indexing import IndexBuildRequest, run_index_build

    setup_logging(verbose, quiet)
    set_threads(threads)
    res = run_index_build(IndexBuildRequest(
        data=data, doc_model_spec=doc_model, output=output, kind=kind, limit_docs=limit_docs, overwrite=overwrite,
        batch_size=batch_size, cache_dir=cache_dir, use_cache=not no_cache, threads=threads,
        show_progress=not no_progress, device=device, backend=backend,
        compression=compression_from_flags(truncate_dim, precision, rescore)))
    if not res.is_main:
        return
    click.echo(_summary(res.manifest, output))
    click.echo(f"built in {res.seconds:.1f}s", err=True)


@index_group.command("add")
@click.argument("index_dir", type=click.Path(file_okay=False))
@click.option("--docs", required=True, help="New documents: a corpus file (JSONL/TSV/plain text, .gz, hf:/Parquet), "
                                             "a BEIR folder or a dataset name.")
@click.option("--doc-model", help="The index's doc model (default: the spec recorded in its manifest); "
                                  "its fingerprint must match.")
@_with_common
@backend_option
@device_option
@verbosity_options
@run_command
def add_command(index_dir, docs, doc_model, batch_size, cache_dir, no_cache, threads, no_progress, verbose, quiet, device=None,
                backend="torch"):
    """Encode new documents and append them to INDEX_DIR (atomic; ids already indexed are refused)."""
    from embed_kd.serve.indexing import IndexAddRequest, run_index_add

    setup_logging(verbose, quiet)
    set_threads(threads)
    res = run_index_add(IndexAddRequest(
        index_dir=index_dir, docs=docs, doc_model_spec=doc_model, batch_size=batch_size, cache_dir=cache_dir,
        use_cache=not no_cache, threads=threads, show_progress=not no_progress, device=device, backend=backend))
    if not res.is_main:
        return
    click.echo(_summary(res.manifest, index_dir))
    click.echo(f"added {res.added} docs in {res.seconds:.1f}s", err=True)


@index_group.command("info")
@click.argument("index_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("--no-verify", is_flag=True, help="Skip the checksum and consistency checks.")
@run_command
def info_command(index_dir, as_json, no_verify):
    """Verify INDEX_DIR and describe it."""
    from embed_kd.index.store import open_index, read_manifest

    manifest = read_manifest(index_dir) if no_verify else open_index(index_dir).manifest
    if as_json:
        click.echo(json.dumps(manifest, indent=2, ensure_ascii=False))
    else:
        click.echo(_summary(manifest, index_dir))
        for b in manifest.get("batches", []):
            runtime = f", encoded with {b['backend']}" if b.get("backend") else ""
            click.echo(f"  rows {b['first_row']}..{b['first_row'] + b['n'] - 1}: {b['n']} docs from "
                       f"{b['source'] or '?'} ({b['corpus_fingerprint']}), {b['added']}{runtime}")
