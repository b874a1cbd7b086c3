r"""Train a sparse (SPLADE) student from teacher scores: ``embed-kd train --student-type sparse``.

Same config, score store, example builder, checkpoints, time budget, weight averaging, manifest
and model card as the dense students (:mod:`embed_kd.training.run`); what differs:

- the student is a sentence-transformers ``SparseEncoder`` (:func:`embed_kd.students.sparse.build_sparse_student`:
  MLM head + ``SpladePooling``), and it encodes its own documents (``losses.score_documents: student``);
- the loss is sentence-transformers' ``SpladeLoss`` around ``SparseMarginMSELoss`` (or
  ``SparseDistillKLDivLoss``) on the teacher's normalised, scaled scores
  (:class:`embed_kd.losses.ScaledScoreLoss`), plus FLOPS regularisation with separate weights for
  queries and documents:

  .. math::

      \mathcal{L} = \mathcal{L}_{score} + \lambda_q(t)\,\mathrm{FLOPS}(Q) + \lambda_d(t)\,\mathrm{FLOPS}(D),
      \qquad \mathrm{FLOPS}(X) = \sum_{t \in V} \Bigl(\frac{1}{|X|}\sum_{x \in X} w_t(x)\Bigr)^2

  over the batch's query vectors :math:`Q` and document vectors :math:`D` (Paria et al. 2020;
  Formal et al. 2021), with :math:`\lambda(t)` warmed up from 0 by
  ``SpladeRegularizerWeightSchedulerCallback`` (``sparse.flops_schedule`` over
  ``sparse.flops_warmup_ratio`` of the steps);
- queries and documents are truncated to ``sparse.query_length`` / ``sparse.train_document_length``
  tokens while training (the collator's per-task ``max_length``; router mapping ``query`` →
  ``query``, ``doc_i`` → ``document``); the saved model keeps ``sparse.document_length`` for inference;
- the dev slice re-ranks a pool of candidates (:class:`embed_kd.training.sparse_dev_eval.SparseDevEvaluator`)
  and reports the vectors' non-zeros.

The output folder is a ``SparseEncoder`` folder (``SparseEncoder(OUTPUT)`` loads it) with
``embed_kd_train.json`` (schema ``embed-kd/train-run@1``; ``config.student.type == "sparse"``, the
``student`` block adds ``type``, ``head_init``, ``query_length``, ``document_length``, ``pooling``,
``activation``, ``vocab_size``; ``training.regularizer_weights`` lists ``[step, query weight, document
weight]`` per step; ``training.precision`` and ``device`` as for dense runs; ``teacher`` is null — there is no embedding teacher), ``README.md``
and ``checkpoints/`` — see docs/formats.md.
"""

from __future__ import annotations

import logging
import os
import shutil
import time

from embed_kd.errors import EmbedKDError
from embed_kd.io import utc_now
from embed_kd.training.config import TrainConfig
from embed_kd.training.data import load_training_scores

logger = logging.getLogger(__name__)


def build_sparse_loss(cfg: TrainConfig, student):
    """``SpladeLoss(ScaledScoreLoss(SparseMarginMSELoss | SparseDistillKLDivLoss), FLOPS weights)``."""
    from sentence_transformers.sparse_encoder.losses import (SparseDistillKLDivLoss, SparseMarginMSELoss,
                                                             SpladeLoss)

    from embed_kd.losses import ScaledScoreLoss

    L, S = cfg.losses, cfg.sparse
    inner = SparseMarginMSELoss(student) if L.score == "margin_mse" else \
        SparseDistillKLDivLoss(student, temperature=1.0)
    return SpladeLoss(student, loss=ScaledScoreLoss(inner, scale=L.score_scale),
                      document_regularizer_weight=S.doc_flops_weight, query_regularizer_weight=S.query_flops_weight,
                      document_regularizer_threshold=S.doc_flops_threshold,
                      query_regularizer_threshold=S.query_flops_threshold)


def _regularizer_trace(loss):
    """A callback recording ``[step, query weight, document weight]`` as used by each step (after warm-up)."""
    from transformers import TrainerCallback

    class Trace(TrainerCallback):
        def __init__(self):
            self.rows: list[list[float]] = []

        def on_step_end(self, args, state, control, **kw):
            self.rows.append([state.global_step, loss.query_regularizer_weight, loss.document_regularizer_weight])

    return Trace()


