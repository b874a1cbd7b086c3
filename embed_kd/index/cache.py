"""Document-embedding cache: encode a corpus once per doc model, reuse it everywhere.

Every student evaluated in asymmetric mode, the dense candidate miner and the aligned-embedding
loss read the same teacher document embeddings; this cache makes that a file read.

On-disk layout (schema ``embed-kd/embeddings@1``)::

    CACHE_DIR/embeddings/<key>/
      embeddings.npy   float32 array [n_docs, dim], row i = document ids[i]
      ids.json         JSON list of the n_docs document ids, in row order
      meta.json        {"schema", "key", "model_fingerprint", "corpus_fingerprint",
                        "max_seq_length", "normalize", "n", "dim", "sha256" (of embeddings.npy),
                        "model", "created"}

``key`` = first 16 hex digits of sha256 over (model fingerprint, corpus fingerprint,
max_seq_length, normalize[, backend]) — ``backend`` (also in ``meta.json``) only for an entry
encoded by a graph runtime (``--backend openvino|onnx``: ``"openvino-f32"`` / ``"onnx-f32"``). Entries are written into a temporary folder and renamed into place;
on read, the shape and the sha256 of ``embeddings.npy`` are checked, and an entry that fails
(truncated, edited, partially deleted) is logged, removed and rebuilt — never trusted. A cache that
cannot be written (full disk, read-only) is logged and skipped: the run goes on with its embeddings.
``CACHE_DIR`` defaults to ``$EMBED_KD_CACHE`` (``~/.cache/embed_kd``); ``--cache-dir`` overrides it.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from embed_kd.data.fingerprint import fingerprint_json
from embed_kd.data.resolve import cache_root
from embed_kd.errors import ArtifactError
from embed_kd.io import Artifact, atomic_dir, sha256_file, utc_now

logger = logging.getLogger(__name__)
SCHEMA = "embed-kd/embeddings@1"


@dataclass
class CacheResult:
    embeddings: np.ndarray
    ids: list[str]
    hit: bool
    path: Path


def write_entry_meta(folder: Path, key_fields: dict, ids: Sequence[str], shape: tuple[int, int],
                     model: str = "") -> None:
    """Write ``ids.json`` and ``meta.json`` next to a complete ``embeddings.npy`` in ``folder``
    (the sha256 is computed by streaming the file, so the matrix need not be in RAM)."""
    (folder / "ids.json").write_text(json.dumps(list(ids)), encoding="utf-8")
    meta = {
        "schema": SCHEMA, **key_fields, "n": int(shape[0]), "dim": int(shape[1]),
        "sha256": sha256_file(folder / "embeddings.npy"), "model": model,
        "created": utc_now(),
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


class EmbeddingCache:
    """A folder of cached embedding matrices keyed by what produced them."""

    def __init__(self, root: str | Path | None = None, enabled: bool = True):
        self.root = Path(root) if root else cache_root()
        self.enabled = enabled

    @staticmethod
    def make_key(model_fingerprint: str, corpus_fingerprint: str, max_seq_length: int | None, normalize: bool,
                 backend: str | None = None) -> dict:
        """The key fields of an entry; ``backend`` (``openvino-f32`` / ``onnx-f32``, :mod:`embed_kd.teachers.bi_backend`)
        is a field only when the encoder was not torch, so torch entries keep their keys."""
        fields = {
            "model_fingerprint": model_fingerprint,
            "corpus_fingerprint": corpus_fingerprint,
            "max_seq_length": max_seq_length,
            "normalize": bool(normalize),
        }
        if backend and backend != "torch":
            fields["backend"] = backend
        return {"key": fingerprint_json(fields), **fields}

    def entry_path(self, key: str) -> Path:
        return self.root / "embeddings" / key

    def load(self, key_fields: dict, ids: Sequence[str], *, mmap: bool = False, verify: bool = True
             ) -> np.ndarray | None:
        """Return the cached matrix, or None when absent or invalid (an invalid entry is removed).

        ``mmap``: a copy-on-write memory map of ``embeddings.npy`` instead of a matrix in RAM (pages
        are read on demand; writes stay private). ``verify=False`` skips the sha256 pass (a peer
        process already verified the entry).
        """
        path = self.entry_path(key_fields["key"])
        if not path.exists():
            return None
        problem = None
        try:
            meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
            cached_ids = json.loads((path / "ids.json").read_text(encoding="utf-8"))
            if meta.get("schema") != SCHEMA:
                problem = f"schema {meta.get('schema')!r} != {SCHEMA!r}"
            elif any(meta.get(k) != v for k, v in key_fields.items()):
                problem = "meta.json does not match its key"
            elif cached_ids != list(ids):
                problem = "document ids differ"
            elif verify and sha256_file(path / "embeddings.npy") != meta.get("sha256"):
                problem = "embeddings.npy checksum mismatch (truncated or modified)"
            else:
                emb = np.load(path / "embeddings.npy", allow_pickle=False, mmap_mode="c" if mmap else None)
                if emb.shape != (meta["n"], meta["dim"]) or emb.dtype != np.float32:
                    problem = f"shape {emb.shape}/{emb.dtype} != ({meta['n']}, {meta['dim']})/float32"
                else:
                    return emb
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problem = f"unreadable ({exc.__class__.__name__}: {exc})"
        logger.warning("embedding cache %s is invalid (%s): removing and re-encoding", path, problem)
        shutil.rmtree(path, ignore_errors=True)
        return None

    def store(self, key_fields: dict, ids: Sequence[str], emb: np.ndarray, model: str = "") -> Path:
        path = self.entry_path(key_fields["key"])
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        with atomic_dir(path, overwrite=True, artifact=Artifact(SCHEMA, "meta.json", "embedding-cache entry")) as tmp:
            np.save(tmp / "embeddings.npy", emb, allow_pickle=False)
            write_entry_meta(tmp, key_fields, ids, emb.shape, model)
        return path

    def get_or_encode(
        self, key_fields: dict, ids: Sequence[str], encode: Callable[[], np.ndarray], model: str = ""
    ) -> CacheResult:
        path = self.entry_path(key_fields["key"])
        if self.enabled:
            emb = self.load(key_fields, ids)
            if emb is not None:
                logger.info("embedding cache hit: %s", path)
                return CacheResult(emb, list(ids), True, path)
        emb = encode()
        if self.enabled:
            try:
                self.store(key_fields, ids, emb, model)
            except ArtifactError as exc:  # a full or read-only cache costs a re-encode later, not this run
                logger.warning("embedding cache not written (%s); continuing without it", exc)
        return CacheResult(emb, list(ids), False, path)
