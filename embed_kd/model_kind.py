"""What kind of model a folder holds, and whether it fits the role it is loaded for.

A model of the wrong kind loads without complaint and produces garbage: a bi-encoder loaded as a
cross-encoder gets a freshly initialised classification head (random scores, a different one each
run), a bare encoder loaded as a SPLADE model a random MLM head. Every loader in
:mod:`embed_kd.models` therefore checks the role first, from the model's own files, never from
its scores:

- ``config_sentence_transformers.json`` → ``model_type`` (``CrossEncoder``, ``SparseEncoder``,
  ``SentenceTransformer``), written by sentence-transformers ≥ 5;
- ``modules.json`` → the module stack (``Pooling`` / ``Normalize`` / ``Router``: a bi-encoder;
  ``StaticEmbedding``: a static bi-encoder; ``SpladePooling`` / ``MLMTransformer``: sparse);
- ``config.json`` → ``architectures`` (``*ForSequenceClassification``: a cross-encoder;
  ``*ForMaskedLM``: an MLM a SPLADE model can be built on; ``*Model``: a bare encoder);
- for a cross-encoder, after loading, the weights file itself: every parameter of the
  classification head (what the base model does not hold) must be in it
  (:func:`missing_head_weights`), else transformers initialised it at random.

========================  ====================================================================
role                      accepted kinds
========================  ====================================================================
``cross-encoder``         ``cross-encoder`` (its head weights present)
``bi-encoder``            ``bi-encoder``, ``static``, a bare ``encoder`` / ``masked-lm`` (mean
                          pooling is added, as sentence-transformers does)
``sparse-encoder``        ``sparse-encoder``, ``masked-lm`` (SPLADE on its MLM head)
========================  ====================================================================

>>> import json, tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
>>> declared_kind(d)
('encoder', 'config.json: architectures BertModel')
>>> check_role(d, "cross-encoder", spec="m", role="--teacher ce:m")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
embed_kd.errors.EmbedKDError: model 'm' cannot be the cross-encoder for --teacher ce:m: it is a bare encoder ...
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from embed_kd.errors import EmbedKDError

KIND_WORDS = {"cross-encoder": "a cross-encoder", "bi-encoder": "a bi-encoder (embedding model)",
              "static": "a static-embedding bi-encoder", "sparse-encoder": "a sparse (SPLADE) encoder",
              "encoder": "a bare encoder with no task head", "masked-lm": "a masked-language model"}
ACCEPTS = {"cross-encoder": {"cross-encoder"},
           "bi-encoder": {"bi-encoder", "static", "encoder", "masked-lm"},
           "sparse-encoder": {"sparse-encoder", "masked-lm"}}
_ST_TYPES = {"CrossEncoder": "cross-encoder", "SparseEncoder": "sparse-encoder", "SentenceTransformer": "bi-encoder"}
_SPARSE_MODULES = {"SpladePooling", "MLMTransformer", "SparseStaticEmbedding", "SparseAutoEncoder"}
_HEAD_ARCH = ("ForSequenceClassification", "ForCausalLM")  # CausalLM: an LLM reranker (sentence-transformers' LogitScore)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _module_types(folder: Path) -> list[str]:
    mods = _json(folder / "modules.json")
    if not isinstance(mods, list):
        return []
    return [str(m.get("type", "")).rsplit(".", 1)[-1] for m in mods if isinstance(m, dict)]


def _architectures(folder: Path) -> list[str] | None:
    cfg = _json(folder / "config.json")
    if isinstance(cfg, dict) and isinstance(cfg.get("architectures"), list):
        return [str(a) for a in cfg["architectures"]]
    mods = _json(folder / "modules.json")
    for m in mods if isinstance(mods, list) else []:  # older sentence-transformers: 0_Transformer/config.json
        sub = _json(folder / str(m.get("path", "")) / "config.json") if isinstance(m, dict) and m.get("path") else None
        if isinstance(sub, dict) and isinstance(sub.get("architectures"), list):
            return [str(a) for a in sub["architectures"]]
    return None


def declared_kind(folder: str | os.PathLike) -> tuple[str | None, str]:
    """``(kind, evidence)`` of a local model folder from its config files; ``(None, why)`` when they
    say nothing (not a local folder, no config)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None, "not a local folder"
    st = _json(folder / "config_sentence_transformers.json")
    st_type = st.get("model_type") if isinstance(st, dict) else None
    if st_type in _ST_TYPES and st_type != "SentenceTransformer":
        return _ST_TYPES[st_type], f"config_sentence_transformers.json: model_type {st_type}"
    mods = _module_types(folder)
    if set(mods) & _SPARSE_MODULES:
        return "sparse-encoder", f"modules.json: {', '.join(mods)}"
    if "StaticEmbedding" in mods:
        return "static", f"modules.json: {', '.join(mods)}"
    if {"Pooling", "Normalize", "Router", "Dense"} & set(mods) or st_type == "SentenceTransformer":
        return "bi-encoder", (f"modules.json: {', '.join(mods)}" if mods
                              else "config_sentence_transformers.json: model_type SentenceTransformer")
    archs = _architectures(folder)
    if archs:
        ev = f"config.json: architectures {', '.join(archs)}"
        if any(a.endswith(_HEAD_ARCH) for a in archs):
            return "cross-encoder", ev
        if any(a.endswith("ForMaskedLM") for a in archs):
            return "masked-lm", ev
        return "encoder", ev
    return None, "no config.json / modules.json"


