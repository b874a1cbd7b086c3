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

The run's life — ``OUTPUT.work/run.json`` and its input fingerprint (here with ``"teacher"`` and,
with a general alignment source, ``"align_sources"``: its texts' fingerprint), ``--resume`` from
the newest complete checkpoint, the time budget, averaging, the manifest, the card and the atomic
output — is :mod:`embed_kd.training.lifecycle`'s, shared with sparse students; this module supplies
the student, the losses, the examples and the dev evaluator.

Run manifest ``embed_kd_train.json`` (schema ``embed-kd/train-run@1``)::

    {
      "schema": "embed-kd/train-run@1",
      "created": ISO-8601 UTC,
      "config": the resolved TrainConfig (after the YAML file, CLI flags and --set overrides),
      "config_file": path or null, "overrides": ["key=value", ...],
      "dataset": {"name", "path", "split", "corpus_fingerprint", "queries_fingerprint",
                  "qrels_fingerprint", "n_queries", "train_queries", "dev_queries": [ids], "limit_queries",
                  "limit_docs", "notes"},
      "scores": null | {"path", "config_fingerprint", "teachers": [...], "ensemble", "split"},
      "teacher": {"spec", "fingerprint", "dim", "max_seq_length"},
      "student": {"init": description, "init_fingerprint", "fingerprint" (final), "dim", "type" (dense | static),
                  "max_seq_length", "layers", "params"},
      "examples": {"score": stats | null, "align": stats | null},   # align: per-source mix (training.align_mix)
      "training": {"global_step", "epochs", "train_time_s", "stopped_by_time_budget", "world_size", "precision",
                   "global_batch_size", "log_history": [trainer logs: loss per dataset, dev metrics, lr]},
      "averaging": {"enabled", "checkpoints": [names], "applied": bool},
      "dev": {"metrics_final": {...}} | null,
      "recipe", "phases": only for a config with phases (embed_kd.training.phases),
      "device": {"device", "type", "name"} (embed_kd.device.device_info: where it trained),
      "versions": {...}, "git": {"commit", "dirty"},
      "machine": {"cpu", "arch", "cores", "flags": {avx2, avx512f, ...: bool}, "threads", "load_avg": [1, 5,
                  15 min] at the end of the run, "commit"} (embed_kd.cpu.machine_info)
    }
"""

from __future__ import annotations

import logging

import numpy as np

from embed_kd import distributed as dist
from embed_kd.encode import uses_cosine
from embed_kd.errors import EmbedKDError
from embed_kd.index.cache import EmbeddingCache
from embed_kd.index.encoding import encode_corpus, query_embeddings
from embed_kd.models import fingerprint_model, load_sentence_transformer, model_info
from embed_kd.students.asym import build_asym
from embed_kd.students.build import build_student
from embed_kd.training.align_mix import general_align_embeddings, source_names
from embed_kd.training.config import TrainConfig
from embed_kd.training.data import build_align_examples, build_score_examples, load_training_scores, split_dev
from embed_kd.training.lifecycle import RunLifecycle
from embed_kd.training.margin_examples import build_margin_examples
from embed_kd.training.prologue import prepare_training_run

logger = logging.getLogger(__name__)


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


def _score_examples(cfg: TrainConfig, store, by_query, dataset, train_qids, doc_row, sliced: bool):
    """Score examples from the store's candidates (imported margins are trained on as margins)."""
    if by_query is None:
        return None
    E = cfg.examples
    common = dict(negatives=E.negatives, sampling=E.sampling, rounds=E.rounds, score_norm=E.score_norm,
                  documents=cfg.losses.score_documents, doc_row=doc_row, seed=cfg.train.seed)
    if store.score_kind == "margin":
        return build_margin_examples(store, dataset, train_qids, **common, keep_docs=dataset.corpus if sliced else None)
    return build_score_examples(by_query, dataset, train_qids, **common, min_candidates=E.min_candidates)


def _on_main_first(world, what: str, compute):
    """``compute(show_progress)`` on rank 0 first (it fills the shared cache), then on the others."""
    out = None
    with dist.step(what):
        if world.is_main:
            out = compute(True)
    return out if world.is_main else compute(False)


