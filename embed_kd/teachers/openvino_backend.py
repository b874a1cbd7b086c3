"""Fast cross-encoder inference with OpenVINO: the teacher converted once, run in float32 or bfloat16.

``score-teacher --backend openvino`` / ``openvino-bf16`` converts the cross-encoder's transformer (a
``*ForSequenceClassification``) straight from torch with ``openvino.convert_model`` (no ONNX step),
saves the float32 graph, and compiles it for the CPU with an explicit inference precision:

- ``openvino``: ``INFERENCE_PRECISION_HINT=f32`` — the torch scores up to float rounding (~1e-5 logits
  measured on SciFact pairs), faster than eager torch on CPU (fused kernels).
- ``openvino-bf16``: ``INFERENCE_PRECISION_HINT=bf16`` — matrix products in bfloat16 on CPUs that
  multiply bf16 natively (AVX512-BF16, AMX); the fast mode with the best speed / rank-agreement trade
  measured here (eval/results/score-teacher-speed.md). On a CPU without native bf16 OpenVINO cannot
  run bf16: the backend warns and runs float32, and the store records the precision that ran.

The precision is always set: OpenVINO's CPU default is bf16 on AMX machines, which would make
``openvino`` silently inexact there. Conversions are cached by the model's fingerprint:

    $EMBED_KD_CACHE/openvino/<model fingerprint>-v1/
      model.xml    the OpenVINO IR graph (float32 weights in model.bin; the precision is chosen at compile)
      model.bin
      meta.json    {"schema": "embed-kd/openvino-export@1", "model_fingerprint", "inputs", "versions",
                    "created", "export_s"}

written atomically (a temporary folder renamed into place). Why not sentence-transformers'
``backend="openvino"``: it needs ``optimum-intel``, whose releases here pull transformers back to 4.x
and break sentence-transformers 6 (not adopted, not installed); ``openvino`` alone is what it runs
underneath.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np

from embed_kd.errors import EmbedKDError
from embed_kd.io import Artifact, atomic_dir, utc_now, versions
from embed_kd.models import fingerprint_model
from embed_kd.teachers.onnx_backend import traceable_logits

logger = logging.getLogger(__name__)
VARIANTS = {"openvino": "f32", "openvino-bf16": "bf16"}
SCHEMA = "embed-kd/openvino-export@1"


def _require_openvino():
    try:
        import openvino  # noqa: F401
    except ImportError:
        raise EmbedKDError("the openvino backends need OpenVINO: pip install 'embed-kd[fast]' (openvino)") from None


def native_bf16() -> bool:
    """Whether OpenVINO's CPU plugin can run bfloat16 on this CPU (AVX512-BF16 / AMX); faked by
    ``EMBED_KD_FAKE_CPU_BF16`` (:func:`embed_kd.cpu.native_bf16`)."""
    from embed_kd.cpu import native_bf16 as probe

    _require_openvino()
    return probe("openvino")


def export_cross_encoder(model, cache_root: Path | None = None) -> Path:
    """Path of the cached OpenVINO IR (``model.xml``) of ``model`` (a CrossEncoder); converted if absent."""
    import torch

    from embed_kd.data.resolve import cache_root as default_root

    _require_openvino()
    import openvino as ov

    fp = fingerprint_model(model)
    folder = Path(cache_root or default_root()) / "openvino" / f"{fp}-v1"
    if all((folder / f).is_file() for f in ("model.xml", "model.bin", "meta.json")):
        return folder / "model.xml"

    logits_module, names, sample = traceable_logits(model)
    t0 = time.perf_counter()
    logger.info("converting %s to OpenVINO in %s", getattr(model, "embed_kd_spec", "cross-encoder"), folder)
    with torch.no_grad(), warnings.catch_warnings():
        # convert_model traces the module: torch's tracer warnings (deprecation, Python control flow on
        # shapes that is constant for this architecture) are about the tracing, not the user's model
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        graph = ov.convert_model(logits_module, example_input=sample)
    for port, name in zip(graph.inputs, names):
        port.get_tensor().set_names({name})
    with atomic_dir(folder, overwrite=True, artifact=Artifact(SCHEMA, "meta.json", "OpenVINO export")) as tmp:
        ov.save_model(graph, str(tmp / "model.xml"), compress_to_fp16=False)

        (tmp / "meta.json").write_text(json.dumps({
            "schema": SCHEMA, "model_fingerprint": fp, "inputs": names, "versions": versions(),
            "created": utc_now(),
            "export_s": round(time.perf_counter() - t0, 2)}, indent=2))
    return folder / "model.xml"


class OvCrossEncoder:
    """A compiled OpenVINO cross-encoder: ``logits(features) -> float32 [batch]``.

    ``precision`` is ``f32`` or ``bf16`` (the latter falls back to f32, with a warning, where the CPU
    has no native bf16); ``self.requested`` is the precision asked of OpenVINO, ``self.precision``
    what it compiled (OpenVINO itself keeps float32 where it cannot run the bf16 asked of it).
    """

    def __init__(self, path: Path, precision: str = "f32", threads: int | None = None):
        _require_openvino()
        import openvino as ov

        if precision not in ("f32", "bf16"):
            raise EmbedKDError(f"OpenVINO precision must be f32 or bf16, got {precision!r}")
        if precision == "bf16" and not native_bf16():
            logger.warning("--backend openvino-bf16: this CPU has no native bfloat16 (AVX512-BF16/AMX); "
                           "running float32 instead (recorded in the store)")
            precision = "f32"
        self.requested = precision
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.inputs = [p.get_any_name() for p in self.compiled.inputs]
        self._request = self.compiled.create_infer_request()

    def logits(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        feed = {k: np.asarray(features[k], dtype=np.int64) for k in self.inputs}
        self._request.infer(feed)
        out = self._request.get_output_tensor(0).data
        return np.array(out, dtype=np.float32).reshape(out.shape[0], -1)[:, 0]
