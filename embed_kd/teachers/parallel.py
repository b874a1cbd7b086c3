"""``score-teacher`` under ``torchrun`` / ``accelerate launch``: one shard per process, merged by rank 0.

The single-process loop (:func:`embed_kd.teachers.scoring.score_teacher`) is already shardable:
``shard=(I, N)`` scores the query chunks ``≡ I (mod N)`` into a shard store and
:func:`embed_kd.teachers.store.merge_stores` joins complete shards after checking that all ``N``
are present with one config. This module runs that plan on a process group
(:mod:`embed_kd.distributed`), so nothing about the rows changes — a chunk's rows depend only on
its queries, whichever process scores it:

1. every process checks the output (an existing store is refused unless ``overwrite``; with it,
   rank 0 clears the previous run's shards) and agrees on it;
2. rank ``r`` of ``W`` scores shard ``r/W`` into ``OUT.parts/shard-RRRRR-of-WWWWW/`` (resumable
   exactly as a single run: rerun the same launch command after an interruption); shared
   resources are built collectively first (dense candidates' document embeddings are encoded
   data-parallel, :mod:`embed_kd.index.stream_encode`);
3. when every shard is complete, rank 0 merges them into ``OUT`` (completeness checked by
   ``merge_stores``; the manifest's ``merged_from`` names the shards) and removes ``OUT.parts``.

``OUT.parts`` must be on a filesystem every process sees (always true on one machine). Resuming
with another number of processes starts the shards over (the old ones are left in ``OUT.parts``
until the merge succeeds, then removed).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from embed_kd import distributed as dist
from embed_kd.errors import ArtifactError, EmbedKDError
from embed_kd.io import claim_output, remove_owned
from embed_kd.teachers.scoring import score_teacher, ScoreOptions
from embed_kd.teachers.store import ARTIFACT, merge_stores

logger = logging.getLogger(__name__)


_SHARD_RE = re.compile(r"^shard-\d{5}-of-\d{5}$")


def parts_folder(out: str | os.PathLike) -> Path:
    """Where the shards of a multi-process run of ``out`` live: ``OUT.parts``."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


def shard_folder(out: str | os.PathLike, rank: int, world_size: int) -> Path:
    """``OUT.parts/shard-RRRRR-of-WWWWW``.

    >>> shard_folder("scores/ce", 1, 2).as_posix()
    'scores/ce.parts/shard-00001-of-00002'
    """
    return parts_folder(out) / f"shard-{rank:05d}-of-{world_size:05d}"


def _check_output(out: Path, overwrite: bool) -> None:
    claim_output(out, ARTIFACT, overwrite=overwrite)  # only an embed-kd score store is ever replaced
    parts = parts_folder(out)
    if parts.exists():
        foreign = [] if parts.is_dir() and not parts.is_symlink() else [parts.name]
        if not foreign:
            foreign = [p.name for p in parts.iterdir()
                       if not (p.is_dir() and _SHARD_RE.match(p.name) and (p / "manifest.json").is_file()
                               or p.is_dir() and _SHARD_RE.match(p.name) and not any(p.iterdir()))]
        if foreign:
            raise ArtifactError(f"{parts}: holds {', '.join(sorted(foreign)[:3])}, which embed-kd did not write as "
                                "shards of this run; refusing to use or remove it, even with --overwrite (move it "
                                "away yourself)")


def score_teacher_distributed(dataset, candidates: Sequence[str], teachers: Sequence[str], out: str | os.PathLike,
                              options=None) -> dict:
    """Collective: every process of the launch calls it with the same arguments (module docstring).

    Returns the summary of :func:`~embed_kd.teachers.scoring.score_teacher` for this process's shard,
    plus ``world_size``, ``rank``, ``shards`` (every process's summary) and, on every process, the
    merged store's ``rows`` / ``complete``.
    """
    world = dist.init()
    opt = options or ScoreOptions()
    if opt.shard is not None:
        raise EmbedKDError("--shard cannot be combined with a multi-process launch: under torchrun / accelerate "
                           "launch each process scores one shard (drop --shard)")
    out = Path(out)
    t0 = time.perf_counter()
    parts = parts_folder(out)
    mine = shard_folder(out, world.rank, world.world_size)

    with dist.step("checking the output"):
        _check_output(out, opt.overwrite)
        if world.is_main:
            if opt.overwrite and parts.exists():
                for shard in parts.iterdir():  # each one checked: only embed-kd score stores are removed
                    remove_owned(shard, ARTIFACT)
                parts.rmdir()
            parts.mkdir(parents=True, exist_ok=True)
            foreign = sorted(p.name for p in parts.iterdir()
                             if p.is_dir() and not p.name.endswith(f"-of-{world.world_size:05d}"))
            if foreign:
                logger.warning("%s holds shards of a run with another number of processes (%s); they are not "
                               "resumed and are removed after the merge", parts, ", ".join(foreign))

    # overwrite was handled above for the whole run: each shard store resumes or starts fresh
    shard_opt = replace(opt, shard=(world.rank, world.world_size), overwrite=False, keep_complete=True,
                        show_progress=opt.show_progress and world.is_main)
    summary: dict = {}
    with dist.step("scoring"):
        summary = score_teacher(dataset, candidates, teachers, mine, shard_opt)
    summaries = dist.all_gather_object(summary)

    merged = None
    with dist.step("merging the shards"):
        if world.is_main:
            shards = [shard_folder(out, r, world.world_size) for r in range(world.world_size)]
            store = merge_stores(shards, out, overwrite=opt.overwrite)
            merged = {"rows": store.manifest["progress"]["rows"], "complete": store.manifest["complete"]}
            shutil.rmtree(parts, ignore_errors=True)
    merged = dist.broadcast_object(merged)
    total = {k: sum(s.get(k) or 0 for s in summaries) for k in ("queries_scored", "pairs", "chunks_skipped")}
    score_s = max((s.get("score_s") or 0.0) for s in summaries)
    return {**summary, **total, "out": str(out), "rank": world.rank, "world_size": world.world_size,
            "shards": summaries, "rows": merged["rows"], "complete": merged["complete"],
            "pairs_per_s": (total["pairs"] / score_s) if score_s > 0 else None,
            "total_s": time.perf_counter() - t0}


def score_teacher_launched(dataset, candidates: Sequence[str], teachers: Sequence[str], out: str | os.PathLike,
                           options=None) -> dict:
    """What ``score-teacher run`` calls: :func:`~embed_kd.teachers.scoring.score_teacher` in one
    process, :func:`score_teacher_distributed` under ``torchrun`` / ``accelerate launch``. The
    summary adds ``world_size``."""
    world = dist.get_world()
    if world.distributed:
        summary = score_teacher_distributed(dataset, candidates, teachers, out, options)
    else:
        summary = score_teacher(dataset, candidates, teachers, out, options)
    return {**summary, "world_size": world.world_size}
