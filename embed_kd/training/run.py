"""Train a dense student with the sentence-transformers trainer; save it with a run manifest.

The pieces (all sentence-transformers' own where it has them):

- score loss: ``MarginMSELoss`` or ``DistillKLDivLoss`` on the score-teacher's (normalised, scaled)
  scores — against frozen teacher document embeddings (``losses.score_documents: teacher``,
  :class:`embed_kd.losses.TeacherDocumentsLoss`) or with the student encoding the documents too
  (``student``);
- alignment loss: ``EmbedDistillLoss`` (cosine / l2) or ``MSELoss`` onto the teacher's embeddings of
  corpus documents and train queries (LEAF);
- both in one run through the trainer's multi-dataset mode (a dict of datasets and a dict of losses,
  batches interleaved by ``multi_dataset_batch_sampler``), each loss with its declared weight
  (:class:`embed_kd.losses.WeightedLoss`);
- checkpoints every ``save_steps`` (resume with ``--resume``), seeds, a dev-slice evaluation every
  ``eval_steps`` (:class:`embed_kd.training.dev_eval.DevRetrievalEvaluator`), progress bars,
  optional wall-clock budget (``train.max_time_s``), and checkpoint weight averaging at the end.

Output folder (written atomically; refused if it exists unless ``--overwrite``)::

    OUTPUT/                      a plain sentence-transformers folder: SentenceTransformer(OUTPUT)
      modules.json, config.json, model.safetensors, ...   (projection: a Dense module sub-folder)
      embed_kd_train.json        the run manifest (below)
      README.md                  model card (embed_kd.cards): recipe, teachers, data, how to load it
      asym/                      the student (queries) and the teacher (documents) as one sentence-transformers
                                 Router model (schema embed-kd/asym@1, embed_kd.students.asym)
      checkpoints/checkpoint-<step>/   model weights of the kept checkpoints (no optimizer state)

While training, checkpoints live in ``OUTPUT.work/`` (optimizer state included) so that an
interrupted run resumes with ``--resume``; it is removed when the run completes.

Multi-process (``torchrun --nproc-per-node N -m embed_kd train …`` or ``accelerate launch``): the
trainer runs DDP (gloo on CPU, NCCL on GPUs) and shards each global batch of
``N × train.batch_size`` examples over the processes; the teacher's document embeddings are
encoded data-parallel once (:mod:`embed_kd.index.stream_encode`); only rank 0 writes checkpoints'
weights, the output folder and its manifest (``training.world_size`` records N). The time budget
is agreed on by all processes (they stop at the same step).

``OUTPUT.work/run.json`` (schema ``embed-kd/train-work@1``) fingerprints what decides the run:
``{"schema", "fingerprint", "inputs": {"config" (without train.threads), "limit_queries",
"limit_docs", "dataset" (corpus/queries/qrels fingerprints), "scores" (config_fingerprint),
"teacher" (fingerprint), "student_init" (fingerprint), "align_sources" (only with a general
alignment source: its texts' fingerprint)}}``. ``--resume`` refuses a work folder made
with other inputs, resumes from the newest *complete* checkpoint (one whose ``trainer_state.json``
— the trainer's last write — exists; a checkpoint cut short by a kill is removed) through the
trainer's own ``resume_from_checkpoint`` (weights, optimizer, scheduler, RNG states, data position),
and starts from step 0 when the run was killed before its first checkpoint.

Run manifest ``embed_kd_train.json`` (schema ``embed-kd/train-run@1``)::

    {
      "schema": "embed-kd/train-run@1",
      "created": ISO-8601 UTC,
      "config": the resolved TrainConfig (after the YAML file, CLI flags and --set overrides),
      "config_file": path or null, "overrides": ["key=value", ...],
      "dataset": {"name", "path", "split", "corpus_fingerprint", "queries_fingerprint",
                  "qrels_fingerprint", "n_queries", "train_queries", "dev_queries": [ids], "notes"},
      "scores": null | {"path", "config_fingerprint", "teachers": [...], "ensemble", "split"},
      "teacher": {"spec", "fingerprint", "dim", "max_seq_length"},
      "student": {"init": description, "init_fingerprint", "fingerprint" (final), "dim", "type" (dense | static),
                  "max_seq_length", "layers", "params"},
      "examples": {"score": stats | null, "align": stats | null},   # align: per-source mix (training.align_mix)
      "training": {"global_step", "epochs", "train_time_s", "stopped_by_time_budget", "world_size", "precision",
                   "global_batch_size", "log_history": [trainer logs: loss per dataset, dev metrics, lr]},
      "averaging": {"enabled", "checkpoints": [names], "applied": bool},
      "dev": {"metrics_final": {...}} | null,
      "device": {"device", "type", "name"} (embed_kd.device.device_info: where it trained),
      "versions": {...}, "git": {"commit", "dirty"},
      "machine": {"cpu", "arch", "cores", "flags": {avx2, avx512f, ...: bool}, "threads", "load_avg": [1, 5,
                  15 min] at the end of the run, "commit"} (embed_kd.cpu.machine_info)
    }
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from embed_kd import distributed as dist
from embed_kd.errors import ArtifactError, EmbedKDError
from embed_kd.io import utc_now
from embed_kd.training.config import TrainConfig

logger = logging.getLogger(__name__)
SCHEMA = "embed-kd/train-run@1"
MANIFEST = "embed_kd_train.json"
WORK_SCHEMA = "embed-kd/train-work@1"
WORK_MANIFEST = "run.json"
_TRAINER_STATE = "trainer_state.json"  # the last file the trainer writes into a checkpoint


def complete_checkpoints(ckpt_dir: Path, *, remove_partial: bool = False) -> list[Path]:
    """The checkpoints of ``ckpt_dir`` the trainer finished writing (``trainer_state.json`` present),
    by step; with ``remove_partial`` the others (a save cut short by a kill) are deleted."""
    from embed_kd.training.averaging import list_checkpoints

    done = []
    for ck in list_checkpoints(ckpt_dir):
        if (ck / _TRAINER_STATE).is_file():
            done.append(ck)
        elif remove_partial:
            logger.warning("%s: incomplete checkpoint (interrupted while saving): removing it", ck)
            shutil.rmtree(ck, ignore_errors=True)
    return done


def _check_work(work: Path, run_fp: str, inputs: dict, resume: bool) -> None:
    """Write ``work/run.json`` for a new run; on ``resume`` refuse a work folder made with other inputs."""
    from embed_kd.io import atomic_write_json, read_json

    path = work / WORK_MANIFEST
    if resume and path.is_file():
        old = read_json(path, "interrupted-run manifest")
        if not isinstance(old, dict) or old.get("schema") != WORK_SCHEMA:
            raise ArtifactError(f"{path}: not an embed-kd interrupted-run manifest (schema {WORK_SCHEMA!r})")
        if old.get("fingerprint") != run_fp:
            before = old.get("inputs") or {}
            diff = sorted(k for k in set(before) | set(inputs) if before.get(k) != inputs.get(k))
            raise ArtifactError(
                f"{work}: the interrupted run was made with other inputs (fingerprint {old.get('fingerprint')}, this "
                f"run {run_fp}; differs in: {', '.join(diff) or '?'}); resume it with the same config and data, "
                "or pass --overwrite to start over")
        return
    atomic_write_json(path, {"schema": WORK_SCHEMA, "fingerprint": run_fp, "inputs": inputs})


def git_info() -> dict:
    """The commit of the embed-kd checkout running this (null outside a git checkout)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                    capture_output=True, text=True, timeout=10).stdout.strip()) if commit else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"commit": commit, "dirty": dirty}


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _time_budget_callback(max_time_s: float | None):
    from transformers import TrainerCallback

    class TimeBudget(TrainerCallback):
        def __init__(self):
            self.start = None
            self.stopped = False

        def on_train_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            over = bool(max_time_s and self.start and time.perf_counter() - self.start > max_time_s)
            if max_time_s and dist.is_initialized():  # every process stops at the same step, or DDP hangs
                over = any(dist.all_gather_object(over))
            if over:
                logger.warning("time budget of %.0fs reached at step %d: stopping", max_time_s, state.global_step)
                self.stopped = True
                control.should_training_stop = True
                control.should_save = True
            return control

    return TimeBudget()