def _align_examples(cfg: TrainConfig, teacher, dataset, doc_emb, doc_ids, train_qids, cache, world,
                    show_progress: bool):
    """``(texts, teacher embeddings, stats, general sources)`` of the alignment loss."""
    E = cfg.examples
    q_emb = None
    if "queries" in source_names(E.align_texts) and train_qids:  # a corpus alone has no queries
        q_emb = _on_main_first(world, "teacher query embeddings", lambda progress: query_embeddings(
            teacher, dataset.queries, train_qids, cache=cache, show_progress=show_progress and progress))
    general = _on_main_first(  # stsb-train, file:PATH (same order on every rank)
        world, "teacher embeddings of general alignment texts", lambda progress: general_align_embeddings(
            teacher, E.align_texts, cache=cache, show_progress=show_progress and progress))
    texts, emb, stats = build_align_examples(dataset, doc_emb, doc_ids, train_qids, q_emb, texts=E.align_texts,
                                             max_texts=E.max_align_texts, seed=cfg.train.seed, general=general)
    return texts, emb, stats, general


def _dev_evaluator(dataset, dev_qids, teacher, doc_emb, doc_ids, cache, normalize: bool):
    """The dev slice: nDCG@10 against its judgments, or loyalty to the teacher without them."""
    if not dev_qids:
        return None
    queries = {q: dataset.queries[q] for q in dev_qids}
    if not dataset.qrels:
        from embed_kd.training.dev_loyalty import DevLoyaltyEvaluator

        return DevLoyaltyEvaluator(queries, query_embeddings(teacher, dataset.queries, dev_qids, cache=cache,
                                                             show_progress=False),
                                   doc_emb, doc_ids, normalize=normalize)
    from embed_kd.training.dev_eval import DevRetrievalEvaluator

    return DevRetrievalEvaluator(queries, {q: dataset.qrels[q] for q in dev_qids}, doc_emb, doc_ids,
                                 normalize=normalize)


def _student_block(cfg: TrainConfig, student, init_desc: str, init_fp: str) -> dict:
    auto = getattr(student[0], "auto_model", None)
    return {"init": init_desc, "init_fingerprint": init_fp, "fingerprint": fingerprint_model(student),
            "dim": student.get_embedding_dimension(), "type": cfg.student.type,
            "max_seq_length": None if student.max_seq_length == float("inf") else student.max_seq_length,
            "layers": getattr(getattr(auto, "config", None), "num_hidden_layers", None),
            "params": int(sum(p.numel() for p in student.parameters()))}


