"""The start of a training run, shared by dense and sparse students (:func:`embed_kd.training.run.train_student`,
:func:`embed_kd.training.sparse_run.train_sparse_student`): everything between a validated config and
the first model load. The rest of the run's life is :mod:`embed_kd.training.lifecycle`.

:func:`prepare_training_run`, in order:

1. joins the launcher's process group (``WORLD_SIZE > 1``; one process otherwise);
2. refuses an existing ``OUTPUT`` (unless ``--overwrite``), an ``OUTPUT`` that could not be written
   (read-only or not a folder — now, not after training), and an interrupted run's ``OUTPUT.work``
   unless ``--resume`` (continue it) or ``--overwrite`` (rank 0 removes it). Both follow the
   ownership rule (:func:`embed_kd.io.claim_output`): ``OUTPUT`` is replaced only when it is an
   embed-kd student (``embed_kd_train.json``, :data:`OUTPUT_ARTIFACT`), ``OUTPUT.work`` is resumed
   or removed only when it is an embed-kd work folder (``run.json``, :data:`WORK_ARTIFACT`) —
   anything else is refused even with ``--overwrite``; ``--resume`` without an ``OUTPUT.work`` is refused;
3. refuses ``split: test`` (test queries would leak into the benchmark); selects the device
   (``device:`` / ``--device``, :func:`embed_kd.device.select_device`) and resolves
   ``train.precision`` for it (half precision on the CPU refused);
4. sets torch's threads (``train.threads``) and seeds ``random`` / numpy / torch (``train.seed``);
5. loads the dataset, fingerprints its full corpus, queries and qrels (what the score store and the
   manifest are checked against), then slices it for ``--limit-queries`` / ``--limit-docs``.

Writes nothing (it may remove a previous ``OUTPUT.work`` under ``--overwrite``).
"""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embed_kd import distributed as dist
from embed_kd.data.fingerprint import fingerprint_corpus, fingerprint_qrels, fingerprint_queries
from embed_kd.device import current_device, select_device, trainer_device_arguments, training_precision
from embed_kd.errors import EmbedKDError
from embed_kd.io import Artifact, check_writable, claim_output, remove_owned
from embed_kd.training.config import TrainConfig
from embed_kd.training.inputs import load_training_dataset

if TYPE_CHECKING:
    from embed_kd.data.beir import BeirDataset


def _checkpoints_only(folder: Path) -> bool:
    """A work folder written before ``run.json`` marked it (sparse runs): only ``checkpoints/checkpoint-N``."""
    entries = list(folder.iterdir())
    if [e.name for e in entries] != ["checkpoints"] or not entries[0].is_dir():
        return False
    return all(c.is_dir() and c.name.startswith("checkpoint-") for c in entries[0].iterdir())


#: a student folder ``embed-kd train`` wrote (dense or sparse): what ``--overwrite`` may replace
OUTPUT_ARTIFACT = Artifact("embed-kd/train-run@1", "embed_kd_train.json", "student (train output)")
#: ``OUTPUT.work`` of an interrupted run: what ``--resume`` continues and ``--overwrite`` removes
WORK_ARTIFACT = Artifact("embed-kd/train-work@1", "run.json", "interrupted-run work folder",
                         recognise=_checkpoints_only)


@dataclass(frozen=True)
class TrainingRun:
    """What :func:`prepare_training_run` hands the trainer.

    ======== ==============================================================================
    out      the output folder (``cfg.output``)
    work     ``OUTPUT.work``: checkpoints and ``run.json`` while training
    world    this process's place in the launch (:class:`embed_kd.distributed.World`)
    dataset  the BEIR dataset of ``cfg.split``, sliced when ``sliced``
    full_fps ``{"corpus_fingerprint", "queries_fingerprint", "qrels_fingerprint"}`` of the full dataset
    sliced   whether ``--limit-queries`` / ``--limit-docs`` cut the dataset (a smoke run)
    t_start  ``time.perf_counter()`` when the run started (for ``training.total_time_s``)
    device   the device the run trains on (``cpu``, ``cuda:N``, ``mps``)
    precision the resolved ``train.precision``: ``fp32``, ``bf16`` or ``fp16``
    limit_queries, limit_docs  ``--limit-queries`` / ``--limit-docs`` (None: the whole dataset)
    ======== ==============================================================================
    """

    out: Path
    work: Path
    world: dist.World
    dataset: BeirDataset
    full_fps: dict
    sliced: bool
    t_start: float
    device: str = "cpu"
    precision: str = "fp32"
    limit_queries: int | None = None
    limit_docs: int | None = None


