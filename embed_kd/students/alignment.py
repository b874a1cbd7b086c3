"""Is a query model in a document model's embedding space? The check ``embed-kd serve`` and
``embed-kd eval --query-model/--doc-model`` apply before any search.

Asymmetric retrieval only works when the query model lives in the doc model's embedding space.
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
from pathlib import Path
from typing import Any

from embed_kd.errors import ArtifactError, EmbedKDError
from embed_kd.io import read_json
from embed_kd.presets import locate_model

logger = logging.getLogger(__name__)

TRAIN_MANIFEST, TRAIN_SCHEMA = "embed_kd_train.json", "embed-kd/train-run@1"
MANIFEST_NAMES = (TRAIN_MANIFEST, "embed_kd_manifest.json", "run_manifest.json")
_TEACHER_FIELDS = (("embedding_teacher", "fingerprint"), ("aligned_to", "fingerprint"),
                   ("embedding_teacher_fingerprint",))
FINGERPRINT = re.compile(r"^[0-9a-f]{16}$")


def check_fingerprint_flag(value: str | None) -> None:
    """``--expect-teacher-fingerprint``: 16 hex digits, or absent."""
    if value is not None and not FINGERPRINT.match(value):
        raise EmbedKDError(f"--expect-teacher-fingerprint {value!r}: expected 16 hex digits")


def declared_teacher_fingerprint(model_dir: str | Path) -> tuple[str | None, Path | None]:
    """``(fingerprint, manifest path)`` of the embedding teacher a model folder declares, else ``(None, None)``."""
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
            if not isinstance(value, str) or not FINGERPRINT.match(value):
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
    check_fingerprint_flag(expect_teacher_fingerprint)
    declared, source = expect_teacher_fingerprint, "--expect-teacher-fingerprint"
    if declared is None:
        declared, path = declared_teacher_fingerprint(locate_model(query_spec)[0])
        source = str(path) if path else ""
    return check_query_model(query, doc, declared=declared, source=source, allow_mismatch=allow_mismatch, docs=docs)
