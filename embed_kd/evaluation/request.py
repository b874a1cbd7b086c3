"""``embed-kd eval`` as one library call: :func:`run_eval` turns an :class:`EvalRequest` into an
:class:`EvalResult` (the document ``-o`` holds, written).

The mode follows from the request (:attr:`EvalRequest.mode`):

==============  ==========================================================  =====================
mode            when                                                        result schema
==============  ==========================================================  =====================
``mteb``        ``mteb_tasks``                                              ``embed-kd/mteb@1``
``sts``         ``sts`` without ``data``: STS correlations only             ``embed-kd/sts@1``
``ensemble``    ``ensemble_config`` (:mod:`embed_kd.teachers.ensemble`)     ``embed-kd/eval@1``
``bm25``        ``model == "bm25"``                                         ``embed-kd/eval@1``
``sparse``      a ``SparseEncoder`` model (:mod:`embed_kd.evaluation.sparse_eval`)  ``embed-kd/eval@1``
``dense``       a bi-encoder, or a ``query_model`` / ``doc_model`` pair      ``embed-kd/eval@1``
==============  ==========================================================  =====================

A retrieval result may add ``loyalty`` (``loyalty_teacher``), a re-ranked run (``rerank_model``),
``sts`` (``sts`` with ``data``) and, for an asymmetric pair, ``alignment``
(:func:`embed_kd.students.alignment.query_model_alignment`: a query model declaring another
embedding teacher than ``doc_model`` is refused unless ``allow_teacher_mismatch``).

Every flag combination is checked (:meth:`EvalRequest.check`) and every output claimed (the
ownership rule, :mod:`embed_kd.evaluation.outputs`) before a model or the data is loaded; ``-o``
and ``--save-run`` are written both or neither, by rank 0 only under ``torchrun``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from embed_kd import distributed as dist
from embed_kd.data import load_beir, resolve_dataset
from embed_kd.data.inputs import load_inputs
from embed_kd.device import select_device
from embed_kd.errors import EmbedKDError
from embed_kd.evaluation import outputs
from embed_kd.evaluation.ensemble_eval import evaluate_ensemble_from_config
from embed_kd.evaluation.loyalty import evaluate_loyalty
from embed_kd.evaluation.mteb_eval import parse_task_names, resolve_tasks, run_mteb
from embed_kd.evaluation.rerank import evaluate_rerank
from embed_kd.evaluation.retrieval_eval import EvalOptions, evaluate_bm25, evaluate_dense
from embed_kd.evaluation.sparse_eval import evaluate_sparse
from embed_kd.evaluation.sts import evaluate_sts_specs, sts_document
from embed_kd.index.compression import Compression
from embed_kd.io import atomic_write_json, check_writable, refuse_existing
from embed_kd.models import (is_sparse_model, load_cross_encoder, load_sentence_transformer, load_sparse_encoder,
                             model_info)
from embed_kd.students.alignment import query_model_alignment
from embed_kd.students.asym import document_route, query_route, split_routes
from embed_kd.teachers.bi_backend import with_backend


@dataclass
class EvalRequest:
    """What to evaluate, how, and where to write it (the ``embed-kd eval`` flags, one field each)."""

    data: str | None = None
    split: str = "test"
    corpus_file: str | None = None
    model: str | None = None
    query_model: str | None = None
    doc_model: str | None = None
    mteb_tasks: str | None = None
    output: str | None = None
    overwrite: bool = False
    save_run: str | None = None
    index_kind: str = "flat"
    top_k: int = 100
    batch_size: int = 32
    cache_dir: str | None = None
    use_cache: bool = True
    limit_queries: int | None = None
    limit_docs: int | None = None
    allow_missing_ids: bool = False
    ignore_identical_ids: bool = False
    threads: int | None = None
    show_progress: bool = True
    ensemble_config: str | None = None
    save_weights: str | None = None
    rerank_model: str | None = None
    rerank_depth: int = 100
    doc_top_k: int | None = None
    query_top_k: int | None = None
    loyalty_teacher: str | None = None
    allow_teacher_mismatch: bool = False
    sts: str | None = None
    sts_split: str = "test"
    sts_teacher: str | None = None
    compression: Compression | None = None
    backend: str = "torch"
    device: str | None = None

    def any_sparse(self) -> bool:
        return any(s and is_sparse_model(s) for s in (self.model, self.query_model, self.doc_model))

    @property
    def mode(self) -> str:
        if self.mteb_tasks:
            return "mteb"
        if self.sts and not self.data:
            return "sts"
        if self.ensemble_config:
            return "ensemble"
        if self.model == "bm25":
            return "bm25"
        return "sparse" if self.any_sparse() else "dense"

    def check(self, *, distributed: bool = False) -> None:
        """Refuse a flag combination that does not make sense (one :class:`EmbedKDError`), before any work."""
        models = self.model or self.query_model or self.doc_model
        if self.model and (self.query_model or self.doc_model):
            raise EmbedKDError("pass either --model (symmetric) or --query-model/--doc-model (asymmetric), not both")
        if self.ensemble_config and models:
            raise EmbedKDError("--ensemble replaces --model/--query-model/--doc-model: pass one or the other")
        if self.save_weights and not self.ensemble_config:
            raise EmbedKDError("--save-weights needs --ensemble")
        if not self.ensemble_config and not self.model and not (self.query_model and self.doc_model):
            raise EmbedKDError("pass --model, or both --query-model and --doc-model")
        if self.backend != "torch" and self.mode in ("mteb", "sts", "ensemble", "bm25", "sparse"):
            what = {"mteb": "--mteb", "sts": "--sts", "ensemble": "--ensemble", "bm25": "bm25",
                    "sparse": "a sparse model"}[self.mode]
            raise EmbedKDError(f"--backend {self.backend} converts a dense retrieval's query/document encoders; "
                               f"{what} runs on torch (leave --backend out)")
        if self.loyalty_teacher and (self.ensemble_config or self.model == "bm25"):
            raise EmbedKDError("--loyalty-teacher compares a dense retriever's embeddings with the teacher's: it "
                               "needs --model M or --query-model/--doc-model (not bm25 or --ensemble)")
        if self.mteb_tasks:
            if distributed:
                raise EmbedKDError("--mteb runs MTEB's own evaluation loop in one process; launch it without torchrun")
            if self.ensemble_config or self.rerank_model or self.save_run:
                raise EmbedKDError("--mteb runs MTEB's own search and scoring: --ensemble/--rerank/--save-run do "
                                   "not apply")
            if self.model == "bm25":
                raise EmbedKDError("--mteb needs an embedding model (MTEB does not run bm25)")
            return
        if self.sts_teacher and not self.sts:
            raise EmbedKDError("--sts-teacher needs --sts")
        if self.sts and (self.ensemble_config or self.model == "bm25"):
            raise EmbedKDError("--sts measures a bi-encoder's embeddings: pass --model M or --query-model/--doc-model "
                               "(not bm25 or --ensemble)")
        if self.sts and not self.data:
            if self.save_run or self.rerank_model or self.loyalty_teacher:
                raise EmbedKDError("--save-run/--rerank/--loyalty-teacher are retrieval options; --sts without "
                                   "--data measures STS only")
            return
        if not self.data:
            raise EmbedKDError("--data is required (it is optional only with --mteb or --sts)")
        self._check_retrieval()

    def _check_retrieval(self) -> None:
        sparse = self.any_sparse() if not self.ensemble_config and self.model != "bm25" else False
        if (self.doc_top_k or self.query_top_k) and not sparse:
            raise EmbedKDError("--doc-top-k / --query-top-k prune sparse vectors; pass a sparse model "
                               "(--model SPARSE_MODEL)")
        if self.compression is not None and (self.ensemble_config or self.model == "bm25" or sparse):
            raise EmbedKDError("--truncate-dim / --precision / --rescore compress dense embeddings: they need a dense "
                               "--model or --query-model/--doc-model (not bm25, a sparse model or --ensemble)")
        if sparse and not self.model:
            raise EmbedKDError("sparse models are evaluated symmetrically (queries and documents in one vocabulary "
                               "space): pass --model SPARSE_MODEL instead of --query-model/--doc-model")
        if sparse and self.loyalty_teacher:
            raise EmbedKDError("--loyalty-teacher compares dense embeddings; it does not apply to a sparse model")


@dataclass
class EvalResult:
    """What :func:`run_eval` did: ``document`` (the ``-o`` content: eval@1, mteb@1 or sts@1), the
    ``mode``, and whether this process is the one that wrote and reports (rank 0)."""

    mode: str
    document: dict
    output: str | None = None
    is_main: bool = True


def run_eval(req: EvalRequest) -> EvalResult:
    """Check ``req``, evaluate, write ``req.output`` / ``req.save_run`` / ``req.save_weights``; see the module docstring."""
    world = dist.init()  # under torchrun: the corpus is encoded data-parallel, rank 0 writes and reports
    select_device(req.device)  # --device / $EMBED_KD_DEVICE / auto; logged once
    req.check(distributed=world.distributed)
    if req.mode == "mteb":
        return _run_mteb(req)
    if req.mode == "sts":
        return _run_sts_only(req, world)
    _claim_outputs(req)
    t = time.perf_counter()
    folder, dataset = _load_dataset(req)
    opts = EvalOptions(top_k=req.top_k, index=req.index_kind, batch_size=req.batch_size, cache_dir=req.cache_dir,
                       use_cache=req.use_cache, ignore_identical_ids=req.ignore_identical_ids,
                       show_progress=req.show_progress, timings={"load_data_s": time.perf_counter() - t},
                       compression=req.compression)
    loaded: dict = {}  # spec -> model already in memory (reused by loyalty and --sts)
    result, (qm, dm) = _retrieval(req, dataset, folder, opts, loaded)
    if req.loyalty_teacher:
        result["loyalty"] = evaluate_loyalty(dataset, qm, dm, load_sentence_transformer(req.loyalty_teacher),
                                             options=opts, run=result["run"])
    if req.rerank_model:
        result = evaluate_rerank(dataset, load_cross_encoder(req.rerank_model, role="--rerank"), result,
                                 depth=req.rerank_depth, batch_size=req.batch_size, show_progress=req.show_progress,
                                 ignore_identical_ids=req.ignore_identical_ids)
    if req.sts:
        result["sts"] = evaluate_sts_specs(req.sts, req.sts_split, model=req.model, query_model=req.query_model,
                                           doc_model=req.doc_model, teacher=req.sts_teacher, loaded=loaded,
                                           batch_size=req.batch_size, show_progress=req.show_progress)
    run = result.pop("run")
    if world.is_main:
        _write_both(req, result, run)
    return EvalResult(req.mode, result, req.output, world.is_main)


def _claim_outputs(req: EvalRequest) -> None:
    """Two flags naming one file, or outputs that are not embed-kd's of that kind: refused before any work."""
    outputs.check_distinct({"-o": req.output, "--save-run": req.save_run, "--save-weights": req.save_weights})
    for path, artifact in ((req.output, outputs.EVAL_RESULT), (req.save_run, outputs.RUN),
                           (req.save_weights, outputs.ENSEMBLE_WEIGHTS)):
        if path:
            refuse_existing(path, req.overwrite, artifact=artifact)
            check_writable(path)  # a read-only or missing folder fails now, not after the encode


