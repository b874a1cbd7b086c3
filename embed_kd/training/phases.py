"""Training in phases: one config, several runs, each starting from the previous run's output.

A recipe such as "learn retrieval from the teacher's scores, then re-align on general text" is
one ``embed-kd train CONFIG`` when the config lists ``phases`` (dense students)::

    # ... the base run (phase 1): scores, alignment mix, steps ...
    output: runs/scifact-l3
    phases:
      - name: general                 # phase 2: the base config with these keys changed
        set:
          losses.score: none
          examples.align_texts: [stsb-train]
          train.max_steps: 1200
          train.lr: 1.0e-4

:func:`embed_kd.training.config.phase_configs` turns it into runs (each phase = the *base* config
with its own ``set``; ``output``, ``phases``, ``student`` and ``device`` cannot change). Every
phase but the last writes a complete student to ``OUTPUT.phases/<k>-<name>/`` (kept: it is the
student before the later phases, e.g. for an ablation); the last writes ``OUTPUT``. Each run is an
ordinary :func:`embed_kd.training.run.train_student` run with its own work folder, manifest and
atomic output.

The final manifest (``OUTPUT/embed_kd_train.json``, schema in :mod:`embed_kd.training.run`) adds:

- ``recipe``: the config as given (with its ``phases``); ``config`` is the last phase's own config;
- ``phases``: one entry per earlier phase, ``{"phase", "name", "output", "set", "student_fingerprint",
  "global_step", "train_time_s", "dev": metrics_final | null}``.

Before any training: the final ``OUTPUT`` and each phase folder are checked (an existing one is
refused without ``--overwrite`` / ``--resume``). ``--resume`` reuses a finished phase whose
manifest has the same config (device and threads aside) and the same query/document limits —
another config there is an error, and so is a finished phase whose starting weights are not the
previous phase's on disk (fingerprints) — and resumes an interrupted phase from its checkpoints; with
nothing of the run on disk it is an error, as for a plain run.
``--overwrite`` retrains every phase.
"""

from __future__ import annotations

import logging
from pathlib import Path

from embed_kd.errors import EmbedKDError
from embed_kd.io import claim_output, read_json
from embed_kd.training.config import TrainConfig, phase_configs
from embed_kd.training.lifecycle import MANIFEST, deciding_config
from embed_kd.training.prologue import OUTPUT_ARTIFACT, WORK_ARTIFACT, work_folder

logger = logging.getLogger(__name__)


def _reusable(out: Path, phase: TrainConfig, k: int, name: str, limits: dict) -> dict:
    """The manifest of a finished phase that ``--resume`` may reuse, or an error saying why not."""
    manifest = read_json(out / MANIFEST, what="phase manifest")
    if deciding_config(manifest.get("config") or {}) != deciding_config(phase.to_dict()):
        raise EmbedKDError(f"{out}: phase {k} ({name}) was trained with another config; pass --overwrite to "
                           "retrain every phase")
    had = {key: (manifest.get("dataset") or {}).get(key) for key in limits}
    if had != limits:
        raise EmbedKDError(f"{out}: phase {k} ({name}) was trained with other limits ({had}, now {limits}); "
                           "pass --overwrite to retrain every phase")
    return manifest


def _summary(k: int, name: str, sets: dict, manifest: dict) -> dict:
    dev = manifest.get("dev") or {}
    return {"phase": k, "name": name, "set": sets,
            "student_fingerprint": manifest["student"]["fingerprint"],
            "global_step": manifest["training"]["global_step"], "train_time_s": manifest["training"]["train_time_s"],
            "dev": dev.get("metrics_final")}


def train_phases(cfg: TrainConfig, *, overwrite: bool = False, resume: bool = False, **kwargs) -> dict:
    """Train ``cfg`` and its ``phases`` in order (module docstring); returns the final run's manifest.

    ``kwargs`` go to :func:`embed_kd.training.run.train_student` (progress, cache, limits, config
    file, overrides). A config without phases is one plain ``train_student`` run."""
    from embed_kd.training.run import train_student

    cfg.validate()
    plans = phase_configs(cfg)
    if len(plans) == 1:
        return train_student(cfg, overwrite=overwrite, resume=resume, **kwargs)
    limits = {"limit_queries": kwargs.get("limit_queries"), "limit_docs": kwargs.get("limit_docs")}
    if resume and not any(Path(p.output).exists() or work_folder(p.output).exists() for _, p in plans):
        raise EmbedKDError(f"--resume: no interrupted run of {cfg.output} (no phase output or work folder under "
                           f"{Path(plans[0][1].output).parent} or {work_folder(cfg.output)})")
    reuse: dict[int, dict] = {}
    for k, (name, phase) in enumerate(plans, start=1):  # every refusal before anything trains
        out = Path(phase.output)
        last = k == len(plans)
        if resume and not last and (out / MANIFEST).is_file():
            claim_output(out, OUTPUT_ARTIFACT, overwrite=True)  # embed-kd's student, or refused
            found = _reusable(out, phase, k, name, limits)
            before = reuse.get(k - 1)  # a finished phase is only as good as the chain it was trained on
            if k > 1 and (before is None or found["student"]["init_fingerprint"] != before["student"]["fingerprint"]):
                raise EmbedKDError(f"{out}: phase {k} ({name}) was trained from another phase {k - 1} than the one "
                                   f"on disk now; pass --overwrite to retrain every phase")
            reuse[k] = found
            continue
        exists = claim_output(out, OUTPUT_ARTIFACT, overwrite=True)
        if exists and not overwrite:
            what = "the final output" if last else f"phase {k} ({name}) of an earlier run"
            raise EmbedKDError(f"{out}: {what} exists; pass --overwrite to retrain every phase"
                               + ("" if last else " or --resume to reuse the finished ones"))
        claim_output(work_folder(out), WORK_ARTIFACT, overwrite=True)

    done: list[dict] = []
    manifest: dict = {}
    for k, (name, phase) in enumerate(plans, start=1):
        last = k == len(plans)
        sets = cfg.phases[k - 2]["set"] if k > 1 else {}
        if k in reuse:
            logger.info("phase %d/%d (%s): reusing %s (finished earlier)", k, len(plans), name, phase.output)
            manifest = reuse[k]
        else:
            logger.info("phase %d/%d (%s): training %s", k, len(plans), name, phase.output)
            extra = {"recipe": cfg.to_dict(), "phases": done} if last else None
            manifest = train_student(phase, overwrite=overwrite, resume=resume and work_folder(phase.output).is_dir(),
                                     manifest_extra=extra, **kwargs)
        if not last:
            done.append({**_summary(k, name, sets, manifest), "output": phase.output})
    return manifest
