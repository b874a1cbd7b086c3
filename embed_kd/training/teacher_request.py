"""``embed-kd train-teacher`` as one library call: :func:`run_train_teacher` turns a
:class:`TrainTeacherRequest` into the saved cross-encoder teacher (``embed-kd/cross-encoder-teacher@1``,
owned by :mod:`embed_kd.training.train_teacher`) and returns its manifest.

The order is the command's: the device, then the output (the ownership rule: only a teacher
``train-teacher`` wrote is replaced, with ``overwrite``) and the config are checked before the data
is resolved and loaded, so a refusal costs no loading.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from embed_kd.data import load_beir, resolve_dataset
from embed_kd.device import select_device
from embed_kd.io import claim_output
from embed_kd.training.train_teacher import ARTIFACT, TrainTeacherConfig, train_teacher


@dataclass
class TrainTeacherRequest:
    """What to train on and where to save it (the ``train-teacher`` flags; the training ones in ``config``)."""

    data: str
    output: str
    config: TrainTeacherConfig = field(default_factory=TrainTeacherConfig)
    split: str = "train"
    overwrite: bool = False
    cache_dir: str | None = None
    use_cache: bool = True
    show_progress: bool = True
    device: str | None = None


def run_train_teacher(req: TrainTeacherRequest) -> dict:
    """Check ``req``, load its split and fine-tune the teacher into ``req.output``; returns the manifest."""
    select_device(req.device)  # --device / $EMBED_KD_DEVICE / auto; logged once
    claim_output(req.output, ARTIFACT, overwrite=req.overwrite)  # before the data is loaded
    req.config.validate()
    folder = resolve_dataset(req.data)
    dataset = load_beir(folder, req.split, name=Path(folder).name)
    return train_teacher(req.config, dataset, req.output, overwrite=req.overwrite, cache_dir=req.cache_dir,
                         use_cache=req.use_cache, show_progress=req.show_progress)