def _load_dataset(req: EvalRequest):
    folder = resolve_dataset(req.data)
    if req.corpus_file:
        dataset = load_inputs(data=folder, split=req.split, corpus=req.corpus_file,
                              allow_missing_ids=req.allow_missing_ids)
    else:
        dataset = load_beir(folder, req.split, name=Path(folder).name, allow_missing_ids=req.allow_missing_ids)
    if req.limit_queries or req.limit_docs:
        dataset = dataset.sliced(req.limit_queries, req.limit_docs)
    return folder, dataset


def _retrieval(req: EvalRequest, dataset, folder, opts: EvalOptions, loaded: dict):
    """The first-stage result of the request's mode and its ``(query model, doc model)`` (dense only)."""
    if req.mode == "ensemble":
        return evaluate_ensemble_from_config(req.ensemble_config, dataset, folder, opts, save_weights=req.save_weights,
                                             overwrite=req.overwrite), (None, None)
    if req.mode == "bm25":
        return evaluate_bm25(dataset, options=opts), (None, None)
    t = time.perf_counter()
    if req.mode == "sparse":
        sm = loaded[req.model] = load_sparse_encoder(req.model)
        opts.timings["load_models_s"] = time.perf_counter() - t
        result = evaluate_sparse(dataset, sm, options=opts, doc_top_k=req.doc_top_k, query_top_k=req.query_top_k)
        result.pop("_matrices")
        return result, (None, None)
    qm, dm = _dense_pair(req)
    opts.timings["load_models_s"] = time.perf_counter() - t
    loaded.update({req.model or req.query_model: qm, req.doc_model or req.model: dm})
    alignment = None
    if not req.model:
        q_info, d_info = model_info(qm), model_info(dm)
        if q_info["dim"] == d_info["dim"]:  # else evaluate_dense refuses the dimensions
            alignment = query_model_alignment(req.query_model, q_info, d_info,
                                              allow_mismatch=req.allow_teacher_mismatch,
                                              docs="--doc-model's documents")
    result = evaluate_dense(dataset, qm, dm, options=opts)
    if alignment is not None:
        result["alignment"] = alignment
    return result, (qm, dm)


