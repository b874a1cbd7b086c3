"""``--backend torch|openvino|onnx``: the bi-encoder runtime flag ``eval``, ``index build|add`` and ``serve`` share."""

from __future__ import annotations

import click

from embed_kd.teachers.bi_backend import BACKENDS


def backend_option(fn):
    """Add ``--backend``; the command receives ``backend``."""
    return click.option("--backend", type=click.Choice(BACKENDS), default="torch", show_default=True,
                        help="Run the bi-encoder's transformer with torch, OpenVINO or ONNX Runtime (float32, exact "
                             "up to rounding; converted once, cached by model fingerprint).")(fn)
