"""Fast exact bi-encoder encoding: a SentenceTransformer's transformer run by OpenVINO or ONNX Runtime.

``--backend torch|openvino|onnx`` (``eval``, ``index build`` / ``add``, ``serve``; ``score-teacher
--bi-backend`` for its dense candidates and bi-encoder teachers): the model's first module —
a ``Transformer`` — has its Hugging Face model converted once and run by a float32 graph runtime;
tokenisation, pooling, projection and normalisation stay sentence-transformers' own torch modules.
Both graph backends are *exact-grade*: float32 throughout (OpenVINO compiled with
``INFERENCE_PRECISION_HINT=f32`` — its CPU default is bf16 on AMX machines — and ONNX Runtime's
CPU provider), embeddings equal torch's up to float rounding (~1e-6).

Conversions are cached by the model's fingerprint (written atomically)::

    $EMBED_KD_CACHE/bi-encoder/<model fingerprint>-<backend>-v1/
      model.xml + model.bin (openvino) | model.onnx (onnx)
      meta.json   {"schema": "embed-kd/bi-encoder-export@1", "model_fingerprint", "backend", "inputs",
                   "versions", "created", "export_s"}

A converted model keeps its fingerprint (the weights are the same) and carries
``embed_kd_backend`` (``"openvino-f32"`` / ``"onnx-f32"``): the document-embedding cache keys on it
(:meth:`embed_kd.index.cache.EmbeddingCache.make_key`), so entries encoded by different backends
never mix, and results record it (``model_info``'s ``backend``). Why not sentence-transformers'
``backend="onnx"/"openvino"``: both need ``optimum`` / ``optimum-intel``, whose releases here break
sentence-transformers 6 (see :mod:`embed_kd.teachers.onnx_backend`). A model whose first module is
not a ``Transformer`` (a static embedding model) has nothing to convert and is returned as it is.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np

from embed_kd.errors import EmbedKDError
from embed_kd.io import atomic_dir, package_versions, utc_now
from embed_kd.models import fingerprint_model

logger = logging.getLogger(__name__)
BACKENDS = ("torch", "openvino", "onnx")
SCHEMA = "embed-kd/bi-encoder-export@1"
OPSET = 17


def _transformer(model):
    first = next(iter(model.children()), None)
    hf = getattr(first, "auto_model", None) or getattr(first, "model", None)
    if first is None or hf is None or not hasattr(first, "tokenizer"):
        return None, None
    return first, hf


def _traceable(first, hf):
    """``(module, input names, sample)``: the HF model taking the tokenizer's tensors positionally → last hidden state."""
    import torch

    enc = first.tokenizer(["a short text to trace"], return_tensors="pt")
    names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]

    class _Hidden(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *args):
            return self.m(**dict(zip(names, args)), return_dict=True).last_hidden_state

    return _Hidden(hf.eval()), names, tuple(enc[k] for k in names)


def export(model, backend: str, cache_root: Path | None = None) -> tuple[Path, list[str]]:
    """``(graph path, input names)`` of the cached conversion of ``model``'s transformer; converted if absent."""
    import torch

    from embed_kd.data.resolve import cache_root as default_root

    fp = fingerprint_model(model)
    folder = Path(cache_root or default_root()) / "bi-encoder" / f"{fp}-{backend}-v1"
    graph = folder / ("model.xml" if backend == "openvino" else "model.onnx")
    if graph.is_file() and (folder / "meta.json").is_file():
        return graph, json.loads((folder / "meta.json").read_text(encoding="utf-8"))["inputs"]
    first, hf = _transformer(model)
    module, names, sample = _traceable(first, hf)
    t0 = time.perf_counter()
    logger.info("converting %s to %s in %s", getattr(model, "embed_kd_spec", "the model"), backend, folder)
    with atomic_dir(folder, overwrite=True) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        if backend == "openvino":
            import openvino as ov

            ov_model = ov.convert_model(module, example_input=sample)
            for port, name in zip(ov_model.inputs, names):
                port.get_tensor().set_names({name})
            ov.save_model(ov_model, str(tmp / "model.xml"), compress_to_fp16=False)
        else:
            torch.onnx.export(module, sample, str(tmp / "model.onnx"), input_names=names,
                              output_names=["last_hidden_state"], opset_version=OPSET, dynamo=False,
                              dynamic_axes={**{k: {0: "batch", 1: "seq"} for k in names},
                                            "last_hidden_state": {0: "batch", 1: "seq"}})
        (tmp / "meta.json").write_text(json.dumps({
            "schema": SCHEMA, "model_fingerprint": fp, "backend": backend, "inputs": names, "versions": _versions(),
            "created": utc_now(),
            "export_s": round(time.perf_counter() - t0, 2)}, indent=2), encoding="utf-8")
    return graph, names


def _versions() -> dict:
    return package_versions("torch", "transformers", "sentence-transformers", "openvino", "onnxruntime")


def _runner(backend: str, graph: Path, names: list[str], threads: int | None):
    """A function ``{name: int64 array} -> float32 [batch, seq, hidden]``."""
    if backend == "openvino":
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        request = ov.Core().compile_model(str(graph), "CPU", config).create_infer_request()

        def run(feed):
            request.infer(feed)
            return np.array(request.get_output_tensor(0).data, dtype=np.float32)

        return run
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads, so.inter_op_num_threads = int(threads), 1
    session = ort.InferenceSession(str(graph), so, providers=["CPUExecutionProvider"])
    return lambda feed: np.asarray(session.run(None, feed)[0], dtype=np.float32)


def with_backend(model, backend: str = "torch", *, threads: int | None = None, cache_root: Path | None = None,
                 flag: str = "--backend"):
    """``model`` encoding through ``backend`` (in place; returns it). ``torch`` changes nothing.
    ``flag`` names the option in messages (``score-teacher``'s is ``--bi-backend``)."""
    import torch

    if backend not in BACKENDS:
        raise EmbedKDError(f"{flag} {backend}: choose one of {', '.join(BACKENDS)}")
    if backend == "torch" or getattr(model, "embed_kd_backend", None) == f"{backend}-f32":
        return model
    first, hf = _transformer(model)
    if first is None:
        logger.info("%s %s: %s has no transformer to convert; encoding with torch", flag, backend,
                    getattr(model, "embed_kd_spec", "the model"))
        return model
    try:
        __import__("openvino" if backend == "openvino" else "onnxruntime")
    except ImportError:
        raise EmbedKDError(f"{flag} {backend} needs {'OpenVINO' if backend == 'openvino' else 'ONNX Runtime'}: "
                           "pip install 'embed-kd[fast]'") from None
    graph, names = export(model, backend, cache_root)
    run = _runner(backend, graph, names, threads or torch.get_num_threads())
    out_name = getattr(first, "module_output_name", "token_embeddings")

    def forward(features, **kwargs):
        feed = {n: features[n].detach().cpu().numpy().astype(np.int64) for n in names}
        features[out_name] = torch.from_numpy(run(feed)).to(features["input_ids"].device)
        return features

    first.forward = forward  # the torch module keeps its weights (and the model its fingerprint)
    model.embed_kd_backend = f"{backend}-f32"
    return model