def work_folder(output: str | Path) -> Path:
    """``OUTPUT.work``: where a run of ``output`` keeps its checkpoints until it is published."""
    out = Path(output)
    return out.with_name(out.name + ".work")


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy and torch with ``seed`` (numpy's wants it below 2**32)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def prepare_training_run(cfg: TrainConfig, *, overwrite: bool = False, resume: bool = False,
                         limit_queries: int | None = None, limit_docs: int | None = None) -> TrainingRun:
    """Check the output, seed, load and fingerprint the data (see the module docstring); ``cfg`` is validated.

    Raises :class:`embed_kd.errors.EmbedKDError` (an existing output, an interrupted run without
    ``--resume`` / ``--overwrite``, the test split), :class:`embed_kd.errors.ArtifactError` (an
    unwritable output) or the data loader's errors, before any model is loaded. Under ``torchrun`` every process
    agrees on the outcome of the checks (:func:`embed_kd.distributed.step`).
    """
    import torch

    world = dist.init()  # WORLD_SIZE > 1 under torchrun / accelerate launch
    out = Path(cfg.output)
    work = work_folder(out)
    with dist.step("checking the output"):
        claim_output(out, OUTPUT_ARTIFACT, overwrite=overwrite)
        check_writable(out)  # a read-only or missing folder fails now, not after training
        # OUTPUT.work is resumed, removed, and removed again after success: it must be embed-kd's
        work_exists = claim_output(work, WORK_ARTIFACT, overwrite=True)
        if work_exists and not resume and not overwrite:
            raise EmbedKDError(f"{work}: an interrupted run of this output exists; pass --resume to continue it "
                               "or --overwrite to start over")
        if resume and not work.is_dir():
            raise EmbedKDError(f"--resume: no interrupted run of {out} ({work} does not exist)")
    with dist.step("clearing the previous run"):
        if work.exists() and not resume and world.is_main:
            if not remove_owned(work, WORK_ARTIFACT):
                shutil.rmtree(work)  # free: empty, or only the temporaries of a run killed before run.json
    if cfg.split == "test":
        raise EmbedKDError("config: split 'test' — students are trained on train queries only (test queries "
                           "would leak into the benchmark)")

    device = select_device(cfg.device, what="device")
    precision = training_precision(cfg.train.precision, device)
    if cfg.train.threads:
        torch.set_num_threads(int(cfg.train.threads))
    seed_everything(cfg.train.seed)
    t_start = time.perf_counter()

    dataset = load_training_dataset(cfg)  # data / corpus / queries, or an import's stored texts
    if cfg.student.type == "sparse" and not dataset.qrels:
        raise EmbedKDError("a sparse student's dev slice re-ranks judged queries; train it on a judged split "
                           "(--data D --split S), or train a dense student on unjudged queries")
    full_fps = {"corpus_fingerprint": fingerprint_corpus(dataset.corpus),
                "queries_fingerprint": fingerprint_queries(dataset.queries),
                "qrels_fingerprint": fingerprint_qrels(dataset.qrels)}
    sliced = bool(limit_queries or limit_docs)
    if sliced:
        dataset = dataset.sliced(limit_queries, limit_docs)
    return TrainingRun(out=out, work=work, world=world, dataset=dataset, full_fps=full_fps, sliced=sliced,
                       t_start=t_start, device=device, precision=precision, limit_queries=limit_queries,
                       limit_docs=limit_docs)


def trainer_arguments(cfg: TrainConfig, ckpt_dir: Path, *, evaluate: bool, show_progress: bool,
                      device: str | None = None, precision: str | None = None) -> dict:
    """Keyword arguments shared by the dense and sparse ``*TrainingArguments`` (from ``cfg.train``).

    Checkpoints every ``save_steps`` into ``ckpt_dir``, keeping enough for weight averaging plus one;
    evaluates every ``eval_steps`` when there is a dev evaluator. ``device`` (default: the selected
    one, :func:`embed_kd.device.current_device`) and ``precision`` (default: ``train.precision``
    resolved for it) give ``use_cpu`` / ``bf16`` / ``fp16``. The caller adds what is its own
    (sampler, router mapping).

    >>> kw = trainer_arguments(TrainConfig(), Path("ckpt"), evaluate=False, show_progress=False, device="cpu")
    >>> kw["eval_strategy"], kw["report_to"], kw["disable_tqdm"], kw["use_cpu"], kw["bf16"], kw["fp16"]
    ('no', 'none', True, True, False, False)
    """
    device = device or current_device()
    precision = precision or training_precision(cfg.train.precision, device)
    T = cfg.train
    return dict(
        output_dir=str(ckpt_dir), num_train_epochs=T.epochs, max_steps=T.max_steps,
        per_device_train_batch_size=T.batch_size, learning_rate=T.lr, warmup_ratio=T.warmup_ratio,
        weight_decay=T.weight_decay, seed=T.seed, data_seed=T.seed, save_strategy="steps", save_steps=T.save_steps,
        save_total_limit=max(cfg.average.last if cfg.average.enabled else 1, 1) + 1,
        eval_strategy="steps" if evaluate else "no", eval_steps=T.eval_steps if evaluate else None,
        logging_steps=T.logging_steps, report_to="none", disable_tqdm=not show_progress,
        dataloader_drop_last=False, **trainer_device_arguments(device, precision),
    )


def quiet_trainer_logs(trainer) -> bool:
    """Under ``-q`` (the ``embed_kd`` logger above INFO): keep the trainer's progress bar, drop the
    dictionaries it prints every ``logging_steps`` (``{'loss': ..., 'grad_norm': ...}``; they stay in
    ``trainer.state.log_history`` and the run manifest). Returns whether it changed anything.
    """
    import logging

    if logging.getLogger("embed_kd").getEffectiveLevel() <= logging.INFO:
        return False
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class BarOnlyProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    changed = trainer.pop_callback(PrinterCallback) is not None  # --no-progress: the logs would print
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(BarOnlyProgress)
        changed = True
    return changed