def train_sparse_student(cfg: TrainConfig, *, overwrite: bool = False, resume: bool = False,
                         show_progress: bool = True, cache_dir: str | None = None, limit_queries: int | None = None,
                         limit_docs: int | None = None, config_file: str | None = None,
                         overrides: list[str] | None = None) -> dict:
    """Run one sparse-student experiment; returns the run manifest (also written beside the model)."""
    from sentence_transformers.sparse_encoder import SparseEncoderTrainer, SparseEncoderTrainingArguments
    from sentence_transformers.sparse_encoder.callbacks import SpladeRegularizerWeightSchedulerCallback
    from sentence_transformers.sparse_encoder.data_collator import SparseEncoderDataCollator

    from embed_kd.data.beir import doc_text
    from embed_kd.io import versions
    from embed_kd.io import atomic_dir, atomic_write_json
    from embed_kd.models import fingerprint_model
    from embed_kd.students.sparse import SparseHeadOptions, build_sparse_student
    from embed_kd.training.averaging import finish_checkpoints, list_checkpoints
    from embed_kd.training.data import build_score_examples, split_dev
    from embed_kd.device import device_info, pin_trainer_device
    from embed_kd.training.prologue import OUTPUT_ARTIFACT, prepare_training_run, quiet_trainer_logs, trainer_arguments
    from embed_kd.training.run import MANIFEST, SCHEMA, WORK_MANIFEST, WORK_SCHEMA, _time_budget_callback, git_info
    from embed_kd.training.sparse_dev_eval import SparseDevEvaluator, dev_pool

    cfg.validate()
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise EmbedKDError("a sparse student trains in one process; multi-process (torchrun / DDP) training is "
                           "supported for dense students only")
    if cfg.student.type != "sparse":
        raise EmbedKDError("train_sparse_student: config student.type is not 'sparse'")
    run = prepare_training_run(cfg, overwrite=overwrite, resume=resume, limit_queries=limit_queries,
                               limit_docs=limit_docs)  # refuses an unwritable OUTPUT before training
    out, work, dataset, full_fps, sliced, t_start = (run.out, run.work, run.dataset, run.full_fps, run.sliced,
                                                     run.t_start)
    S = cfg.sparse
    store, by_query = load_training_scores(cfg, dataset, full_fps, sliced)

    train_qids, dev_qids = split_dev(list(dataset.queries), cfg.examples.dev_queries, cfg.train.seed)
    score_ex = build_score_examples(
        by_query, dataset, train_qids, negatives=cfg.examples.negatives, sampling=cfg.examples.sampling,
        rounds=cfg.examples.rounds, score_norm=cfg.examples.score_norm, documents="student", doc_row=None,
        seed=cfg.train.seed, min_candidates=cfg.examples.min_candidates)

    opts = SparseHeadOptions(pooling=S.pooling, activation=S.activation, head_bias=S.head_bias,
                             query_length=S.query_length, document_length=S.document_length)
    student, build_info = build_sparse_student(cfg.student, cfg.teacher if cfg.student.from_teacher else None,
                                               opts=opts)
    init_fp = fingerprint_model(student)
    loss = build_sparse_loss(cfg, student)
    scheduler = SpladeRegularizerWeightSchedulerCallback(loss, scheduler_type=S.flops_schedule,
                                                         warmup_ratio=S.flops_warmup_ratio)
    n_docs = cfg.examples.negatives + 1
    router = {"query": "query", **{f"doc_{i}": "document" for i in range(n_docs)}}
    collator = SparseEncoderDataCollator(
        preprocess_fn=student.preprocess, router_mapping=router,
        max_length={"query": S.query_length, "document": S.train_document_length or S.document_length})

    evaluator = None
    if dev_qids:
        pool = dev_pool(by_query, dataset.qrels, dev_qids, S.dev_pool)
        evaluator = SparseDevEvaluator({q: dataset.queries[q] for q in dev_qids},
                                       {q: dataset.qrels[q] for q in dev_qids},
                                       {d: doc_text(dataset.corpus[d]) for d in pool if d in dataset.corpus})
    T = cfg.train
    ckpt_dir = work / "checkpoints"
    args = SparseEncoderTrainingArguments(
        **trainer_arguments(cfg, ckpt_dir, evaluate=evaluator is not None, show_progress=show_progress,
                            device=run.device, precision=run.precision),
        router_mapping=router,
    )
    pin_trainer_device(args, run.device)  # the selected device (was always the CPU)
    budget = _time_budget_callback(T.max_time_s)
    trace = _regularizer_trace(loss)
    trainer = SparseEncoderTrainer(model=student, args=args, train_dataset=score_ex.dataset(),
                                   loss=loss, evaluator=evaluator, data_collator=collator,
                                   callbacks=[scheduler, budget, trace])
    quiet_trainer_logs(trainer)
    from embed_kd.training.finite_guard import NonFiniteLossError, diverged_message, guard_losses

    guard_losses(loss, step=lambda: trainer.state.global_step)  # a NaN/inf loss stops the run (no output)
    resume_from = None
    if not (work / WORK_MANIFEST).is_file():  # marks OUTPUT.work as embed-kd's (the ownership rule)
        from embed_kd.data.fingerprint import fingerprint_json

        atomic_write_json(work / WORK_MANIFEST, {"schema": WORK_SCHEMA, "fingerprint": fingerprint_json(cfg.to_dict()),
                                                 "inputs": {"config": cfg.to_dict()}})
    if resume:
        ck = list_checkpoints(ckpt_dir)
        if not ck:
            raise EmbedKDError(f"--resume: no checkpoint in {ckpt_dir} to resume from")
        resume_from = str(ck[-1])
        logger.info("resuming from %s", resume_from)
    t_train = time.perf_counter()
    ckpts, averaged, dev_final = [], [], None
    if T.max_steps != 0:
        try:
            trainer.train(resume_from_checkpoint=resume_from)
        except NonFiniteLossError as exc:  # removed, not resumable: the same config would diverge again
            from embed_kd.io import remove_owned
            from embed_kd.training.prologue import WORK_ARTIFACT

            remove_owned(work, WORK_ARTIFACT)
            raise NonFiniteLossError(diverged_message(exc, work=str(work), lr=cfg.train.lr)) from None
        # the final dev evaluation runs once, after the last change to the model (the term-bias stage, if on)
        ckpts, averaged, dev_final = finish_checkpoints(student, ckpt_dir, trainer.state.global_step, cfg.average,
                                                        None if S.term_bias_steps > 0 else evaluator)
    else:
        logger.info("train.max_steps = 0: no SpladeLoss training, term-bias stage only")
    train_time_s = time.perf_counter() - t_train
    step = trainer.state.global_step
    term_bias = None
    if S.term_bias_steps > 0:
        from embed_kd.training.term_bias_stage import run_term_bias_stage

        term_bias = run_term_bias_stage(student, cfg, dataset, by_query, train_qids, dev_qids,
                                        show_progress=show_progress)
        if evaluator is not None:
            dev_final = evaluator(student)

    auto = student[0].model if hasattr(student[0], "model") else getattr(student[0], "auto_model", None)
    manifest = {
        "schema": SCHEMA,
        "created": utc_now(),
        "config": cfg.to_dict(), "config_file": config_file, "overrides": list(overrides or []),
        "dataset": {"name": dataset.name, "path": str(dataset.path), "split": dataset.split, **full_fps,
                    "n_queries": len(dataset.queries), "train_queries": len(train_qids), "dev_queries": dev_qids,
                    "notes": dataset.notes},
        "scores": {"path": str(store.path), "config_fingerprint": store.manifest.get("config_fingerprint"),
                   "teachers": store.manifest.get("teachers"), "ensemble": store.manifest.get("ensemble"),
                   "split": store.manifest["dataset"].get("split")},
        "teacher": None,
        "student": {"type": "sparse", "init": build_info["init"], "head_init": build_info["head_init"],
                    "init_fingerprint": init_fp, "fingerprint": fingerprint_model(student),
                    "dim": student.get_embedding_dimension(), "vocab_size": student.get_embedding_dimension(),
                    "max_seq_length": student.max_seq_length, "query_length": S.query_length,
                    "document_length": S.document_length, "train_document_length": S.train_document_length,
                    "pooling": S.pooling, "activation": S.activation,
                    "layers": getattr(getattr(auto, "config", None), "num_hidden_layers", None),
                    "params": int(sum(p.numel() for p in student.parameters()))},
        "examples": {"score": score_ex.stats, "align": None},
        "training": {"global_step": step, "epochs": trainer.state.epoch, "train_time_s": train_time_s,
                     "total_time_s": time.perf_counter() - t_start,
                     "stopped_by_time_budget": budget.stopped, "log_history": trainer.state.log_history,
                     "precision": run.precision,
                     "regularizer_weights": trace.rows},
        "averaging": {"enabled": cfg.average.enabled, "checkpoints": [p.name for p in averaged],
                      "applied": bool(averaged)},
        "dev": {"metrics_final": dev_final, "pool_docs": len(evaluator.docs)} if dev_final else None,
        "term_bias": term_bias,
        "device": device_info(run.device),
        "versions": versions(),
        "git": git_info(),
    }
    from embed_kd.numeric import check_finite_weights

    check_finite_weights(student, f"{out}: the trained sparse student")  # never publish NaN weights
    with atomic_dir(out, overwrite=overwrite, artifact=OUTPUT_ARTIFACT) as tmp:
        student.save(str(tmp))
        keep = tmp / "checkpoints"
        keep.mkdir()
        for ck in ckpts:
            for junk in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin"):
                (ck / junk).unlink(missing_ok=True)
            os.replace(ck, keep / ck.name)
        atomic_write_json(tmp / MANIFEST, manifest)
        from embed_kd.cards import write_model_card

        write_model_card(tmp, manifest=manifest, name=out.name)
    shutil.rmtree(work, ignore_errors=True)
    logger.info("sparse student saved to %s (%d steps, %.0fs training)", out, step, train_time_s)
    return manifest
