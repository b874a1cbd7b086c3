"""The search engine behind ``embed-kd serve``: a query model over a persisted index, checked at startup.

Asymmetric serving only works when the query model lives in the doc model's embedding space.
:func:`check_query_model` refuses, with one clear sentence, a query model that

- makes vectors of another dimension than the index's (always checked), or
- declares the embedding teacher it was aligned to, and that teacher is not the index's doc
  model (by fingerprint).

A query model declares its teacher either in a manifest in its folder or through
``--expect-teacher-fingerprint`` (which wins). Manifests read, first found wins:

- ``embed_kd_train.json`` (``embed-kd train``'s run manifest, schema ``embed-kd/train-run@1``):
  its ``teacher.fingerprint`` is the embedding teacher the student was trained against;
- ``embed_kd_manifest.json`` or ``run_manifest.json``: the first of these fields that holds a
  16-hex fingerprint (a plain ``teacher`` field is *not* read there: in other manifests it may
  name the cross-encoder that scored the pairs rather than the embedding space)::

    {"embedding_teacher": {"fingerprint": "914d1e0a39f6fa04", ...}}
    {"aligned_to": {"fingerprint": "..."}}
    {"embedding_teacher_fingerprint": "..."}

A query model with the index's doc-model fingerprint is the symmetric case and always accepted;
a different model that declares nothing is accepted with a warning (``alignment: "unverified"``
in ``GET /info``). ``--allow-teacher-mismatch`` turns the refusal of a declared teacher that is not
the doc model into a warning (``alignment: "mismatch"``); ``embed-kd eval`` applies the same check
to ``--query-model`` / ``--doc-model``.

>>> check_query_model({"dim": 384, "fingerprint": "a" * 16, "spec": "s"},
...                   {"dim": 384, "fingerprint": "b" * 16, "spec": "t"}, declared="b" * 16)
'declared'
>>> check_query_model({"dim": 384, "fingerprint": "a" * 16, "spec": "s"},
...                   {"dim": 768, "fingerprint": "b" * 16, "spec": "t"})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
embed_kd.errors.EmbedKDError: query model 's' makes 384-dim vectors but the index holds 768-dim ...
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embed_kd.errors import ArtifactError, EmbedKDError

logger = logging.getLogger(__name__)

TRAIN_MANIFEST, TRAIN_SCHEMA = "embed_kd_train.json", "embed-kd/train-run@1"
MANIFEST_NAMES = (TRAIN_MANIFEST, "embed_kd_manifest.json", "run_manifest.json")
_TEACHER_FIELDS = (("embedding_teacher", "fingerprint"), ("aligned_to", "fingerprint"),
                   ("embedding_teacher_fingerprint",))
_FP = re.compile(r"^[0-9a-f]{16}$")


def declared_teacher_fingerprint(model_dir: str | Path) -> tuple[str | None, Path | None]:
    """``(fingerprint, manifest path)`` of the embedding teacher a model folder declares, else ``(None, None)``."""
    from embed_kd.io import read_json

    folder = Path(model_dir)
    if not folder.is_dir():
        return None, None
    for name in MANIFEST_NAMES:
        path = folder / name
        if not path.is_file():
            continue
        manifest = read_json(path, "model manifest")
        fields = _TEACHER_FIELDS
        if name == TRAIN_MANIFEST:
            if not isinstance(manifest, dict) or manifest.get("schema") != TRAIN_SCHEMA:
                raise ArtifactError(f"{path}: not an embed-kd train run manifest (schema {TRAIN_SCHEMA!r})")
            fields = (("teacher", "fingerprint"),)
        for keys in fields:
            value: Any = manifest
            for key in keys:
                value = value.get(key) if isinstance(value, dict) else None
            if value is None:
                continue
            if not isinstance(value, str) or not _FP.match(value):
                raise ArtifactError(f"{path}: field '{'.'.join(keys)}' must be a 16-hex model fingerprint, got {value!r}")
            return value, path
    return None, None


def check_query_model(query: dict, doc: dict, *, declared: str | None = None, source: str = "",
                      allow_mismatch: bool = False, docs: str = "the index's documents") -> str:
    """Refuse a query model outside the doc model's space; return how the match was established.

    ``query`` / ``doc``: ``{"spec", "fingerprint", "dim"}``. Returns ``"same model"``,
    ``"declared"`` (the declared teacher is the doc model), ``"unverified"`` (nothing declared) or,
    with ``allow_mismatch`` (``--allow-teacher-mismatch``), ``"mismatch"`` after a warning where the
    declared teacher is another model. A dimension mismatch is always refused. ``docs`` names the
    documents in the message (``embed-kd eval`` passes ``"--doc-model's documents"``).
    """
    if int(query["dim"]) != int(doc["dim"]):
        raise EmbedKDError(
            f"query model '{query['spec']}' makes {query['dim']}-dim vectors but the index holds "
            f"{doc['dim']}-dim vectors of '{doc['spec']}'; serve it with an index built by the teacher it was "
            "aligned to"
        )
    if declared is not None and declared != doc["fingerprint"]:
        what = (f"query model '{query['spec']}' was aligned to a teacher with fingerprint {declared}"
                + (f" ({source})" if source else "")
                + f", but {docs} were encoded by '{doc['spec']}' ({doc['fingerprint']})")
        if not allow_mismatch:
            raise EmbedKDError(f"{what}; use that teacher's documents (build the index with it), or pass "
                               "--allow-teacher-mismatch to run anyway")
        logger.warning("%s: running anyway (--allow-teacher-mismatch); scores mix two embedding spaces", what)
        return "mismatch"
    if query["fingerprint"] == doc["fingerprint"]:
        return "same model"
    if declared is not None:
        return "declared"
    logger.warning(
        "query model '%s' declares no embedding teacher: cannot verify that it was aligned to '%s' (%s); "
        "pass --expect-teacher-fingerprint to check it", query["spec"], doc["spec"], doc["fingerprint"])
    return "unverified"


def query_model_alignment(query_spec: str, query: dict, doc: dict, *, expect_teacher_fingerprint: str | None = None,
                          allow_mismatch: bool = False, docs: str = "the index's documents") -> str:
    """:func:`check_query_model` with the teacher the query model declares (its folder's manifest), or
    ``expect_teacher_fingerprint`` when given."""
    from embed_kd.presets import locate_model

    if expect_teacher_fingerprint is not None and not _FP.match(expect_teacher_fingerprint):
        raise EmbedKDError(f"--expect-teacher-fingerprint {expect_teacher_fingerprint!r}: expected 16 hex digits")
    declared, source = expect_teacher_fingerprint, "--expect-teacher-fingerprint"
    if declared is None:
        declared, path = declared_teacher_fingerprint(locate_model(query_spec)[0])
        source = str(path) if path else ""
    return check_query_model(query, doc, declared=declared, source=source, allow_mismatch=allow_mismatch, docs=docs)


@dataclass
class SearchEngine:
    """A query model + an opened index. ``search_items`` is what the micro-batcher calls."""

    model: Any
    index: Any  # embed_kd.index.store.PersistedIndex
    query_info: dict
    alignment: str
    load_s: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, index_dir: str | Path, query_model: str | None = None, *,
             expect_teacher_fingerprint: str | None = None, verify: bool = True,
             allow_teacher_mismatch: bool = False, compression=None, backend: str = "torch") -> "SearchEngine":
        """Open the index, load the query model (default: the index's doc model) and check they match.

        ``compression`` (:class:`embed_kd.index.compression.Compression`): search the index truncated /
        quantized (:meth:`embed_kd.index.store.PersistedIndex.compress`). ``backend``: the query encoder's
        runtime (:func:`embed_kd.teachers.bi_backend.with_backend`; the fingerprint, so the alignment check, stays).
        """
        from embed_kd.models import model_info
        from embed_kd.index.store import open_index
        from embed_kd.models import load_sentence_transformer
        from embed_kd.students.asym import query_route

        if expect_teacher_fingerprint is not None and not _FP.match(expect_teacher_fingerprint):
            raise EmbedKDError(f"--expect-teacher-fingerprint {expect_teacher_fingerprint!r}: expected 16 hex digits")
        t = time.perf_counter()
        index = open_index(index_dir, verify=verify)
        if compression is not None:
            index.compress(compression)
        index_s = time.perf_counter() - t
        spec = query_model or index.doc_model["spec"]
        t = time.perf_counter()
        model = query_route(load_sentence_transformer(spec, role="serve --query-model"))  # asym: its query route
        if backend != "torch":
            from embed_kd.teachers.bi_backend import with_backend

            model = with_backend(model, backend)
        model_s = time.perf_counter() - t
        info = model_info(model)
        alignment = query_model_alignment(spec, info, index.doc_model,
                                          expect_teacher_fingerprint=expect_teacher_fingerprint,
                                          allow_mismatch=allow_teacher_mismatch)
        logger.info("serving %d docs (%s, dim %d) of '%s' with query model '%s' (alignment: %s)",
                    index.n, index.manifest["kind"], index.dim, index.doc_model["spec"], info["spec"], alignment)
        return cls(model, index, info, alignment, {"open_index_s": index_s, "load_query_model_s": model_s})

    def encode(self, texts: list[str]) -> np.ndarray:
        from embed_kd.encode import encode_texts

        return encode_texts(self.model, texts, batch_size=max(1, len(texts)), normalize=self.index.normalize,
                            role="query", show_progress=False)

    def search_items(self, items: list[tuple[str, int]]) -> list[tuple[list[str], list[float], list[int]]]:
        """``items``: ``(query text, k)`` pairs → per item ``(doc ids, scores, rows)``, best first."""
        if not items:
            return []
        with self._lock:  # one encoder call at a time, whoever calls
            emb = self.encode([text for text, _ in items])
            hits = self.index.search(emb, max(k for _, k in items))
        return [(ids[:k], scores[:k], rows[:k]) for (ids, scores, rows), (_, k) in zip(hits, items)]

    def info(self) -> dict:
        from embed_kd.index.store import index_summary

        return {
            "query_model": self.query_info,
            "doc_model": self.index.doc_model,
            "alignment": self.alignment,
            "index": {"path": str(self.index.path),
                      **{k: v for k, v in index_summary(self.index.manifest).items() if k != "doc_model"}},
            "load_s": self.load_s,
        }