def _build_losses(cfg: TrainConfig, student, doc_emb: np.ndarray):
    from sentence_transformers.sentence_transformer.losses import (
        DistillKLDivLoss, EmbedDistillLoss, MarginMSELoss, MSELoss)

    from embed_kd.losses import ScaledScoreLoss, TeacherDocumentsLoss, WeightedLoss

    losses = {}
    L = cfg.losses
    if L.score != "none":
        inner = MarginMSELoss(student) if L.score == "margin_mse" else \
            DistillKLDivLoss(student, student_temperature=L.kl_temperature, temperature=1.0)
        scaled = ScaledScoreLoss(inner, scale=L.score_scale)
        score_loss = TeacherDocumentsLoss(scaled, doc_emb) if L.score_documents == "teacher" else scaled
        losses["score"] = WeightedLoss(score_loss, L.score_weight)
    if L.align != "none":
        align = MSELoss(student) if L.align == "mse" else EmbedDistillLoss(student, distance_metric=L.align)
        losses["align"] = WeightedLoss(align, L.align_weight)
    return losses


def train_student(cfg: TrainConfig, *, overwrite: bool = False, resume: bool = False, show_progress: bool = True,
                  cache_dir: str | None = None, limit_queries: int | None = None, limit_docs: int | None = None,
                  config_file: str | None = None, overrides: list[str] | None = None) -> dict:
    """Run one training experiment; returns the run manifest (also written beside the model)."""
    if cfg.student.type == "sparse":  # a SPLADE student: embed_kd.training.sparse_run (same config and layout)
        from embed_kd.training.sparse_run import train_sparse_student

        return train_sparse_student(cfg, overwrite=overwrite, resume=resume, show_progress=show_progress,
                                    cache_dir=cache_dir, limit_queries=limit_queries, limit_docs=limit_docs,
                                    config_file=config_file, overrides=overrides)
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    from embed_kd.encode import uses_cosine
    from embed_kd.index.encoding import encode_corpus, query_embeddings
    from embed_kd.index.cache import EmbeddingCache
    from embed_kd.models import fingerprint_model, load_sentence_transformer
    from embed_kd.students.build import build_student
    from embed_kd.training.data import build_align_examples, build_score_examples, split_dev
    from embed_kd.training.dev_eval import DevRetrievalEvaluator
    from embed_kd.device import pin_trainer_device
    from embed_kd.training.prologue import prepare_training_run, quiet_trainer_logs, trainer_arguments

    cfg.validate()
    run = prepare_training_run(cfg, overwrite=overwrite, resume=resume, limit_queries=limit_queries,
                               limit_docs=limit_docs)
    out, work, world, dataset, full_fps, sliced, t_start = (run.out, run.work, run.world, run.dataset, run.full_fps,
                                                            run.sliced, run.t_start)

    store = None
    by_query = None
    if cfg.losses.score != "none":
        from embed_kd.training.data import load_training_scores

        store, by_query = load_training_scores(cfg, dataset, full_fps, sliced, stream=True)  # corpus scale

    teacher = load_sentence_transformer(cfg.teacher, role="train --teacher (the embedding teacher)")
    normalize = uses_cosine(teacher)
    cache = EmbeddingCache(cache_dir)
    doc_emb, doc_ids, _ = encode_corpus(teacher, dataset, cache=cache, normalize=normalize,
                                        show_progress=show_progress)

    train_qids, dev_qids = (split_dev(list(dataset.queries), cfg.examples.dev_queries, cfg.train.seed)
                            if dataset.queries else ([], []))  # a corpus alone: alignment on its texts
    doc_row = {d: i for i, d in enumerate(doc_ids)}
    score_ex = None
    if by_query is not None and store.score_kind == "margin":  # imported margins: trained on as margins
        from embed_kd.training.margin_examples import build_margin_examples

        score_ex = build_margin_examples(
            store, dataset, train_qids, negatives=cfg.examples.negatives, sampling=cfg.examples.sampling,
            rounds=cfg.examples.rounds, score_norm=cfg.examples.score_norm, documents=cfg.losses.score_documents,
            doc_row=doc_row, seed=cfg.train.seed, keep_docs=dataset.corpus if sliced else None)
    elif by_query is not None:
        score_ex = build_score_examples(
            by_query, dataset, train_qids, negatives=cfg.examples.negatives, sampling=cfg.examples.sampling,
            rounds=cfg.examples.rounds, score_norm=cfg.examples.score_norm, documents=cfg.losses.score_documents,
            doc_row=doc_row, seed=cfg.train.seed, min_candidates=cfg.examples.min_candidates)
    align_stats = None
    general: dict = {}  # general alignment sources: {name: (texts, teacher embeddings)}
    align_texts: list[str] = []
    align_emb = None
    if cfg.losses.align != "none":
        from embed_kd.training.align_mix import general_align_embeddings, source_names

        q_emb = None
        if "queries" in source_names(cfg.examples.align_texts):  # rank 0 first (it fills the cache), then the others
            with dist.step("teacher query embeddings"):
                if world.is_main:
                    q_emb = query_embeddings(teacher, dataset.queries, train_qids, cache=cache,
                                                     show_progress=show_progress)
            if not world.is_main:
                q_emb = query_embeddings(teacher, dataset.queries, train_qids, cache=cache,
                                                 show_progress=False)
        with dist.step("teacher embeddings of general alignment texts"):  # stsb-train, file:PATH (same order)
            general = general_align_embeddings(teacher, cfg.examples.align_texts, cache=cache,
                                               show_progress=show_progress) if world.is_main else None
        if not world.is_main:
            general = general_align_embeddings(teacher, cfg.examples.align_texts, cache=cache, show_progress=False)
        align_texts, align_emb, align_stats = build_align_examples(
            dataset, doc_emb, doc_ids, train_qids, q_emb, texts=cfg.examples.align_texts,
            max_texts=cfg.examples.max_align_texts, seed=cfg.train.seed, general=general)

    static_texts = None
    if cfg.student.type == "static":  # what its SIF weighting counts: the corpus and the train queries
        static_texts = [dataset.doc_text(d) for d in doc_ids] + [dataset.queries[q] for q in train_qids]
    student = build_student(cfg.student, teacher, seed=cfg.train.seed, static=cfg.static, texts=static_texts,
                            cache=cache)
    init_desc, init_fp = cfg.student.describe(), fingerprint_model(student)
    if cfg.student.type == "static" and not cfg.student.model:
        init_desc += f" ({cfg.static.describe()})"
    student_dim = student.get_embedding_dimension()
    teacher_dim = teacher.get_embedding_dimension()
    if student_dim != teacher_dim:
        raise EmbedKDError(f"student makes {student_dim}-dim vectors, the teacher {teacher_dim}-dim; set "
                           f"student.projection_dim={teacher_dim} so it can query the teacher's documents")

    datasets, losses = {}, _build_losses(cfg, student, doc_emb)
    if "score" in losses:
        datasets["score"] = score_ex.dataset()
    if "align" in losses:
        datasets["align"] = Dataset.from_dict({"text": align_texts, "label": align_emb.tolist()})
    if len(datasets) == 1:
        (name,) = datasets
        train_dataset, loss = datasets[name], losses[name]
    else:
        train_dataset, loss = datasets, losses

    evaluator = None
    if dev_qids and not dataset.qrels:  # no judgments: the dev slice measures loyalty to the teacher
        from embed_kd.training.dev_loyalty import DevLoyaltyEvaluator

        evaluator = DevLoyaltyEvaluator({q: dataset.queries[q] for q in dev_qids},
                                        query_embeddings(teacher, dataset.queries, dev_qids, cache=cache,
                                                                 show_progress=False),
                                        doc_emb, doc_ids, normalize=normalize)
    elif dev_qids:
        evaluator = DevRetrievalEvaluator({q: dataset.queries[q] for q in dev_qids},
                                          {q: dataset.qrels[q] for q in dev_qids}, doc_emb, doc_ids,
                                          normalize=normalize)
    T = cfg.train
    ckpt_dir = work / "checkpoints"
    args = SentenceTransformerTrainingArguments(
        **trainer_arguments(cfg, ckpt_dir, evaluate=evaluator is not None, show_progress=show_progress and world.is_main,
                            device=run.device, precision=run.precision),
        multi_dataset_batch_sampler=T.sampler,
    )
    pin_trainer_device(args, run.device)  # one process, one GPU: the selected one (no DataParallel)
    budget = _time_budget_callback(T.max_time_s)
    trainer = SentenceTransformerTrainer(model=student, args=args, train_dataset=train_dataset, loss=loss,
                                         evaluator=evaluator, callbacks=[budget])
    quiet_trainer_logs(trainer)
    from embed_kd.training.finite_guard import NonFiniteLossError, diverged_message, guard_losses

    guard_losses(losses, step=lambda: trainer.state.global_step)  # a NaN/inf loss stops the run (no output)
    cfg_fp = cfg.to_dict()
    cfg_fp.get("train", {}).pop("threads", None)  # threads change the speed, not what is learnt
    cfg_fp.pop("device", None)  # so does the device (a run resumes on another GPU); precision stays
    inputs = {"config": cfg_fp, "limit_queries": limit_queries, "limit_docs": limit_docs,
              "dataset": full_fps, "scores": None if store is None else store.manifest.get("config_fingerprint"),
              "teacher": fingerprint_model(teacher), "student_init": init_fp}
    if general:  # the texts of stsb-train / file: sources (a file edited between runs is another run)
        inputs["align_sources"] = {k: st["fingerprint"] for k in general for st in align_stats["sources"]
                                   if st["source"] == k}
    from embed_kd.data.fingerprint import fingerprint_json

    run_fp = fingerprint_json(inputs)
    resume_from = None
    with dist.step("preparing the work folder"):  # rank 0 checks / cleans OUTPUT.work, the others follow
        if world.is_main:
            if resume:
                if not work.is_dir():
                    raise EmbedKDError(f"--resume: no interrupted run of {out} ({work} does not exist)")
                _check_work(work, run_fp, inputs, resume=True)
                ck = complete_checkpoints(ckpt_dir, remove_partial=True)
                if ck:
                    resume_from = str(ck[-1])
                    logger.info("resuming from %s", resume_from)
                else:
                    logger.warning("--resume: %s holds no complete checkpoint (interrupted before the first save): "
                                   "starting from step 0", work)
                    shutil.rmtree(ckpt_dir, ignore_errors=True)
            else:
                _check_work(work, run_fp, inputs, resume=False)
    resume_from = dist.broadcast_object(resume_from)
    t_train = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    except NonFiniteLossError as exc:
        if world.is_main:  # removed, not resumable: the same config would diverge again
            from embed_kd.io import remove_owned
            from embed_kd.training.prologue import WORK_ARTIFACT

            remove_owned(work, WORK_ARTIFACT)
        raise NonFiniteLossError(diverged_message(exc, work=str(work), lr=cfg.train.lr)) from None
    train_time_s = time.perf_counter() - t_train
    step = trainer.state.global_step
    manifest = None
    with dist.step("writing the student"):
        if world.is_main:  # the other processes hold the same weights (DDP); one writes
            manifest = _finish(**locals())
    return dist.broadcast_object(manifest)


