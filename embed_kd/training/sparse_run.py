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

The run's life — ``OUTPUT.work/run.json`` with its input fingerprint, ``--resume`` from the newest
complete checkpoint (a checkpoint cut short by a kill dropped; step 0 when killed before the first),
the time budget, averaging, the manifest, the card and the atomic output — is
:mod:`embed_kd.training.lifecycle`'s, as for dense students. One process only (no ``torchrun``).

The output folder is a ``SparseEncoder`` folder (``SparseEncoder(OUTPUT)`` loads it) with
``embed_kd_train.json`` (schema ``embed-kd/train-run@1``; ``config.student.type == "sparse"``, the
``student`` block adds ``type``, ``head_init``, ``query_length``, ``document_length``, ``pooling``,
``activation``, ``vocab_size``; ``training.regularizer_weights`` lists ``[step, query weight, document
weight]`` per step; ``training.precision`` and ``device`` as for dense runs; ``teacher`` is null — there is no embedding teacher), ``README.md``
and ``checkpoints/`` — see docs/formats.md.
"""

from __future__ import annotations

import logging

from embed_kd.data.beir import doc_text
from embed_kd.distributed import get_world
from embed_kd.errors import EmbedKDError
from embed_kd.models import fingerprint_model
from embed_kd.students.sparse import SparseHeadOptions, build_sparse_student
from embed_kd.training.config import TrainConfig
from embed_kd.training.data import build_score_examples, load_training_scores, split_dev
from embed_kd.training.lifecycle import RunLifecycle
from embed_kd.training.prologue import prepare_training_run

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


def _student_block(cfg: TrainConfig, student, build_info: dict, init_fp: str) -> dict:
    S = cfg.sparse
    auto = student[0].model if hasattr(student[0], "model") else getattr(student[0], "auto_model", None)
    return {"type": "sparse", "init": build_info["init"], "head_init": build_info["head_init"],
            "init_fingerprint": init_fp, "fingerprint": fingerprint_model(student),
            "dim": student.get_embedding_dimension(), "vocab_size": student.get_embedding_dimension(),
            "max_seq_length": student.max_seq_length, "query_length": S.query_length,
            "document_length": S.document_length, "train_document_length": S.train_document_length,
            "pooling": S.pooling, "activation": S.activation,
            "layers": getattr(getattr(auto, "config", None), "num_hidden_layers", None),
            "params": int(sum(p.numel() for p in student.parameters()))}


def train_sparse_student(cfg: TrainConfig, *, overwrite: bool = False, resume: bool = False,
                         show_progress: bool = True, cache_dir: str | None = None, limit_queries: int | None = None,
                         limit_docs: int | None = None, config_file: str | None = None,
                         overrides: list[str] | None = None) -> dict:
    """Run one sparse-student experiment; returns the run manifest (also written beside the model)."""
    from sentence_transformers.sparse_encoder import SparseEncoderTrainer, SparseEncoderTrainingArguments
    from sentence_transformers.sparse_encoder.callbacks import SpladeRegularizerWeightSchedulerCallback
    from sentence_transformers.sparse_encoder.data_collator import SparseEncoderDataCollator

    from embed_kd.training.sparse_dev_eval import SparseDevEvaluator, dev_pool

    cfg.validate()
    if get_world().world_size > 1:
        raise EmbedKDError("a sparse student trains in one process; multi-process (torchrun / DDP) training is "
                           "supported for dense students only")
    if cfg.student.type != "sparse":
        raise EmbedKDError("train_sparse_student: config student.type is not 'sparse'")
    run = prepare_training_run(cfg, overwrite=overwrite, resume=resume, limit_queries=limit_queries,
                               limit_docs=limit_docs)  # refuses an unwritable OUTPUT before training
    dataset, S = run.dataset, cfg.sparse
    store, by_query = load_training_scores(cfg, dataset, run.full_fps, run.sliced)

    train_qids, dev_qids = split_dev(list(dataset.queries), cfg.examples.dev_queries, cfg.train.seed)
    E = cfg.examples
    score_ex = build_score_examples(
        by_query, dataset, train_qids, negatives=E.negatives, sampling=E.sampling, rounds=E.rounds,
        score_norm=E.score_norm, documents="student", doc_row=None, seed=cfg.train.seed,
        min_candidates=E.min_candidates)

    opts = SparseHeadOptions(pooling=S.pooling, activation=S.activation, head_bias=S.head_bias,
                             query_length=S.query_length, document_length=S.document_length)
    student, build_info = build_sparse_student(cfg.student, cfg.teacher if cfg.student.from_teacher else None,
                                               opts=opts)
    init_fp = fingerprint_model(student)
    loss = build_sparse_loss(cfg, student)
    scheduler = SpladeRegularizerWeightSchedulerCallback(loss, scheduler_type=S.flops_schedule,
                                                         warmup_ratio=S.flops_warmup_ratio)
    router = {"query": "query", **{f"doc_{i}": "document" for i in range(E.negatives + 1)}}
    collator = SparseEncoderDataCollator(
        preprocess_fn=student.preprocess, router_mapping=router,
        max_length={"query": S.query_length, "document": S.train_document_length or S.document_length})
    evaluator = None
    if dev_qids:
        pool = dev_pool(by_query, dataset.qrels, dev_qids, S.dev_pool)
        evaluator = SparseDevEvaluator({q: dataset.queries[q] for q in dev_qids},
                                       {q: dataset.qrels[q] for q in dev_qids},
                                       {d: doc_text(dataset.corpus[d]) for d in pool if d in dataset.corpus})

    life = RunLifecycle(cfg, run, resume=resume, show_progress=show_progress)
    trace = _regularizer_trace(loss)
    life.trainer_for(SparseEncoderTrainer, SparseEncoderTrainingArguments, model=student,
                     train_dataset=score_ex.dataset(), loss=loss, evaluator=evaluator,
                     args_extra={"router_mapping": router}, callbacks=(scheduler, trace), data_collator=collator)
    steps = cfg.train.max_steps != 0
    if not steps:
        logger.info("train.max_steps = 0: no SpladeLoss training, term-bias stage only")
    life.train(guard=loss, inputs=life.inputs(store=store, teacher_fp=None, student_init_fp=init_fp), steps=steps)
    # the final dev evaluation runs once, after the last change to the model (the term-bias stage, if on)
    ckpts, averaged, dev_final = (life.finish_checkpoints(student, None if S.term_bias_steps > 0 else evaluator)
                                  if steps else ([], [], None))
    term_bias = None
    if S.term_bias_steps > 0:
        from embed_kd.training.term_bias_stage import run_term_bias_stage

        term_bias = run_term_bias_stage(student, cfg, dataset, by_query, train_qids, dev_qids,
                                        show_progress=show_progress)
        if evaluator is not None:
            dev_final = evaluator(student)

    manifest = life.manifest(
        teacher=None, student=_student_block(cfg, student, build_info, init_fp),
        examples={"score": score_ex.stats, "align": None}, store=store, train_qids=train_qids, dev_qids=dev_qids,
        averaged=averaged, dev={"metrics_final": dev_final, "pool_docs": len(evaluator.docs)} if dev_final else None,
        config_file=config_file, overrides=overrides, training={"regularizer_weights": trace.rows},
        term_bias=term_bias)
    life.publish(student, manifest, ckpts, overwrite=overwrite, what="sparse student")
    return manifest
