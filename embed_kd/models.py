"""Load models by spec (path, hub id or preset), fingerprint and describe them.

A model fingerprint hashes what decides its outputs: every parameter and buffer (name, shape,
bytes), the module stack, and the maximum sequence length. Two folders with the same weights get
the same fingerprint, wherever they live.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from embed_kd.device import announce, current_device
from embed_kd.encode import embedding_dim
from embed_kd.errors import EmbedKDError, ModelNotFoundError
from embed_kd.model_kind import check_cross_encoder, check_role, refuse_kind
from embed_kd.presets import locate_model

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from sentence_transformers import CrossEncoder, SentenceTransformer

logger = logging.getLogger(__name__)


def _load_errors() -> tuple[type[BaseException], ...]:
    """What a broken or incomplete model folder raises while loading: a missing/unreadable file
    (OSError), a malformed config (ValueError, JSON errors), a truncated weights file
    (``safetensors.SafetensorError``) or weights of another shape (RuntimeError from ``load_state_dict``)."""
    errors: list[type[BaseException]] = [OSError, ValueError, RuntimeError]
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:  # pragma: no cover - safetensors ships with transformers
        pass
    return tuple(errors)


def _default_device() -> str:
    """The selected device (``--device`` / ``$EMBED_KD_DEVICE`` / auto: :func:`embed_kd.device.current_device`)."""
    return current_device()


def _evidence(ms) -> str:
    """Where a model's kind came from, for messages: its preset, or its own files."""
    return f"preset {ms.preset}" if ms.preset else "its files"


def load_sentence_transformer(spec: str | os.PathLike, *, device: str | None = None,
                              role: str = "this command") -> "SentenceTransformer":
    """Load a bi-encoder (``SentenceTransformer``) from a path, hub id or preset.

    ``role`` names what the model is for in errors; a cross-encoder or a sparse encoder is refused
    (:func:`embed_kd.model_kind.check_role`)."""
    from sentence_transformers import SentenceTransformer

    source, ms = locate_model(spec)
    if ms.kind in ("cross-encoder", "sparse-encoder"):
        raise refuse_kind(str(spec), "bi-encoder", role, ms.kind, _evidence(ms))
    check_role(source, "bi-encoder", spec=str(spec), role=role)
    try:
        model = SentenceTransformer(source, device=device or _default_device())
    except _load_errors() as exc:
        raise ModelNotFoundError(f"model '{spec}' could not be loaded from {source}: {exc}") from None
    announce(device or _default_device())
    model.embed_kd_spec = str(spec)  # type: ignore[attr-defined]
    return model


def is_sparse_folder(source: str | os.PathLike) -> bool:
    """True when ``source`` is a saved sentence-transformers ``SparseEncoder`` folder."""
    cfg = Path(source) / "config_sentence_transformers.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("model_type") == "SparseEncoder"
    except (OSError, ValueError):
        return False


def is_sparse_model(spec: str | os.PathLike) -> bool:
    """True when ``spec`` resolves to a saved sentence-transformers ``SparseEncoder`` folder."""
    if str(spec) == "bm25":
        return False
    try:
        source, _ = locate_model(spec)
    except EmbedKDError:
        return False
    return is_sparse_folder(source)


def load_sparse_encoder(spec: str | os.PathLike, *, device: str | None = None, role: str = "this command"):
    """Load a ``SparseEncoder`` (SPLADE-style model) from a path, hub id or preset; a model whose
    files say it is not one (nor an MLM to build one on) is refused (:mod:`embed_kd.model_kind`)."""
    from sentence_transformers.sparse_encoder import SparseEncoder

    source, ms = locate_model(spec)
    if ms.kind in ("cross-encoder", "bi-encoder"):
        raise refuse_kind(str(spec), "sparse-encoder", role, ms.kind, _evidence(ms))
    check_role(source, "sparse-encoder", spec=str(spec), role=role)
    try:
        model = SparseEncoder(str(source), device=device or _default_device())
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"sparse model '{spec}' could not be loaded from {source}: {exc}") from None
    announce(device or _default_device())
    model.embed_kd_spec = str(spec)  # type: ignore[attr-defined]
    return model