def _refuse(spec: str, want: str, role: str, kind: str, evidence: str, extra: str = "") -> EmbedKDError:
    what = {"cross-encoder": "the cross-encoder", "bi-encoder": "the embedding model",
            "sparse-encoder": "the sparse encoder"}[want]
    return EmbedKDError(f"model '{spec}' cannot be {what} for {role}: it is {KIND_WORDS.get(kind, kind)} "
                        f"({evidence}){extra}")


_CONSEQUENCE = {"cross-encoder": "; loaded as a cross-encoder its classification head would be newly initialised "
                                 "and score at random. Pass a trained cross-encoder (e.g. the minilm-l6-ce preset) "
                                 "or train one with `embed-kd train-teacher`",
                "sparse-encoder": "; loaded as a SPLADE model its vocabulary head would be newly initialised. Pass a "
                                  "sparse encoder, or a masked-language model to build one on",
                "bi-encoder": "; pass it where its kind belongs (a cross-encoder: --teacher ce:MODEL / --rerank)"}


def refuse_kind(spec: str, want: str, role: str, kind: str, evidence: str) -> EmbedKDError:
    """The error for a model of ``kind`` given where ``want`` is needed (raise it)."""
    return _refuse(spec, want, role, kind, evidence, _CONSEQUENCE[want])


def check_role(folder: str | os.PathLike, want: str, *, spec: str, role: str) -> str | None:
    """Refuse a local model folder whose files say it is not ``want`` (see the module table);
    returns the declared kind (None when the files say nothing, e.g. a hub id not cached)."""
    kind, evidence = declared_kind(folder)
    if kind is not None and kind not in ACCEPTS[want]:
        raise _refuse(spec, want, role, kind, evidence, _CONSEQUENCE[want])
    return kind


def _checkpoint_keys(folder: Path) -> set[str] | None:
    """Parameter names stored in a folder's safetensors weights (None: no safetensors to read)."""
    index = _json(folder / "model.safetensors.index.json")
    if isinstance(index, dict) and isinstance(index.get("weight_map"), dict):
        return set(index["weight_map"])
    path = folder / "model.safetensors"
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            return set(fh.keys())
    except Exception:  # noqa: BLE001 - an unreadable file failed loading already
        return None


def missing_head_weights(hf_model, folder: str | os.PathLike) -> list[str]:
    """Parameters of ``hf_model``'s task head (those outside its base model) that the weights file
    in ``folder`` does not hold: transformers initialised them at random. Empty when all are
    there, or when there is no safetensors file to check."""
    keys = _checkpoint_keys(Path(folder))
    if keys is None:
        return []
    prefix = getattr(hf_model, "base_model_prefix", "") or ""
    head = [n for n, _ in hf_model.named_parameters() if not (prefix and n.startswith(prefix + "."))]
    return [n for n in head if n not in keys and f"{prefix}.{n}" not in keys]


def check_cross_encoder(model, source, *, spec: str, role: str) -> None:
    """After loading: the model's config must be a sequence-classification (or LLM reranker)
    architecture, and its head weights must have come from the checkpoint."""
    hf = getattr(model, "model", None)
    archs = list(getattr(getattr(hf, "config", None), "architectures", None) or [])
    if archs and not any(a.endswith(_HEAD_ARCH) for a in archs):
        kind = "masked-lm" if any(a.endswith("ForMaskedLM") for a in archs) else "encoder"
        raise _refuse(spec, "cross-encoder", role, kind, f"config.json: architectures {', '.join(archs)}",
                      _CONSEQUENCE["cross-encoder"])
    if hf is not None and Path(str(source)).is_dir():
        missing = missing_head_weights(hf, source)
        if missing:
            raise EmbedKDError(f"model '{spec}' cannot be the cross-encoder for {role}: its weights have no "
                               f"classification head ({', '.join(missing[:3])} missing from the checkpoint), so it "
                               "would be newly initialised and score at random; pass a trained cross-encoder")