def _dense_pair(req: EvalRequest):
    """``(query model, doc model)``: an asym (Router) model split into its towers; another runtime
    (``backend``) converted once (cached) from the same weights, so the fingerprints stay."""
    if req.model:
        qm, dm = split_routes(load_sentence_transformer(req.model))
    else:
        qm = query_route(load_sentence_transformer(req.query_model))
        dm = document_route(load_sentence_transformer(req.doc_model))
    if req.backend != "torch":
        conv = Path(req.cache_dir) if req.cache_dir else None
        qm, dm = (with_backend(m, req.backend, threads=req.threads, cache_root=conv) for m in (qm, dm))
    return qm, dm


def _write_both(req: EvalRequest, result: dict, run: dict) -> None:
    """``--save-run`` and ``-o``: both or neither (a failed ``-o`` removes the run file written just before)."""
    written = []
    try:
        if req.save_run:
            atomic_write_json(req.save_run, run, overwrite=req.overwrite)
            written.append(Path(req.save_run))
        if req.output:
            atomic_write_json(req.output, result, overwrite=req.overwrite)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def _run_sts_only(req: EvalRequest, world) -> EvalResult:
    """``eval --sts`` without ``--data``: STS correlations only (an ``embed-kd/sts@1`` result)."""
    if req.output:
        refuse_existing(req.output, req.overwrite, artifact=outputs.STS_RESULT)  # only an earlier STS result
        check_writable(req.output)
    result = sts_document(evaluate_sts_specs(req.sts, req.sts_split, model=req.model, query_model=req.query_model,
                                             doc_model=req.doc_model, teacher=req.sts_teacher,
                                             batch_size=req.batch_size, show_progress=req.show_progress))
    if world.is_main and req.output:
        atomic_write_json(req.output, result, overwrite=req.overwrite)
    return EvalResult("sts", result, req.output, world.is_main)


