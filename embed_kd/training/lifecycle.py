"""The life of one training run, the same for every student type: the one owner of the work folder,
resume, the time budget, averaging, the manifest, the card and the atomic output.

A driver (:func:`embed_kd.training.run.train_student` for dense and static students,
:func:`embed_kd.training.sparse_run.train_sparse_student` for SPLADE students) supplies only what is
its own — the student, the loss, the trainer and arguments classes and its extra manifest fields —
and hands the rest to a :class:`RunLifecycle` built on the run's :class:`~embed_kd.training.prologue.TrainingRun`:

1. :meth:`RunLifecycle.trainer_for` builds the trainer on the shared arguments (checkpoints in
   ``OUTPUT.work/checkpoints``, :func:`~embed_kd.training.prologue.trainer_arguments`), pinned to
   the selected device, with the time budget callback (``train.max_time_s``, agreed on by every
   process under ``torchrun``);
2. :meth:`RunLifecycle.train` guards the losses (a NaN/inf loss stops the run, removes
   ``OUTPUT.work`` and writes nothing, :mod:`embed_kd.training.finite_guard`), writes or checks
   ``OUTPUT.work/run.json`` and trains — from the newest *complete* checkpoint under ``--resume``;
3. :meth:`RunLifecycle.finish_checkpoints` saves the final checkpoint and averages the last ones
   (:mod:`embed_kd.training.averaging`);
4. :meth:`RunLifecycle.manifest` writes the manifest fields every run has; the driver adds its own;
5. :meth:`RunLifecycle.publish` checks the weights are finite and writes ``OUTPUT`` atomically
   (the model, the kept checkpoints' weights, ``embed_kd_train.json``, ``README.md`` and the
   driver's extra files), then removes ``OUTPUT.work``.

``OUTPUT.work/run.json`` (schema ``embed-kd/train-work@1``) fingerprints what decides the run:
``{"schema", "fingerprint", "inputs": {"config" (without train.threads and device), "limit_queries",
"limit_docs", "dataset" (corpus/queries/qrels fingerprints), "scores" (config_fingerprint or null),
"teacher" (fingerprint or null), "student_init" (fingerprint), and the driver's own inputs (e.g.
"align_sources")}}``. ``--resume`` refuses a work folder made with other inputs, resumes from the
newest complete checkpoint (one whose ``trainer_state.json`` — the trainer's last write — exists;
a checkpoint cut short by a kill is removed) through the trainer's own ``resume_from_checkpoint``
(weights, optimizer, scheduler, RNG states, data position), and starts from step 0 when the run
was killed before its first checkpoint.

The run manifest's schema (``embed-kd/train-run@1``) is in :mod:`embed_kd.training.run` and
docs/formats.md.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from embed_kd import distributed as dist
from embed_kd.cards import write_model_card
from embed_kd.cpu import machine_info
from embed_kd.data.fingerprint import fingerprint_json
from embed_kd.device import device_info, pin_trainer_device
from embed_kd.errors import ArtifactError
from embed_kd.io import atomic_dir, atomic_write_json, read_json, remove_owned, utc_now, versions
from embed_kd.numeric import check_finite_weights
from embed_kd.training import averaging
from embed_kd.training.config import TrainConfig
from embed_kd.training.finite_guard import NonFiniteLossError, diverged_message, guard_losses
from embed_kd.training.prologue import (OUTPUT_ARTIFACT, WORK_ARTIFACT, TrainingRun, quiet_trainer_logs,
                                        trainer_arguments)

logger = logging.getLogger(__name__)
SCHEMA = "embed-kd/train-run@1"
MANIFEST = "embed_kd_train.json"
WORK_SCHEMA = "embed-kd/train-work@1"
WORK_MANIFEST = "run.json"
_TRAINER_STATE = "trainer_state.json"  # the last file the trainer writes into a checkpoint
#: what a checkpoint keeps in OUTPUT/checkpoints/: its weights, not the state to resume from
_RESUME_STATE = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin")


def complete_checkpoints(ckpt_dir: Path, *, remove_partial: bool = False) -> list[Path]:
    """The checkpoints of ``ckpt_dir`` the trainer finished writing (``trainer_state.json`` present),
    by step; with ``remove_partial`` the others (a save cut short by a kill) are deleted."""
    done = []
    for ck in averaging.list_checkpoints(ckpt_dir):
        if (ck / _TRAINER_STATE).is_file():
            done.append(ck)
        elif remove_partial:
            logger.warning("%s: incomplete checkpoint (interrupted while saving): removing it", ck)
            shutil.rmtree(ck, ignore_errors=True)
    return done


def check_work(work: Path, run_fp: str, inputs: dict, resume: bool) -> None:
    """Write ``work/run.json`` for a new run; on ``resume`` refuse a work folder made with other inputs."""
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


def deciding_config(config: dict) -> dict:
    """A config as far as it decides the trained weights: without ``train.threads`` and ``device``
    (they change only the speed; a run resumes on another GPU, its precision stays).

    >>> deciding_config({"device": "cuda:1", "train": {"threads": 4, "lr": 0.1}, "output": "o"})
    {'train': {'lr': 0.1}, 'output': 'o'}
    """
    config = {k: v for k, v in config.items() if k != "device"}
    config["train"] = {k: v for k, v in (config.get("train") or {}).items() if k != "threads"}
    return config


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


def time_budget_callback(max_time_s: float | None, *, evaluate: bool = False):
    """A ``TrainerCallback`` that stops training (and saves; with ``evaluate`` also evaluates, for a
    best-checkpoint choice) once ``max_time_s`` seconds have passed since ``on_train_begin``;
    ``.stopped`` tells whether it did. Under ``torchrun`` every process stops at the same step (or
    DDP would hang). Used by every trainer: dense, sparse and ``train-teacher``."""
    from transformers import TrainerCallback

    class TimeBudget(TrainerCallback):
        def __init__(self):
            self.start = None
            self.stopped = False

        def on_train_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            over = bool(max_time_s and self.start and time.perf_counter() - self.start > max_time_s)
            if max_time_s and dist.is_initialized():
                over = any(dist.all_gather_object(over))
            if over:
                logger.warning("time budget of %.0fs reached at step %d: stopping", max_time_s, state.global_step)
                self.stopped = True
                control.should_training_stop = True
                control.should_save = True
                control.should_evaluate = control.should_evaluate or evaluate
            return control

    return TimeBudget()


def _machine() -> dict:
    """The machine the run trained on, its load at the end (embed_kd.cpu.machine_info)."""
    import torch

    return machine_info(threads=torch.get_num_threads())


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def scores_block(store) -> dict | None:
    """The manifest's ``scores`` block: where the teacher scores came from (null without a store)."""
    if store is None:
        return None
    return {"path": str(store.path), "config_fingerprint": store.manifest.get("config_fingerprint"),
            "teachers": store.manifest.get("teachers"), "ensemble": store.manifest.get("ensemble"),
            "split": store.manifest["dataset"].get("split")}