def load_cross_encoder(spec: str | os.PathLike, *, device: str | None = None, max_length: int | None = None,
                       role: str = "a cross-encoder role", require_head: bool = True, **kwargs) -> "CrossEncoder":
    """Load a ``CrossEncoder`` from a path, hub id or preset (``kwargs`` go to ``CrossEncoder``,
    e.g. ``backend="onnx", model_kwargs={"file_name": ...}``).

    With ``require_head`` (every role but ``train-teacher --base``, which adds the head on purpose)
    a model that is not a trained cross-encoder — a bi-encoder, a bare encoder, a checkpoint
    without its classification head — is refused naming the model and ``role``, before and after
    loading (:mod:`embed_kd.model_kind`): loaded anyway, its head would be random."""
    from sentence_transformers import CrossEncoder

    source, ms = locate_model(spec)
    if require_head:
        if ms.kind in ("bi-encoder", "sparse-encoder"):
            raise refuse_kind(str(spec), "cross-encoder", role, ms.kind, _evidence(ms))
        check_role(source, "cross-encoder", spec=str(spec), role=role)
    try:
        model = CrossEncoder(source, device=device or _default_device(), max_length=max_length, **kwargs)
    except _load_errors() as exc:
        raise ModelNotFoundError(f"cross-encoder '{spec}' could not be loaded from {source}: {exc}") from None
    announce(device or _default_device())
    if require_head:
        check_cross_encoder(model, source, spec=str(spec), role=role)
    model.embed_kd_spec = str(spec)  # type: ignore[attr-defined]
    return model


def model_name(model) -> str:
    """A human-readable name: the spec it was loaded from, else its class."""
    return getattr(model, "embed_kd_spec", None) or type(model).__name__


def _finite(length):
    """A model's max_seq_length for JSON: None when it has no limit (a StaticEmbedding model's ``inf``)."""
    return None if length is None or length == float("inf") else length


def model_info(model) -> dict:
    """How every artifact names a model it used: ``{"spec", "fingerprint", "dim", "max_seq_length"}``
    (plus ``"route"`` for one tower of an asym model, :mod:`embed_kd.students.asym`)."""
    info = {
        "spec": model_name(model),
        "fingerprint": fingerprint_model(model),
        "dim": embedding_dim(model),
        "max_seq_length": _finite(getattr(model, "max_seq_length", None)),
    }
    if getattr(model, "embed_kd_route", None):
        info["route"] = model.embed_kd_route
    if getattr(model, "embed_kd_backend", None):  # --backend openvino|onnx (embed_kd.teachers.bi_backend)
        info["backend"] = model.embed_kd_backend
    return info


def fingerprint_module(module: "torch.nn.Module", extra: str = "") -> str:
    """sha256 (16 hex) over parameter/buffer names, shapes and bytes, plus ``extra``."""
    h = hashlib.sha256(extra.encode("utf-8"))
    h.update(repr([type(m).__name__ for m in module.children()]).encode("utf-8"))
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode("utf-8"))
        h.update(repr((tuple(t.shape), str(t.dtype))).encode("utf-8"))
        h.update(t.view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def fingerprint_model(model) -> str:
    """Fingerprint of a loaded SentenceTransformer / CrossEncoder / SparseEncoder (cached on the object)."""
    cached = getattr(model, "_embed_kd_fingerprint", None)
    if cached:
        return cached
    extra = f"max_seq_length={getattr(model, 'max_seq_length', None)}"
    fp = fingerprint_module(model, extra)
    try:
        model._embed_kd_fingerprint = fp
    except AttributeError:  # pragma: no cover
        pass
    return fp


def forget_fingerprint(model) -> None:
    """Drop the fingerprint :func:`fingerprint_model` cached on ``model``: call after changing its weights."""
    model.__dict__.pop("_embed_kd_fingerprint", None)