def _machine() -> dict:
    """The machine the run trained on, its load at the end (embed_kd.cpu.machine_info)."""
    import torch

    from embed_kd.cpu import machine_info

    return machine_info(threads=torch.get_num_threads())


def _finish(*, cfg, out, work, overwrite, ckpt_dir, step, student, evaluator, teacher, dataset, full_fps, run,
            train_qids, dev_qids, store, init_desc, init_fp, student_dim, score_ex, align_stats, trainer,
            train_time_s, t_start, budget, config_file, overrides, world, **_) -> dict:
    """Rank 0 after training: final checkpoint, averaging, dev metrics, manifest, atomic output."""
    from embed_kd.device import device_info
    from embed_kd.io import atomic_dir, atomic_write_json, versions
    from embed_kd.models import fingerprint_model, model_info
    from embed_kd.training.averaging import finish_checkpoints
    from embed_kd.training.prologue import OUTPUT_ARTIFACT

    ckpts, averaged, dev_final = finish_checkpoints(student, ckpt_dir, step, cfg.average, evaluator)

    teacher_info = model_info(teacher)
    auto = getattr(student[0], "auto_model", None)
    manifest = {
        "schema": SCHEMA,
        "created": utc_now(),
        "config": cfg.to_dict(), "config_file": config_file, "overrides": list(overrides or []),
        "dataset": {"name": dataset.name, "path": str(dataset.path), "split": dataset.split, **full_fps,
                    "n_queries": len(dataset.queries), "train_queries": len(train_qids), "dev_queries": dev_qids,
                    "notes": dataset.notes},
        "scores": None if store is None else {
            "path": str(store.path), "config_fingerprint": store.manifest.get("config_fingerprint"),
            "teachers": store.manifest.get("teachers"), "ensemble": store.manifest.get("ensemble"),
            "split": store.manifest["dataset"].get("split")},
        "teacher": teacher_info,
        "student": {"init": init_desc, "init_fingerprint": init_fp, "fingerprint": fingerprint_model(student),
                    "dim": student_dim, "type": cfg.student.type,
                    "max_seq_length": None if student.max_seq_length == float("inf") else student.max_seq_length,
                    "layers": getattr(getattr(auto, "config", None), "num_hidden_layers", None),
                    "params": int(sum(p.numel() for p in student.parameters()))},
        "examples": {"score": score_ex.stats if score_ex else None, "align": align_stats},
        "training": {"global_step": step, "epochs": trainer.state.epoch, "train_time_s": train_time_s,
                     "world_size": world.world_size, "global_batch_size": cfg.train.batch_size * world.world_size,
                     "total_time_s": time.perf_counter() - t_start,
                     "stopped_by_time_budget": budget.stopped, "log_history": trainer.state.log_history,
                     "precision": run.precision},
        "averaging": {"enabled": cfg.average.enabled, "checkpoints": [p.name for p in averaged],
                      "applied": bool(averaged)},
        "dev": {"metrics_final": dev_final} if dev_final else None,
        "device": device_info(run.device),
        "versions": versions(),
        "git": git_info(),
        "machine": _machine(),
    }
    from embed_kd.numeric import check_finite_weights

    check_finite_weights(student, f"{out}: the trained student")  # never publish NaN weights
    with atomic_dir(out, overwrite=overwrite, artifact=OUTPUT_ARTIFACT) as tmp:
        student.save(str(tmp))
        keep = tmp / "checkpoints"
        keep.mkdir()
        junk = shutil.ignore_patterns("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json",
                                      "training_args.bin")
        for ck in ckpts:  # hard links: OUTPUT.work stays whole (resumable) until OUTPUT is in place
            shutil.copytree(ck, keep / ck.name, ignore=junk, copy_function=_link_or_copy)
        atomic_write_json(tmp / MANIFEST, manifest)
        from embed_kd.cards import write_model_card

        write_model_card(tmp, manifest=manifest, name=out.name)  # README.md: recipe, data, usage
        from embed_kd.students.asym import build_asym

        build_asym(student, teacher, tmp / "asym", name=f"{out.name}-asym")  # one Router model: student × teacher
    shutil.rmtree(work, ignore_errors=True)
    logger.info("student saved to %s (%d steps, %.0fs training)", out, step, train_time_s)
    return manifest