class RunLifecycle:
    """One training run from the built trainer to the published output (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, run: TrainingRun, *, resume: bool = False, show_progress: bool = True):
        self.cfg, self.run, self.resume, self.show_progress = cfg, run, resume, show_progress
        self.ckpt_dir = run.work / "checkpoints"
        self.budget = time_budget_callback(cfg.train.max_time_s)
        self.trainer = None
        self.train_time_s = 0.0

    # -- 1. the trainer ------------------------------------------------------------------------
    def trainer_for(self, trainer_cls, args_cls, *, model, train_dataset, loss, evaluator=None,
                    args_extra: dict | None = None, callbacks: tuple = (), **trainer_kwargs):
        """``trainer_cls(model, args_cls(shared arguments + args_extra), ...)`` with the time budget."""
        run = self.run
        args = args_cls(**trainer_arguments(self.cfg, self.ckpt_dir, evaluate=evaluator is not None,
                                            show_progress=self.show_progress and run.world.is_main,
                                            device=run.device, precision=run.precision),
                        **(args_extra or {}))
        pin_trainer_device(args, run.device)  # one process, one GPU: the selected one (no DataParallel)
        self.trainer = trainer_cls(model=model, args=args, train_dataset=train_dataset, loss=loss,
                                   evaluator=evaluator, callbacks=[*callbacks, self.budget], **trainer_kwargs)
        quiet_trainer_logs(self.trainer)
        return self.trainer

    # -- 2. training ---------------------------------------------------------------------------
    def inputs(self, *, store, teacher_fp: str | None, student_init_fp: str, **extra) -> dict:
        """What decides the run (``run.json``'s ``inputs``): threads and the device only change the speed."""
        return {"config": deciding_config(self.cfg.to_dict()), "limit_queries": self.run.limit_queries, "limit_docs": self.run.limit_docs,
                "dataset": self.run.full_fps,
                "scores": None if store is None else store.manifest.get("config_fingerprint"),
                "teacher": teacher_fp, "student_init": student_init_fp, **extra}

    def _resume_point(self, inputs: dict) -> str | None:
        """Rank 0 writes or checks ``run.json`` and picks the checkpoint to resume from; all agree."""
        run, resume_from = self.run, None
        with dist.step("preparing the work folder"):  # rank 0 checks / cleans OUTPUT.work, the others follow
            if run.world.is_main:
                check_work(run.work, fingerprint_json(inputs), inputs, resume=self.resume)
                if self.resume:
                    ck = complete_checkpoints(self.ckpt_dir, remove_partial=True)
                    if ck:
                        resume_from = str(ck[-1])
                        logger.info("resuming from %s", resume_from)
                    else:
                        logger.warning("--resume: %s holds no complete checkpoint (interrupted before the first "
                                       "save): starting from step 0", run.work)
                        shutil.rmtree(self.ckpt_dir, ignore_errors=True)
        return dist.broadcast_object(resume_from)

    def train(self, *, guard, inputs: dict, steps: bool = True) -> None:
        """Guard ``guard`` (the loss modules), prepare ``OUTPUT.work`` and train (unless ``steps`` is
        False: a run with nothing to train, e.g. a sparse term-bias stage alone)."""
        trainer = self.trainer
        guard_losses(guard, step=lambda: trainer.state.global_step)
        resume_from = self._resume_point(inputs)
        t = time.perf_counter()
        if steps:
            try:
                trainer.train(resume_from_checkpoint=resume_from)
            except NonFiniteLossError as exc:
                if self.run.world.is_main:  # removed, not resumable: the same config would diverge again
                    remove_owned(self.run.work, WORK_ARTIFACT)
                raise NonFiniteLossError(diverged_message(exc, work=str(self.run.work), lr=self.cfg.train.lr)) from None
        self.train_time_s = time.perf_counter() - t

    @property
    def step(self) -> int:
        return self.trainer.state.global_step

    # -- 3. checkpoints ------------------------------------------------------------------------
    def finish_checkpoints(self, student, evaluator=None):
        """``(checkpoints, averaged, dev metrics | None)`` (:func:`embed_kd.training.averaging.finish_checkpoints`)."""
        return averaging.finish_checkpoints(student, self.ckpt_dir, self.step, self.cfg.average, evaluator)

    # -- 4. the manifest -----------------------------------------------------------------------
    def manifest(self, *, teacher: dict | None, student: dict, examples: dict, store, train_qids: list[str],
                 dev_qids: list[str], averaged: list[Path], dev: dict | None, config_file: str | None,
                 overrides: list[str] | None, training: dict | None = None, **extra) -> dict:
        """The run manifest (schema in :mod:`embed_kd.training.run`); ``extra`` blocks go after ``dev``."""
        cfg, run, trainer, world = self.cfg, self.run, self.trainer, self.run.world
        ds = run.dataset
        return {
            "schema": SCHEMA,
            "created": utc_now(),
            "config": cfg.to_dict(), "config_file": config_file, "overrides": list(overrides or []),
            "dataset": {"name": ds.name, "path": str(ds.path), "split": ds.split, **run.full_fps,
                        "n_queries": len(ds.queries), "train_queries": len(train_qids), "dev_queries": dev_qids,
                        "limit_queries": run.limit_queries, "limit_docs": run.limit_docs, "notes": ds.notes},
            "scores": scores_block(store),
            "teacher": teacher,
            "student": student,
            "examples": examples,
            "training": {"global_step": self.step, "epochs": trainer.state.epoch, "train_time_s": self.train_time_s,
                         "world_size": world.world_size,
                         "global_batch_size": cfg.train.batch_size * world.world_size,
                         "total_time_s": time.perf_counter() - run.t_start,
                         "stopped_by_time_budget": self.budget.stopped, "log_history": trainer.state.log_history,
                         "precision": run.precision, **(training or {})},
            "averaging": {"enabled": cfg.average.enabled, "checkpoints": [p.name for p in averaged],
                          "applied": bool(averaged)},
            "dev": dev,
            **extra,
            "device": device_info(run.device),
            "versions": versions(),
            "git": git_info(),
            "machine": _machine(),
        }

    # -- 5. the output -------------------------------------------------------------------------
    def publish(self, student, manifest: dict, checkpoints: list[Path], *, overwrite: bool, what: str = "student",
                extra: Callable[[Path], Any] | None = None) -> None:
        """Write ``OUTPUT`` atomically (model, kept checkpoints' weights, manifest, card, ``extra(tmp)``),
        then remove ``OUTPUT.work``. Rank 0 only."""
        out = self.run.out
        check_finite_weights(student, f"{out}: the trained {what}")  # never publish NaN weights
        with atomic_dir(out, overwrite=overwrite, artifact=OUTPUT_ARTIFACT) as tmp:
            student.save(str(tmp))
            keep = tmp / "checkpoints"
            keep.mkdir()
            for ck in checkpoints:  # hard links: OUTPUT.work stays whole (resumable) until OUTPUT is in place
                shutil.copytree(ck, keep / ck.name, ignore=shutil.ignore_patterns(*_RESUME_STATE),
                                copy_function=_link_or_copy)
            atomic_write_json(tmp / MANIFEST, manifest)
            write_model_card(tmp, manifest=manifest, name=out.name)  # README.md: recipe, data, usage
            if extra is not None:
                extra(tmp)
        shutil.rmtree(self.run.work, ignore_errors=True)
        logger.info("%s saved to %s (%d steps, %.0fs training)", what, out, self.step, self.train_time_s)

    def on_main(self, finish: Callable[[], dict]) -> dict:
        """Run ``finish`` (checkpoints, manifest, publish) on rank 0 — the other processes hold the
        same weights (DDP) — and hand its manifest to every process."""
        manifest = None
        with dist.step("writing the student"):
            if self.run.world.is_main:
                manifest = finish()
        return dist.broadcast_object(manifest)