def train_student(cfg: TrainConfig, *, overwrite: bool = False, resume: bool = False, show_progress: bool = True,
                  cache_dir: str | None = None, limit_queries: int | None = None, limit_docs: int | None = None,
                  config_file: str | None = None, overrides: list[str] | None = None,
                  manifest_extra: dict | None = None) -> dict:
    """Run one training experiment; returns the run manifest (also written beside the model).

    ``manifest_extra``: blocks added to the manifest (:mod:`embed_kd.training.phases`: ``recipe``, ``phases``).

    A sparse student (``student.type: sparse``) is trained by :func:`embed_kd.training.sparse_run.train_sparse_student`."""
    if cfg.student.type == "sparse":  # a SPLADE student: same config and layout
        from embed_kd.training.sparse_run import train_sparse_student

        return train_sparse_student(cfg, overwrite=overwrite, resume=resume, show_progress=show_progress,
                                    cache_dir=cache_dir, limit_queries=limit_queries, limit_docs=limit_docs,
                                    config_file=config_file, overrides=overrides)
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    cfg.validate()
    run = prepare_training_run(cfg, overwrite=overwrite, resume=resume, limit_queries=limit_queries,
                               limit_docs=limit_docs)
    dataset, world = run.dataset, run.world
    store = by_query = None
    if cfg.losses.score != "none":
        store, by_query = load_training_scores(cfg, dataset, run.full_fps, run.sliced, stream=True)  # corpus scale

    teacher = load_sentence_transformer(cfg.teacher, role="train --teacher (the embedding teacher)")
    normalize = uses_cosine(teacher)
    cache = EmbeddingCache(cache_dir)
    doc_emb, doc_ids, _ = encode_corpus(teacher, dataset, cache=cache, normalize=normalize,
                                        show_progress=show_progress)
    train_qids, dev_qids = (split_dev(list(dataset.queries), cfg.examples.dev_queries, cfg.train.seed)
                            if dataset.queries else ([], []))  # a corpus alone: alignment on its texts
    score_ex = _score_examples(cfg, store, by_query, dataset, train_qids, {d: i for i, d in enumerate(doc_ids)},
                               run.sliced)
    align_texts, align_emb, align_stats, general = [], None, None, {}
    if cfg.losses.align != "none":
        align_texts, align_emb, align_stats, general = _align_examples(
            cfg, teacher, dataset, doc_emb, doc_ids, train_qids, cache, world, show_progress)

    static_texts = None
    if cfg.student.type == "static":  # what its SIF weighting counts: the corpus and the train queries
        static_texts = [dataset.doc_text(d) for d in doc_ids] + [dataset.queries[q] for q in train_qids]
    student = build_student(cfg.student, teacher, seed=cfg.train.seed, static=cfg.static, texts=static_texts,
                            cache=cache)
    init_desc, init_fp = cfg.student.describe(), fingerprint_model(student)
    if cfg.student.type == "static" and not cfg.student.model:
        init_desc += f" ({cfg.static.describe()})"
    student_dim, teacher_dim = student.get_embedding_dimension(), teacher.get_embedding_dimension()
    if student_dim != teacher_dim:
        raise EmbedKDError(f"student makes {student_dim}-dim vectors, the teacher {teacher_dim}-dim; set "
                           f"student.projection_dim={teacher_dim} so it can query the teacher's documents")

    datasets, losses = {}, _build_losses(cfg, student, doc_emb)
    if "score" in losses:
        datasets["score"] = score_ex.dataset()
    if "align" in losses:
        datasets["align"] = Dataset.from_dict({"text": align_texts, "label": align_emb.tolist()})
    single = len(datasets) == 1
    evaluator = _dev_evaluator(dataset, dev_qids, teacher, doc_emb, doc_ids, cache, normalize)

    life = RunLifecycle(cfg, run, resume=resume, show_progress=show_progress)
    life.trainer_for(SentenceTransformerTrainer, SentenceTransformerTrainingArguments, model=student,
                     train_dataset=next(iter(datasets.values())) if single else datasets,
                     loss=next(iter(losses.values())) if single else losses, evaluator=evaluator,
                     args_extra={"multi_dataset_batch_sampler": cfg.train.sampler})
    extra_inputs = {}
    if general:  # the texts of stsb-train / file: sources (a file edited between runs is another run)
        extra_inputs["align_sources"] = {k: st["fingerprint"] for k in general for st in align_stats["sources"]
                                         if st["source"] == k}
    life.train(guard=losses, inputs=life.inputs(store=store, teacher_fp=fingerprint_model(teacher),
                                                student_init_fp=init_fp, **extra_inputs))

    def finish() -> dict:
        ckpts, averaged, dev_final = life.finish_checkpoints(student, evaluator)
        manifest = life.manifest(
            teacher=model_info(teacher), student=_student_block(cfg, student, init_desc, init_fp),
            examples={"score": score_ex.stats if score_ex else None, "align": align_stats}, store=store,
            train_qids=train_qids, dev_qids=dev_qids, averaged=averaged,
            dev={"metrics_final": dev_final} if dev_final else None, config_file=config_file, overrides=overrides,
            **(manifest_extra or {}))
        life.publish(student, manifest, ckpts, overwrite=overwrite, what="student",  # + one Router model
                     extra=lambda tmp: build_asym(student, teacher, tmp / "asym", name=f"{run.out.name}-asym"))
        return manifest

    return life.on_main(finish)
