"""``embed-kd index build|add`` as library calls: :func:`run_index_build` / :func:`run_index_add` turn an
:class:`IndexBuildRequest` / :class:`IndexAddRequest` into an :class:`IndexResult` (the index folder,
written by :mod:`embed_kd.index.store`, which owns the ``embed-kd/index@1`` artifact).

The policy the commands used to hold lives here: the process group (``torchrun``: data-parallel
encoding, rank 0 writes), the device, the output checks before any encoding (the ownership rule and
a writable parent), the documents (:func:`load_documents`), the doc model (an asym model: its document
route) and its runtime (``--backend``, :func:`~embed_kd.teachers.bi_backend.with_backend`). It sits in
``serve/`` — beside the engine that searches the folder — because it needs ``students/`` and
``teachers/``, which ``index/`` (below them) must not import.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from embed_kd import distributed as dist
from embed_kd.device import select_device
from embed_kd.index.cache import EmbeddingCache
from embed_kd.index.compression import Compression
from embed_kd.index.store import ARTIFACT, add_documents, build_index, read_manifest
from embed_kd.io import check_writable, claim_output
from embed_kd.models import load_sentence_transformer
from embed_kd.students.asym import document_route
from embed_kd.teachers.bi_backend import with_backend


def load_documents(spec: str, limit: int | None = None) -> tuple[dict, str, str]:
    """``(corpus, name, source)`` from a corpus file (JSONL / TSV / plain text, ``.gz``; an HF dataset or
    Parquet source: :mod:`embed_kd.data.inputs`), a BEIR folder or a dataset name; the first ``limit``
    documents when given."""
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


@dataclass(kw_only=True)
class _Encoding:
    """What both commands share: how documents are encoded."""

    batch_size: int = 32
    cache_dir: str | None = None
    use_cache: bool = True
    threads: int | None = None
    show_progress: bool = True
    device: str | None = None
    backend: str = "torch"

    def cache(self) -> EmbeddingCache:
        return EmbeddingCache(self.cache_dir, enabled=self.use_cache)

    def doc_model(self, spec: str):
        """The model that encodes documents: an asym model's document route, run by ``backend``."""
        model = document_route(load_sentence_transformer(spec))
        if self.backend != "torch":
            root = Path(self.cache_dir) if self.cache_dir else None
            model = with_backend(model, self.backend, threads=self.threads, cache_root=root)
        return model


@dataclass(kw_only=True)
class IndexBuildRequest(_Encoding):
    """``index build``: encode ``data`` with ``doc_model_spec`` into a new index folder ``output``."""

    data: str
    doc_model_spec: str
    output: str
    kind: str = "flat"
    limit_docs: int | None = None
    overwrite: bool = False
    compression: Compression | None = None


@dataclass(kw_only=True)
class IndexAddRequest(_Encoding):
    """``index add``: encode ``docs`` with the index's doc model (``doc_model_spec``, default the one its
    manifest records) and append them to ``index_dir``."""

    index_dir: str
    docs: str
    doc_model_spec: str | None = None


@dataclass
class IndexResult:
    """The index's new ``manifest``, the documents this call ``added`` (all of them for a build), the
    ``seconds`` it took (after the output checks) and whether this process reports (rank 0)."""

    manifest: dict
    added: int
    seconds: float
    is_main: bool = True


def run_index_build(req: IndexBuildRequest) -> IndexResult:
    """Check the output, load the documents and the doc model, encode and write the folder (atomic)."""
    world = dist.init()  # under torchrun: every process encodes a share, rank 0 writes
    select_device(req.device)  # --device / $EMBED_KD_DEVICE / auto; logged once
    claim_output(req.output, ARTIFACT, overwrite=req.overwrite)
    check_writable(req.output)  # before the encode
    t0 = time.perf_counter()
    corpus, name, source = load_documents(req.data, req.limit_docs)
    manifest = build_index(req.output, corpus, req.doc_model(req.doc_model_spec), kind=req.kind, cache=req.cache(),
                           batch_size=req.batch_size, name=name, source=source, overwrite=req.overwrite,
                           show_progress=req.show_progress, compression=req.compression)
    return IndexResult(manifest, manifest["n"], time.perf_counter() - t0, world.is_main)


def run_index_add(req: IndexAddRequest) -> IndexResult:
    """Load the new documents and the index's doc model, encode and append them (atomic)."""
    world = dist.init()  # under torchrun: data-parallel encoding, rank 0 appends
    select_device(req.device)  # --device / $EMBED_KD_DEVICE / auto; logged once
    t0 = time.perf_counter()
    before = read_manifest(req.index_dir)
    corpus, _, source = load_documents(req.docs)
    model = req.doc_model(req.doc_model_spec or before["doc_model"]["spec"])
    manifest = add_documents(req.index_dir, corpus, model, cache=req.cache(), batch_size=req.batch_size,
                             source=source, show_progress=req.show_progress)
    return IndexResult(manifest, manifest["n"] - before["n"], time.perf_counter() - t0, world.is_main)
