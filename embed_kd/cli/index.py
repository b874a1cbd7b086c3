"""``embed-kd index build|add|info``: a persisted FAISS index of documents encoded by the doc model (teacher)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from embed_kd.cli.backend import backend_option
from embed_kd.cli.compress import compression_from_flags, compression_options
from embed_kd.cli.common import device_option, run_command, set_threads, setup_logging, verbosity_options


def _load_docs(spec: str, limit: int | None = None) -> tuple[dict, str, str]:
    """``(corpus, name, source)`` from a corpus file (JSONL / TSV / plain text, ``.gz``; an HF dataset or
    Parquet source: :mod:`embed_kd.data.inputs`), a BEIR folder or a dataset name."""
    from embed_kd.data import load_corpus, resolve_dataset
    from embed_kd.data.beir import corpus_path
    from embed_kd.data.inputs import input_kind, read_corpus

    p = Path(spec).expanduser()
    if p.is_file() or input_kind(spec) == "table":
        name = p.parent.name if p.is_file() else p.name
        corpus, source = read_corpus(spec if input_kind(spec) == "table" else p), str(spec)
    else:
        folder = resolve_dataset(spec)
        corpus, name, source = load_corpus(corpus_path(folder)), Path(folder).name, str(folder)
    if limit:
        corpus = dict(list(corpus.items())[:limit])
    return corpus, name, source


def _cache(cache_dir, no_cache):
    from embed_kd.index.cache import EmbeddingCache

    return EmbeddingCache(cache_dir, enabled=not no_cache)


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


_common = [
    click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1), help="Encoding batch size."),
    click.option("--cache-dir", type=click.Path(file_okay=False),
                 help="Embedding cache root (default $EMBED_KD_CACHE or ~/.cache/embed_kd)."),
    click.option("--no-cache", is_flag=True, help="Do not read or write the document-embedding cache."),
    click.option("--threads", type=click.IntRange(1), help="torch CPU threads (default: torch's choice)."),
    click.option("--no-progress", is_flag=True, help="No progress bars."),
]


def _with_common(fn):
    for opt in reversed(_common):
        fn = opt(fn)
    return fn


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
    from embed_kd import distributed as dist
    from embed_kd.index.store import ARTIFACT, build_index
    from embed_kd.io import check_writable, claim_output
    from embed_kd.models import load_sentence_transformer
    from embed_kd.students.asym import document_route

    setup_logging(verbose, quiet)
    set_threads(threads)
    world = dist.init()
    from embed_kd.device import select_device
    select_device(device)  # --device / $EMBED_KD_DEVICE / auto; logged once
    claim_output(output, ARTIFACT, overwrite=overwrite)
    check_writable(output)  # before the encode
    t0 = time.perf_counter()
    corpus, name, source = _load_docs(data, limit_docs)
    model = document_route(load_sentence_transformer(doc_model))  # an asym model: its document route
    if backend != "torch":
        from embed_kd.teachers.bi_backend import with_backend

        model = with_backend(model, backend, threads=threads, cache_root=Path(cache_dir) if cache_dir else None)
    manifest = build_index(output, corpus, model, kind=kind, cache=_cache(cache_dir, no_cache), batch_size=batch_size,
                           name=name, source=source, overwrite=overwrite, show_progress=not no_progress,
                           compression=compression_from_flags(truncate_dim, precision, rescore))
    if not world.is_main:
        return
    click.echo(_summary(manifest, output))
    click.echo(f"built in {time.perf_counter() - t0:.1f}s", err=True)


@index_group.command("add")
@click.argument("index_dir", type=click.Path(file_okay=False))
@click.option("--docs", required=True, help="New documents: a corpus.jsonl file (BEIR format) or a BEIR folder.")
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
    from embed_kd import distributed as dist
    from embed_kd.index.store import add_documents, read_manifest
    from embed_kd.models import load_sentence_transformer
    from embed_kd.students.asym import document_route

    setup_logging(verbose, quiet)
    set_threads(threads)
    world = dist.init()  # under torchrun: data-parallel encoding, rank 0 appends
    from embed_kd.device import select_device
    select_device(device)  # --device / $EMBED_KD_DEVICE / auto; logged once
    t0 = time.perf_counter()
    manifest = read_manifest(index_dir)
    corpus, _, source = _load_docs(docs)
    model = document_route(load_sentence_transformer(doc_model or manifest["doc_model"]["spec"]))
    if backend != "torch":
        from embed_kd.teachers.bi_backend import with_backend

        model = with_backend(model, backend, threads=threads, cache_root=Path(cache_dir) if cache_dir else None)
    before = manifest["n"]
    manifest = add_documents(index_dir, corpus, model, cache=_cache(cache_dir, no_cache), batch_size=batch_size,
                             source=source, show_progress=not no_progress)
    if not world.is_main:
        return
    click.echo(_summary(manifest, index_dir))
    click.echo(f"added {manifest['n'] - before} docs in {time.perf_counter() - t0:.1f}s", err=True)


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