def _run_mteb(req: EvalRequest) -> EvalResult:
    """``eval --mteb TASK[,TASK…]``: resolve the tasks, load the models, run MTEB, write ``embed-kd/mteb@1``."""
    if req.output:
        refuse_existing(req.output, req.overwrite, artifact=outputs.MTEB_RESULT)
    try:
        import mteb  # noqa: F401
    except ImportError:
        raise EmbedKDError("--mteb needs the 'mteb' package: pip install 'embed-kd[mteb]'") from None
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"mteb(\.|$)")
    if not req.show_progress:
        import datasets

        datasets.disable_progress_bars()
    tasks = resolve_tasks(parse_task_names(req.mteb_tasks), data=req.data, split=req.split,
                          limit_queries=req.limit_queries, limit_docs=req.limit_docs,
                          allow_missing_ids=req.allow_missing_ids)
    t = time.perf_counter()
    if req.model:  # an asym (Router) model runs asymmetrically: queries by its query route, documents by its other
        qm, dm = split_routes(load_sentence_transformer(req.model))
        dm = None if dm is qm else dm
    else:
        qm = query_route(load_sentence_transformer(req.query_model))
        dm = document_route(load_sentence_transformer(req.doc_model))
    result = run_mteb(tasks, qm, dm, batch_size=req.batch_size, show_progress=req.show_progress,
                      timings={"load_models_s": time.perf_counter() - t}, cache_dir=req.cache_dir,
                      use_cache=req.use_cache)
    if req.output:
        atomic_write_json(req.output, result, overwrite=req.overwrite)
    return EvalResult("mteb", result, req.output, True)
