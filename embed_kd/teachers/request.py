"""``embed-kd score-teacher run`` as one library call: :func:`run_score_teacher` turns a
:class:`ScoreRequest` into a :class:`ScoreResult` (the score store at ``output``, written).

The policy the command used to hold lives here: the device (``--device`` / ``$EMBED_KD_DEVICE`` /
auto), the ensemble weights (``--weights``: inline or an ``embed-kd/ensemble-weights@1`` file, checked
against the teachers' names and ``--ensemble``), the inputs (a BEIR split, or ``--queries`` /
``--corpus`` files), one process or a ``torchrun`` / ``accelerate launch`` group
(:func:`~embed_kd.teachers.parallel.score_teacher_launched`), and what an interruption keeps: a
Ctrl-C raises :class:`ScoringInterrupted` naming the folder that holds the committed chunks (the
store, or ``OUT.parts`` under a launcher), which a rerun of the same request resumes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from embed_kd import distributed as dist
from embed_kd.data.inputs import load_inputs
from embed_kd.device import select_device
from embed_kd.teachers.combine import ensemble_weights
from embed_kd.teachers.parallel import parts_folder, score_teacher_launched
from embed_kd.teachers.scorers import parse_teacher_spec
from embed_kd.teachers.scoring import ScoreOptions


@dataclass
class ScoreRequest:
    """What to score, with what, and where (the ``score-teacher run`` flags, one field each)."""

    candidates: tuple[str, ...]
    teachers: tuple[str, ...]
    output: str
    data: str | None = None
    split: str = "train"
    queries_file: str | None = None
    corpus_file: str | None = None
    overwrite: bool = False
    ensemble_norm: str = "zscore"
    weights: str | None = None
    activation: str | None = None  # None / "none" (raw logits) or "sigmoid"
    max_length: int | None = None
    backend: str = "torch"
    bi_backend: str = "torch"
    chunk_size: int = 32
    batch_size: int = 32
    shard: tuple[int, int] | None = None
    limit: int | None = None
    include_positives: bool = True
    allow_missing_ids: bool = False
    cache_dir: str | None = None
    use_cache: bool = True
    show_progress: bool = True
    device: str | None = None

    def options(self, weights: dict[str, float] | None) -> ScoreOptions:
        """The scoring loop's options (``weights`` resolved by :func:`~embed_kd.teachers.combine.ensemble_weights`)."""
        return ScoreOptions(chunk_size=self.chunk_size, batch_size=self.batch_size, shard=self.shard, limit=self.limit,
                            overwrite=self.overwrite, include_positives=self.include_positives,
                            activation=None if self.activation in (None, "none") else self.activation,
                            max_length=self.max_length, backend=self.backend, bi_backend=self.bi_backend,
                            ensemble_norm=self.ensemble_norm, weights=weights, cache_dir=self.cache_dir,
                            use_cache=self.use_cache, show_progress=self.show_progress)


@dataclass
class ScoreResult:
    """What :func:`run_score_teacher` did: the scoring ``summary`` (rows, pairs, timings, ``out``, ``complete``;
    :func:`~embed_kd.teachers.scoring.score_teacher`), the launch's ``world_size`` and whether this process is
    the one that reports (rank 0)."""

    summary: dict
    world_size: int = 1
    is_main: bool = True

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


class ScoringInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run_score_teacher`: the chunks committed so far are kept in ``kept``."""

    def __init__(self, kept: str | os.PathLike, is_main: bool = True):
        super().__init__(str(kept))
        self.kept = kept
        self.is_main = is_main

    @property
    def message(self) -> str:
        return f"Interrupted: the chunks committed so far are kept in {self.kept}; rerun the same command to resume."


def run_score_teacher(req: ScoreRequest) -> ScoreResult:
    """Score ``req``'s candidates with its teachers into ``req.output`` (resumes a store of the same config).

    Raises :class:`~embed_kd.errors.EmbedKDError` for a bad request before anything is written, and
    :class:`ScoringInterrupted` on Ctrl-C (see the module docstring).
    """
    select_device(req.device)  # --device / $EMBED_KD_DEVICE / auto; logged once
    world = dist.get_world()  # WORLD_SIZE > 1 under torchrun / accelerate launch
    weights = ensemble_weights(req.weights, [parse_teacher_spec(t).name for t in req.teachers], req.ensemble_norm)
    dataset = load_inputs(data=req.data, split=req.split, corpus=req.corpus_file, queries=req.queries_file,
                          allow_missing_ids=req.allow_missing_ids)
    try:
        summary = score_teacher_launched(dataset, req.candidates, req.teachers, req.output, req.options(weights))
    except KeyboardInterrupt:
        kept = parts_folder(req.output) if world.distributed else req.output
        raise ScoringInterrupted(kept, world.is_main) from None
    return ScoreResult(summary, world_size=world.world_size, is_main=world.is_main)

