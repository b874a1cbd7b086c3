"""Fast cross-encoder inference: the teacher exported to ONNX and run with ONNX Runtime.

``score-teacher --backend onnx`` / ``onnx-int8`` (fast mode) exports the cross-encoder's transformer
(a ``*ForSequenceClassification``) once with ``torch.onnx.export``, fuses it with ONNX Runtime's
transformer optimizer (attention / LayerNorm / GELU fusion; BERT-family models), and for
``onnx-int8`` quantises the weights of its MatMuls to int8 with ONNX Runtime's dynamic quantisation
(activations quantised on the fly). Exports are cached by the model's fingerprint:

    $EMBED_KD_CACHE/onnx/<model fingerprint>-<variant>-v1/
      model.onnx   the graph ONNX Runtime runs
      meta.json    {"schema": "embed-kd/onnx-export@1", "model_fingerprint", "variant", "inputs",
                    "optimized", "opset", "versions", "created"}

``onnx`` scores equal the torch scores up to float rounding (~1e-6); ``onnx-int8`` drifts (see
eval/results/score-teacher-speed.md for the measured drift and per-query Kendall tau). The store
records the backend in the teacher entry, so stores made by different backends never mix.

Why not sentence-transformers' ``backend="onnx"``: it needs ``optimum``, and the release pip's
resolver picks next to transformers 5 here is optimum 1.17.1, which predates transformers 5 (not
adopted, not installed); ONNX Runtime is what ``optimum`` would run underneath.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from embed_kd.errors import EmbedKDError
from embed_kd.io import Artifact, atomic_dir, utc_now, versions
from embed_kd.models import fingerprint_model

logger = logging.getLogger(__name__)
VARIANTS = ("onnx", "onnx-int8")
SCHEMA = "embed-kd/onnx-export@1"
OPSET = 17


def _require_ort():
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise EmbedKDError("the onnx backends need ONNX Runtime: pip install 'embed-kd[fast]' "
                           "(onnxruntime, onnx)") from None


def export_cross_encoder(model, variant: str, cache_root: Path | None = None) -> Path:
    """Path of the cached ONNX graph of ``model`` (a CrossEncoder) for ``variant``; exported if absent."""
    import torch

    from embed_kd.data.resolve import cache_root as default_root

    if variant not in VARIANTS:
        raise EmbedKDError(f"unknown ONNX variant {variant!r} (one of {', '.join(VARIANTS)})")
    _require_ort()
    fp = fingerprint_model(model)
    folder = Path(cache_root or default_root()) / "onnx" / f"{fp}-{variant}-v1"
    if (folder / "model.onnx").is_file() and (folder / "meta.json").is_file():
        return folder / "model.onnx"
    hf = model.model
    logits_module, names, sample = traceable_logits(model)

    t0 = time.perf_counter()
    logger.info("exporting %s to ONNX (%s) in %s", getattr(model, "embed_kd_spec", "cross-encoder"), variant, folder)
    with atomic_dir(folder, overwrite=True, artifact=Artifact(SCHEMA, "meta.json", "ONNX export")) as tmp:
        raw = tmp / "raw.onnx"
        with torch.no_grad():
            torch.onnx.export(logits_module, sample, str(raw), input_names=names,
                              output_names=["logits"], opset_version=OPSET, dynamo=False,
                              dynamic_axes={**{k: {0: "batch", 1: "seq"} for k in names}, "logits": {0: "batch"}})
        graph, optimized = raw, False
        cfg = hf.config
        if getattr(cfg, "model_type", None) in ("bert", "roberta", "xlm-roberta", "distilbert", "electra"):
            from onnxruntime.transformers import optimizer

            opt = optimizer.optimize_model(str(raw), model_type="bert", num_heads=cfg.num_attention_heads,
                                           hidden_size=cfg.hidden_size)
            graph, optimized = tmp / "opt.onnx", True
            opt.save_model_to_file(str(graph))
        final = tmp / "model.onnx"
        if variant == "onnx-int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            import onnx

            # the fused graph has com.microsoft ops that shape inference cannot type: tell the quantiser
            # that untyped tensors are float32
            quantize_dynamic(str(graph), str(final), weight_type=QuantType.QInt8, per_channel=True,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        else:
            graph.replace(final)
        for p in tmp.glob("*.onnx"):
            if p != final:
                p.unlink()

        (tmp / "meta.json").write_text(json.dumps({
            "schema": SCHEMA, "model_fingerprint": fp, "variant": variant, "inputs": names, "optimized": optimized,
            "opset": OPSET, "versions": versions(), "created": utc_now(),
            "export_s": round(time.perf_counter() - t0, 2)}, indent=2))
    return folder / "model.onnx"


def traceable_logits(model):
    """``(module, input names, sample inputs)`` for tracing a CrossEncoder's transformer to a graph.

    The module takes the tokenizer's tensors positionally in ``names`` order (``input_ids``,
    ``attention_mask``, ``token_type_ids`` when the tokenizer makes them) and returns ``.logits``;
    ``sample`` is a one-pair batch in that order. Shared by the ONNX and OpenVINO exports.
    """
    import torch

    enc = model.tokenizer(["a query"], ["a document text"], return_tensors="pt")
    names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]

    class _Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *args):
            return self.m(**dict(zip(names, args))).logits

    return _Logits(model.model.eval()), names, tuple(enc[k] for k in names)


class OrtCrossEncoder:
    """An ONNX Runtime session for an exported cross-encoder: ``logits(features) -> float32 [batch]``."""

    def __init__(self, path: Path, threads: int | None = None):
        _require_ort()
        import onnxruntime as ort

        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def logits(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        feed = {k: np.asarray(features[k], dtype=np.int64) for k in self.inputs}
        out = self.session.run(None, feed)[0]
        return np.asarray(out, dtype=np.float32).reshape(out.shape[0], -1)[:, 0]
