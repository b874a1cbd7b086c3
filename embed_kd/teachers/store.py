"""The teacher-score store: (query, doc) candidate pairs with teacher scores, on disk, resumable.

Written by ``embed-kd score-teacher``, read by ``train``, ``train-teacher`` and ``eval``. Scoring is
the most expensive step a user runs, so the store is built chunk by chunk: each chunk of queries
is one Parquet file renamed into place when complete, so an interrupted run (even ``kill -9``)
leaves only whole chunks behind and a rerun skips them.

Folder layout (schema ``embed-kd/teacher-scores@1``)::

    OUT/
      manifest.json
      shards/chunk-<first query index, 6 digits>-<last, 6 digits>.parquet

Parquet rows, one per (query_id, doc_id); the rows of one query are contiguous and queries come in
split order (query index = position of the query in the split, 0-based):

========================  ========  =====================================================================
column                    type      meaning
========================  ========  =====================================================================
``query_id``              string    query id
``doc_id``                string    document id
``label``                 int32     qrels relevance for the split (0 when not judged)
``score``                 float32   THE score students learn from: the single teacher's score, or the
                                    ensemble of several teachers (how: ``manifest["ensemble"]``)
``score__<teacher>``      float32   one column per teacher (raw logits unless the teacher's
                                    ``activation`` says otherwise)
``rank__<source>``        int32     one column per candidate source: 1-based rank in that source's
                                    list, -1 when the doc did not come from it (a positive added from
                                    the qrels has -1 everywhere unless a source retrieved it)
========================  ========  =====================================================================

**Margin stores** (``score_kind: "margin"``; written only by ``score-teacher import`` of a file
that holds nothing but margins, :mod:`embed_kd.teachers.importers`): one row per (query, positive,
negative) triple; ``doc_id`` is the negative, a ``pos_id`` string column follows ``score``, and
``score`` / ``score__<teacher>`` hold the margin s(q, pos) − s(q, neg). No absolute score is made
up: :meth:`ScoreStore.iter_queries` refuses such a store and :meth:`ScoreStore.iter_margins`
reads it.

``manifest.json``::

    {
      "schema": "embed-kd/teacher-scores@1",
      "created": ISO-8601 UTC, "versions": {...},
      "device": {"device", "type", "name"},   # where the last run scored (embed_kd.device.device_info)
      "dataset": {"name", "split", "corpus_fingerprint", "queries_fingerprint", "qrels_fingerprint",
                  "n_queries", "notes"},
      "candidates": [{"source": "bm25", "name", "k", ...config}, {"source": "dense", "name", "model",
                     "model_fingerprint", "k"[, "backend": "openvino"|"onnx" (--bi-backend; absent = torch)]}],
      "include_positives": true,
      "teachers": [{"name", "spec", "kind": "cross-encoder"|"bi-encoder"|"bm25", "fingerprint",
                    "activation", "max_length", "backend"}],   # bi-encoders: the --bi-backend runtime
      "ensemble": null | {"norm": "zscore"|"minmax"|"none"|"mean", "weights": {name: w}},
      "config_fingerprint": fingerprint of (dataset fingerprints + n_queries, candidates,
                            include_positives, teachers, ensemble),
      "chunk_size": queries per chunk,
      "shard": null | {"index": I, "count": N},
      "progress": {"queries_done", "rows", "chunks"},
      "chunk_sha256": {chunk file name: sha256 of its bytes},
      "complete": bool,
      "score_kind": "absolute" | "margin"        (absent = absolute; fingerprinted only when "margin"),
      "imported": {...}                          (imports only: format, files + sha256, counts),
      "texts": "texts"                           (imports of texts: OUT/texts/{queries,corpus}.jsonl)
    }

``dataset`` also records ``judged`` (false for queries without judgments) and ``sources``.

Only the fields in ``config_fingerprint`` decide the rows; a teacher's ``spec`` and a dense source's
``model`` (where a model was loaded from; its weights are in ``fingerprint`` / ``model_fingerprint``),
``created``, ``versions`` and ``device`` do not enter it, so the same weights loaded from another folder resume
the same store. A shard ``I/N`` owns the chunks whose number (first query index // chunk_size) is
``I mod N``; ``merge_stores`` joins shard folders into one complete store.

Reading (:func:`open_scores`) validates the manifest (schema, recomputed config fingerprint), the
chunk files (names, no overlap, every query of the split covered exactly once, sha256 equal to
``chunk_sha256`` — Parquet alone does not notice every flipped byte —, columns match the manifest)
and refuses an incomplete store unless ``allow_incomplete=True``. A chunk committed by a run killed
before its manifest update gets its checksum when the store is resumed (the rename made it whole);
stores written before ``chunk_sha256`` existed are read without the checksum check.

>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp()) / "scores"
>>> m = new_manifest(dataset={"name": "toy", "split": "train", "corpus_fingerprint": "c",
...     "queries_fingerprint": "q", "qrels_fingerprint": "r", "n_queries": 1},
...     candidates=[{"source": "bm25", "name": "bm25", "k": 2}],
...     teachers=[{"name": "ce", "spec": "ce", "kind": "cross-encoder", "fingerprint": "f",
...                "activation": None, "max_length": 256, "backend": "torch"}], ensemble=None)
>>> w = ScoreStoreWriter.create(out, m, chunk_size=1)
>>> w.write_chunk(0, 0, {"query_id": ["q1", "q1"], "doc_id": ["d1", "d2"], "label": [1, 0],
...     "score": [2.0, -1.0], "score__ce": [2.0, -1.0], "rank__bm25": [1, 2]})
>>> w.finalize()["complete"]
True
>>> store = open_scores(out)
>>> store.to_run()
{'q1': {'d1': 2.0, 'd2': -1.0}}
>>> store.by_query()["q1"][0]
('d1', 2.0, 1)
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from embed_kd.data.fingerprint import fingerprint_corpus, fingerprint_json, fingerprint_qrels, fingerprint_queries
from embed_kd.device import device_info
from embed_kd.errors import ArtifactError, EmbedKDError
from embed_kd.io import (Artifact, atomic_dir, atomic_write_bytes, atomic_write_json, claim_output, read_json,
                         sha256_file, utc_now, versions)
from embed_kd.numeric import check_finite_array

logger = logging.getLogger(__name__)

SCHEMA = "embed-kd/teacher-scores@1"
MANIFEST = "manifest.json"
#: the advice for a damaged chunk; it works: a deleted chunk is pending again (ScoreStoreWriter.create)
RECOMPUTE = "delete it and rerun the same score-teacher command to recompute it"
#: what :func:`embed_kd.io.claim_output` checks before a store is replaced or resumed
ARTIFACT = Artifact(SCHEMA, MANIFEST, "teacher-score store")
SHARDS = "shards"
LOCK = ".lock"
_CHUNK_RE = re.compile(r"^chunk-(\d{6,})-(\d{6,})\.parquet$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
ENSEMBLE_NORMS = ("zscore", "minmax", "none", "mean")
BASE_COLUMNS = ("query_id", "doc_id", "label", "score")
SCORE_KINDS = ("absolute", "margin")


# --------------------------------------------------------------------------------------------- schema

def check_name(name: str, what: str) -> str:
    """Teacher and source names become column suffixes: letters, digits, ``_ . -`` only."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise EmbedKDError(f"{what} name {name!r} is not valid: use letters, digits, '_', '.' or '-'")
    return name


def teacher_names(manifest: Mapping[str, Any]) -> list[str]:
    return [t["name"] for t in manifest["teachers"]]


def source_names(manifest: Mapping[str, Any]) -> list[str]:
    return [c.get("name") or c["source"] for c in manifest["candidates"]]


def arrow_schema(teachers: Sequence[str], sources: Sequence[str], score_kind: str = "absolute"):
    """The Parquet schema of a store with these teacher and candidate-source names (a ``margin``
    store has a ``pos_id`` column after ``score``)."""
    import pyarrow as pa

    fields = [pa.field("query_id", pa.string(), nullable=False), pa.field("doc_id", pa.string(), nullable=False),
              pa.field("label", pa.int32(), nullable=False), pa.field("score", pa.float32(), nullable=False)]
    if score_kind == "margin":
        fields.append(pa.field("pos_id", pa.string(), nullable=False))
    elif score_kind != "absolute":
        raise EmbedKDError(f"score_kind must be one of {SCORE_KINDS}, got {score_kind!r}")
    fields += [pa.field(f"score__{t}", pa.float32(), nullable=False) for t in teachers]
    fields += [pa.field(f"rank__{s}", pa.int32(), nullable=False) for s in sources]
    return pa.schema(fields)


def score_kind(manifest: Mapping[str, Any]) -> str:
    """``absolute`` (one score per (query, doc); every store before imports) or ``margin``."""
    return manifest.get("score_kind") or "absolute"


def store_schema(manifest: Mapping[str, Any]):
    """The Parquet schema of the store ``manifest`` describes."""
    return arrow_schema(teacher_names(manifest), source_names(manifest), score_kind(manifest))


def config_fingerprint(manifest: Mapping[str, Any]) -> str:
    """Fingerprint of everything that decides the rows (see the module docstring)."""
    ds = manifest["dataset"]
    teachers = [{k: v for k, v in t.items() if k != "spec"} for t in manifest["teachers"]]
    candidates = [{k: v for k, v in c.items() if k != "model"} for c in manifest["candidates"]]
    content = {
        "schema": SCHEMA,
        "dataset": {k: ds.get(k) for k in ("split", "corpus_fingerprint", "queries_fingerprint",
                                           "qrels_fingerprint", "n_queries")},
        "candidates": candidates,
        "include_positives": bool(manifest.get("include_positives", True)),
        "teachers": teachers,
        "ensemble": manifest.get("ensemble"),
    }
    if score_kind(manifest) != "absolute":  # absent from older stores: their fingerprints stay as they were
        content["score_kind"] = score_kind(manifest)
    return fingerprint_json(content)


def _versions() -> dict:
    out = versions()
    with contextlib.suppress(Exception):
        import importlib.metadata as md

        out["pyarrow"] = md.version("pyarrow")
    return out


def new_manifest(*, dataset: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]],
                 teachers: Sequence[Mapping[str, Any]], ensemble: Mapping[str, Any] | None,
                 include_positives: bool = True, shard: Mapping[str, int] | None = None,
                 score_kind: str = "absolute") -> dict:
    """Build a manifest (progress empty, ``complete`` false) and its config fingerprint.

    Raises :class:`EmbedKDError` on a malformed teacher/source list or ensemble.
    """
    if not teachers:
        raise EmbedKDError("at least one teacher is needed")
    names = [check_name(t["name"], "teacher") for t in teachers]
    if len(set(names)) != len(names):
        raise EmbedKDError(f"teacher names must be unique, got {names}")
    srcs = [check_name(c.get("name") or c["source"], "candidate source") for c in candidates]
    if len(set(srcs)) != len(srcs):
        raise EmbedKDError(f"candidate source names must be unique, got {srcs}")
    if ensemble is not None:
        if ensemble.get("norm") not in ENSEMBLE_NORMS:
            raise EmbedKDError(f"ensemble norm must be one of {ENSEMBLE_NORMS}, got {ensemble.get('norm')!r}")
        unknown = set(ensemble.get("weights") or {}) - set(names)
        if unknown:
            raise EmbedKDError(f"ensemble weights name unknown teacher(s) {sorted(unknown)} (teachers: {names})")
    for key in ("name", "split", "corpus_fingerprint", "queries_fingerprint", "qrels_fingerprint", "n_queries"):
        if key not in dataset:
            raise EmbedKDError(f"manifest dataset is missing '{key}'")

    m = {
        "schema": SCHEMA,
        "created": utc_now(),
        "versions": _versions(),
        "device": device_info(),
        "dataset": dict(dataset),
        "candidates": [dict(c) for c in candidates],
        "include_positives": bool(include_positives),
        "teachers": [dict(t) for t in teachers],
        "ensemble": dict(ensemble) if ensemble is not None else None,
        "config_fingerprint": "",
        "chunk_size": None,
        "shard": dict(shard) if shard else None,
        "progress": {"queries_done": 0, "rows": 0, "chunks": 0},
        "complete": False,
    }
    if score_kind != "absolute":
        if score_kind not in SCORE_KINDS:
            raise EmbedKDError(f"score_kind must be one of {SCORE_KINDS}, got {score_kind!r}")
        m["score_kind"] = score_kind
    m["config_fingerprint"] = config_fingerprint(m)
    return m


def chunk_name(first: int, last: int) -> str:
    return f"chunk-{first:06d}-{last:06d}.parquet"


def chunk_ranges(n_queries: int, chunk_size: int, shard: Mapping[str, int] | None = None) -> list[tuple[int, int]]:
    """``(first, last)`` query-index ranges (inclusive) of the chunks a store (or one shard) owns.

    >>> chunk_ranges(5, 2)
    [(0, 1), (2, 3), (4, 4)]
    >>> chunk_ranges(5, 2, {"index": 1, "count": 2})
    [(2, 3)]
    """
    out = []
    for i, first in enumerate(range(0, n_queries, chunk_size)):
        if shard and i % shard["count"] != shard["index"]:
            continue
        out.append((first, min(first + chunk_size, n_queries) - 1))
    return out


def _list_chunks(folder: Path) -> list[tuple[int, int, Path]]:
    shards = folder / SHARDS
    if not shards.is_dir():
        return []
    found = []
    for p in shards.iterdir():
        if p.name.startswith("."):
            continue  # a temporary file of an interrupted write
        m = _CHUNK_RE.match(p.name)
        if not m:
            raise ArtifactError(f"{p}: unexpected file in a score store (expected chunk-NNNNNN-NNNNNN.parquet)")
        first, last = int(m.group(1)), int(m.group(2))
        if last < first:
            raise ArtifactError(f"{p}: chunk name has last query index < first")
        found.append((first, last, p))
    return sorted(found)


def _missing_chunks(folder: Path, manifest: Mapping[str, Any]) -> list[tuple[int, int]]:
    """The chunks a store (or shard) owns that are not on disk (a deleted bad chunk is one)."""
    try:
        owned = chunk_ranges(int(manifest["dataset"]["n_queries"]), int(manifest["chunk_size"]), manifest.get("shard"))
    except (KeyError, TypeError, ValueError):
        return []
    have = {(a, b) for a, b, _ in _list_chunks(folder)}
    return [r for r in owned if r not in have]


def _check_manifest(path: Path, m: Any) -> dict:
    if not isinstance(m, dict) or m.get("schema") != SCHEMA:
        got = m.get("schema") if isinstance(m, dict) else type(m).__name__
        raise ArtifactError(f"{path}: not a teacher-score manifest (schema {got!r}, expected {SCHEMA!r})")
    for key in ("dataset", "candidates", "teachers", "config_fingerprint", "progress", "complete"):
        if key not in m:
            raise ArtifactError(f"{path}: manifest field '{key}' is missing")
    try:
        fp = config_fingerprint(m)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ArtifactError(f"{path}: manifest is malformed ({exc!r})") from None
    if fp != m["config_fingerprint"]:
        raise ArtifactError(f"{path}: config_fingerprint {m['config_fingerprint']} does not match the manifest's "
                            f"content ({fp}); the manifest was edited or is corrupt")
    return m


# --------------------------------------------------------------------------------------------- writer

class ScoreStoreWriter:
    """Writes a store chunk by chunk; one writer per folder at a time (an exclusive lock file).

    Use :meth:`create` (new store, or resume one with the same config fingerprint), then
    :meth:`pending` to know which chunks to compute, :meth:`write_chunk` for each, :meth:`finalize`.
    """

    def __init__(self, folder: Path, manifest: dict, lock_fd: int | None):
        self.folder = folder
        self.manifest = manifest
        self._lock_fd = lock_fd
        self.schema = store_schema(manifest)

    # -- opening
    @staticmethod
    def is_scaffolding(folder: Path) -> bool:
        """True when ``folder`` holds only what :meth:`create` makes before its first manifest (a lock
        file and an empty ``shards/``): a run killed in between left it, and it is free to reuse."""
        try:
            entries = {p.name: p for p in folder.iterdir()}
        except OSError:
            return False
        if not entries or set(entries) - {LOCK, SHARDS}:
            return False
        shards = entries.get(SHARDS)
        return shards is None or (shards.is_dir() and not any(shards.iterdir()))

    @staticmethod
    def clear_scaffolding(folder: Path) -> None:
        """Remove what :meth:`create` made in a folder that existed (empty) before it."""
        with contextlib.suppress(OSError):
            (folder / MANIFEST).unlink()
        with contextlib.suppress(OSError):
            (folder / LOCK).unlink()
        with contextlib.suppress(OSError):
            (folder / SHARDS).rmdir()

    @classmethod
    def create(cls, folder: str | os.PathLike, manifest: dict, *, chunk_size: int = 64,
               overwrite: bool = False, resume: bool = True) -> "ScoreStoreWriter":
        """Open ``folder`` for writing ``manifest``'s config.

        - folder absent or empty: a new store;
        - folder is a store with the same config fingerprint and ``resume``: its committed chunks are
          kept (the chunk size of the existing store wins);
        - anything else (another config, a complete store, not a store): refused unless
          ``overwrite``, which removes the old store first.
        """
        folder = Path(folder)
        manifest = dict(manifest)
        existing = folder / MANIFEST
        # the ownership rule: only an embed-kd score store is ever replaced or resumed here
        claimed = False if cls.is_scaffolding(folder) else claim_output(folder, ARTIFACT, overwrite=True)
        if claimed:
            if overwrite:
                shutil.rmtree(folder)
            else:
                old = _check_manifest(existing, read_json(existing, "score-store manifest"))
                if old["config_fingerprint"] != manifest["config_fingerprint"]:
                    raise ArtifactError(
                        f"{folder}: holds scores made with another config (fingerprint {old['config_fingerprint']}, "
                        f"this run {manifest['config_fingerprint']}: {_diff(old, manifest)}); "
                        "pass --overwrite to replace it")
                if (old.get("shard") or None) != (manifest.get("shard") or None):
                    raise ArtifactError(f"{folder}: was written as shard {old.get('shard')}, this run is shard "
                                        f"{manifest.get('shard')}; pass --overwrite to replace it")
                if old.get("complete") and not _missing_chunks(folder, old):
                    raise ArtifactError(f"{folder}: already complete; pass --overwrite to recompute it")
                if not resume:
                    raise ArtifactError(f"{folder}: holds a partial run of the same config; "
                                        "resume it or pass --overwrite")
                chunk_size = int(old.get("chunk_size") or chunk_size)
                manifest["created"] = old.get("created", manifest.get("created"))
                # a chunk the user deleted (bad-chunk advice) is pending again: keep only the present ones' sums
                present = {p.name for _, _, p in _list_chunks(folder)}
                manifest["chunk_sha256"] = {k: v for k, v in (old.get("chunk_sha256") or {}).items() if k in present}
        if chunk_size < 1:
            raise EmbedKDError(f"chunk size must be >= 1, got {chunk_size}")
        manifest["chunk_size"] = int(chunk_size)
        (folder / SHARDS).mkdir(parents=True, exist_ok=True)
        lock_fd = _lock(folder)
        writer = cls(folder, manifest, lock_fd)
        writer._refresh_progress()
        atomic_write_json(folder / MANIFEST, writer.manifest)
        return writer

    # -- progress
    @property
    def chunk_size(self) -> int:
        return int(self.manifest["chunk_size"])

    def owned(self) -> list[tuple[int, int]]:
        return chunk_ranges(int(self.manifest["dataset"]["n_queries"]), self.chunk_size, self.manifest.get("shard"))

    def done(self) -> set[tuple[int, int]]:
        return {(a, b) for a, b, _ in _list_chunks(self.folder)}

    def pending(self) -> list[tuple[int, int]]:
        done = self.done()
        return [r for r in self.owned() if r not in done]

    def _refresh_progress(self) -> None:
        import pyarrow.parquet as pq

        owned = set(self.owned())
        queries = rows = chunks = 0
        listed = _list_chunks(self.folder)
        present = {p.name for _, _, p in listed}
        sums = self.manifest.setdefault("chunk_sha256", {})
        for gone in [k for k in sums if k not in present]:
            del sums[gone]
        if len(listed) < len(owned):
            self.manifest["complete"] = False
        for a, b, p in listed:
            if (a, b) not in owned:
                raise ArtifactError(f"{p}: chunk does not belong to this store's chunking "
                                    f"(chunk size {self.chunk_size}, shard {self.manifest.get('shard')})")
            try:
                rows += pq.read_metadata(p).num_rows
            except Exception as exc:  # noqa: BLE001 - any read failure means a corrupt chunk
                raise ArtifactError(f"{p}: unreadable chunk ({' '.join(str(exc).split())}); {RECOMPUTE}") from None
            queries += b - a + 1
            chunks += 1
            if p.name not in sums:
                sums[p.name] = sha256_file(p)
        self.manifest["progress"] = {"queries_done": queries, "rows": rows, "chunks": chunks}

    # -- writing
    def write_chunk(self, first: int, last: int, columns: Mapping[str, Sequence] | Any) -> None:
        """Commit the rows of queries ``first..last`` (a dict of columns or a ``pyarrow.Table``).

        The file is written to a temporary name and renamed, then the manifest's progress updated.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        if (first, last) not in set(self.owned()):
            raise EmbedKDError(f"chunk {first}-{last} is not one of this store's chunks")
        table = columns if isinstance(columns, pa.Table) else _table_from_columns(columns, self.schema)
        if table.schema.names != self.schema.names:
            raise EmbedKDError(f"chunk columns {table.schema.names} do not match the store's {self.schema.names}")
        table = table.cast(self.schema)
        _check_finite_scores(table, f"{self.folder}: chunk {first}-{last}, not written")
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        data = sink.getvalue().to_pybytes()
        atomic_write_bytes(self.folder / SHARDS / chunk_name(first, last), data)
        self.manifest.setdefault("chunk_sha256", {})[chunk_name(first, last)] = hashlib.sha256(data).hexdigest()
        prog = self.manifest["progress"]
        prog["queries_done"] += last - first + 1
        prog["rows"] += table.num_rows
        prog["chunks"] += 1
        atomic_write_json(self.folder / MANIFEST, self.manifest)

    def finalize(self) -> dict:
        """Mark the store complete (every owned chunk present); returns the manifest."""
        missing = self.pending()
        if missing:
            raise ArtifactError(f"{self.folder}: cannot finalise, {len(missing)} chunk(s) missing "
                                f"(first: {chunk_name(*missing[0])})")
        self._refresh_progress()
        self.manifest["complete"] = True
        atomic_write_json(self.folder / MANIFEST, self.manifest)
        self.close()
        return self.manifest

    def close(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "ScoreStoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_finite_scores(table, where: str) -> None:
    """Refuse NaN / ±inf in the score columns (a NaN teacher or weight would poison every margin)."""
    import numpy as np

    qids = None
    names = [n for n in table.schema.names if n.startswith("score__")] + ["score"]  # a teacher first: the cause
    for name in names:
        if name not in table.schema.names:
            continue
        col = table.column(name).to_numpy(zero_copy_only=False)
        if col.size and not np.isfinite(col).all():
            qids = qids if qids is not None else table.column("query_id").to_pylist()
            i = int(np.flatnonzero(~np.isfinite(col))[0])
            label = "ensemble score" if name == "score" else f"score of teacher '{name.removeprefix('score__')}'"
            try:
                check_finite_array(col, f"{where}: the {label}")
            except EmbedKDError as exc:
                raise EmbedKDError(f"{exc} (query '{qids[i]}', document '{table.column('doc_id')[i].as_py()}')"
                                   ) from None


def _check_finite_read(table, path: Path) -> None:
    """A chunk read back must hold finite scores (one written before the check, or edited): refused by name."""
    import numpy as np
    import pyarrow as pa

    for i, field in enumerate(table.schema):
        if not pa.types.is_floating(field.type):
            continue
        col = table.column(i).to_numpy(zero_copy_only=False)
        if col.size and not np.isfinite(col).all():
            n = int((~np.isfinite(col)).sum())
            raise ArtifactError(f"{path}: column '{field.name}' holds {n} non-finite value(s) (NaN or infinite); "
                                "the scores cannot be trained on — delete the chunk and rerun the same "
                                "score-teacher command to recompute it, after fixing what made them")


def _table_from_columns(columns: Mapping[str, Sequence], schema):
    import pyarrow as pa

    missing = [n for n in schema.names if n not in columns]
    extra = [n for n in columns if n not in schema.names]
    if missing or extra:
        raise EmbedKDError(f"chunk columns do not match the store: missing {missing}, unexpected {extra}")
    lengths = {n: len(columns[n]) for n in schema.names}
    if len(set(lengths.values())) > 1:
        raise EmbedKDError(f"chunk columns have different lengths: {lengths}")
    return pa.table({f.name: pa.array(columns[f.name], type=f.type) for f in schema}, schema=schema)


def _lock(folder: Path) -> int:
    import fcntl

    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ArtifactError(f"{folder}: another score-teacher process is writing this store") from None
    return fd


def _diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = []
    for key in ("dataset", "candidates", "include_positives", "teachers", "ensemble"):
        a, b = old.get(key), new.get(key)
        if key in ("teachers", "candidates"):
            drop = "spec" if key == "teachers" else "model"
            a = [{k: v for k, v in t.items() if k != drop} for t in a or []]
            b = [{k: v for k, v in t.items() if k != drop} for t in b or []]
        if key == "dataset":
            a = {k: (a or {}).get(k) for k in ("split", "corpus_fingerprint", "queries_fingerprint",
                                               "qrels_fingerprint", "n_queries")}
            b = {k: (b or {}).get(k) for k in a}
        if a != b:
            keys.append(key)
    return "differs in " + (", ".join(keys) or "schema")


def write_store(folder: str | os.PathLike, manifest: dict, table, *, overwrite: bool = False) -> "ScoreStore":
    """Write a whole store at once (e.g. a re-weighted ensemble of an existing store) and open it.

    ``table`` holds every row (queries contiguous, split order); it is written as one chunk.
    """
    folder = Path(folder)
    claim_output(folder, ARTIFACT, overwrite=overwrite)
    n = int(manifest["dataset"]["n_queries"])
    w = ScoreStoreWriter.create(folder, manifest, chunk_size=max(n, 1), overwrite=overwrite, resume=False)
    try:
        w.write_chunk(0, n - 1, table)
        w.finalize()
    finally:
        w.close()
    return open_scores(folder)


# --------------------------------------------------------------------------------------------- reader

@dataclass
class ScoreStore:
    """A validated, read-only score store (see :func:`open_scores`)."""

    path: Path
    manifest: dict
    chunks: list[Path]

    @property
    def teachers(self) -> list[str]:
        return teacher_names(self.manifest)

    @property
    def sources(self) -> list[str]:
        return source_names(self.manifest)

    def table(self, columns: Sequence[str] | None = None):
        """All rows as one ``pyarrow.Table`` (queries contiguous, split order)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = store_schema(self.manifest)
        if not self.chunks:
            return schema.empty_table() if columns is None else schema.empty_table().select(list(columns))
        tables = []
        for p in self.chunks:
            try:
                t = pq.read_table(p, columns=list(columns) if columns else None)
            except Exception as exc:  # noqa: BLE001
                raise ArtifactError(f"{p}: unreadable chunk ({' '.join(str(exc).split())}); {RECOMPUTE}") from None
            _check_finite_read(t, p)
            tables.append(t)
        return pa.concat_tables(tables)

    #: rows decoded at a time when streaming (:meth:`iter_batches`): bounds the reader's memory
    BATCH_ROWS = 65536

    def iter_batches(self, columns: Sequence[str], batch_rows: int | None = None):
        """``pyarrow.RecordBatch`` es of ``columns`` in store order, one Parquet batch at a time (never
        the whole store in memory)."""
        import pyarrow.parquet as pq

        for p in self.chunks:
            try:
                pf = pq.ParquetFile(p)
                batches = pf.iter_batches(batch_size=batch_rows or self.BATCH_ROWS, columns=list(columns))
                for batch in batches:
                    _check_finite_read(batch, p)
                    yield batch
            except ArtifactError:
                raise
            except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged file
                raise ArtifactError(f"{p}: unreadable chunk ({' '.join(str(exc).split())}); {RECOMPUTE}") from None

    @property
    def score_kind(self) -> str:
        """``absolute`` or ``margin`` (see the module docstring)."""
        return score_kind(self.manifest)

    @property
    def texts_dir(self) -> Path | None:
        """The folder of query and document texts an import stored beside the scores (or None)."""
        rel = self.manifest.get("texts")
        return self.path / rel if rel else None

    def iter_margins(self, column: str = "score") -> Iterator[tuple[str, list[tuple[str, str, float]]]]:
        """A ``margin`` store's ``(qid, [(pos_id, neg_id, margin), ...])`` per query in split order (streams)."""
        if self.score_kind != "margin":
            raise EmbedKDError(f"{self.path}: holds absolute scores, not margins (use iter_queries)")
        self._check_column(column)
        cur_q, cur = None, []
        for batch in self.iter_batches(["query_id", "pos_id", "doc_id", column]):
            cols = [batch.column(i).to_pylist() for i in range(4)]
            for q, p, d, m in zip(*cols):
                if q != cur_q:
                    if cur:
                        yield cur_q, cur
                    cur_q, cur = q, []
                cur.append((p, d, float(m)))
        if cur:
            yield cur_q, cur

    def iter_queries(self, column: str = "score") -> Iterator[tuple[str, list[tuple[str, float, int]]]]:
        """``(qid, [(doc_id, score, label), ...])`` per query in split order, candidates in store order.

        Streams: one Parquet batch and one query's candidates are held at a time. A ``margin`` store
        has no score per document: it is refused (read it with :meth:`iter_margins`).
        """
        if self.score_kind == "margin":
            raise EmbedKDError(f"{self.path}: holds teacher margins s(q, pos) - s(q, neg), not one score per "
                               "document; it trains Margin-MSE / KL students but has no per-document ranking")
        self._check_column(column)
        cur_q, cur = None, []
        for batch in self.iter_batches(["query_id", "doc_id", column, "label"]):
            qids, dids = batch.column(0).to_pylist(), batch.column(1).to_pylist()
            scores, labels = batch.column(2).to_pylist(), batch.column(3).to_pylist()
            for q, d, s, lab in zip(qids, dids, scores, labels):
                if q != cur_q:
                    if cur:
                        yield cur_q, cur
                    cur_q, cur = q, []
                cur.append((d, float(s), int(lab)))
        if cur:
            yield cur_q, cur

    def iter_ranked(self, column: str = "score") -> Iterator[tuple[str, list[tuple[str, float, int]]]]:
        """:meth:`iter_queries` with each query's candidates sorted by score descending (ties: doc id)."""
        for q, rows in self.iter_queries(column):
            yield q, sorted(rows, key=lambda r: (-r[1], r[0]))

    def query_ids(self) -> list[str]:
        """The store's query ids in store order (reads only the ``query_id`` column)."""
        out: list[str] = []
        for batch in self.iter_batches(["query_id"]):
            for q in batch.column(0).to_pylist():
                if not out or out[-1] != q:
                    out.append(q)
        return out

    def by_query(self, column: str = "score") -> dict[str, list[tuple[str, float, int]]]:
        """``{qid: [(doc_id, score, label), ...]}`` sorted by score descending (ties: doc id).

        Holds every candidate in memory: corpus-scale readers use :meth:`iter_ranked` instead.
        """
        return dict(self.iter_ranked(column))

    def to_run(self, column: str = "score") -> dict[str, dict[str, float]]:
        """A TREC-style run ``{qid: {doc_id: score}}`` of one score column."""
        return {q: {d: s for d, s, _ in rows} for q, rows in self.iter_queries(column)}

    def qrels(self) -> dict[str, dict[str, int]]:
        """The judged pairs present in the store (label > 0)."""
        out: dict[str, dict[str, int]] = {}
        for q, rows in self.iter_queries():
            out[q] = {d: lab for d, _, lab in rows if lab > 0}
        return out

    def check_dataset(self, dataset) -> None:
        """Refuse when ``dataset`` (a BeirDataset) is not the one the scores were made on."""
        ds = self.manifest["dataset"]
        got = {"corpus_fingerprint": fingerprint_corpus(dataset.corpus),
               "queries_fingerprint": fingerprint_queries(dataset.queries),
               "qrels_fingerprint": fingerprint_qrels(dataset.qrels)}
        bad = [k for k, v in got.items() if ds.get(k) != v]
        if bad:
            raise ArtifactError(f"{self.path}: scores were made on another dataset/split ({', '.join(bad)} differ; "
                                f"store: {ds.get('name')}/{ds.get('split')}, given: {dataset.name}/{dataset.split})")

    def _check_column(self, column: str) -> None:
        allowed = ["score"] + [f"score__{t}" for t in self.teachers]
        if column not in allowed:
            raise EmbedKDError(f"{self.path}: no score column {column!r} (available: {', '.join(allowed)})")


def open_scores(path: str | os.PathLike, *, allow_incomplete: bool = False) -> ScoreStore:
    """Open and validate a score store folder.

    Checks: manifest schema and config fingerprint; chunk file names; no overlapping chunks; every
    query index of the split (or of the shard) covered exactly once when complete; each chunk's
    Parquet schema equals the manifest's columns. Errors are :class:`ArtifactError` naming the file.
    """
    import pyarrow.parquet as pq

    folder = Path(path)
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: score store not found")
    mpath = folder / MANIFEST
    m = _check_manifest(mpath, read_json(mpath, "score-store manifest"))
    chunks = _list_chunks(folder)
    n = int(m["dataset"]["n_queries"])
    prev_last = -1
    for a, b, p in chunks:
        if a <= prev_last:
            raise ArtifactError(f"{p}: overlaps the previous chunk (queries up to {prev_last})")
        if b >= n:
            raise ArtifactError(f"{p}: query index {b} is beyond the split's {n} queries")
        prev_last = b
    if not allow_incomplete:
        if m.get("shard"):
            raise ArtifactError(f"{folder}: is shard {m['shard']['index']}/{m['shard']['count']} of a sharded run; "
                                "join the shards with `embed-kd score-teacher merge`")
        if not m.get("complete"):
            prog = m.get("progress") or {}
            raise ArtifactError(f"{folder}: incomplete score store ({prog.get('queries_done', '?')}/{n} queries "
                                "scored); rerun the same score-teacher command to resume it")
        covered = sum(b - a + 1 for a, b, _ in chunks)
        missing = _missing_chunks(folder, m)
        if missing:  # a chunk deleted after completion (the bad-chunk advice): pending again, not complete
            raise ArtifactError(f"{folder}: incomplete score store: its chunks cover {covered} of {n} queries "
                                f"(pending: {', '.join(chunk_name(a, b) for a, b in missing)}); rerun the same "
                                "score-teacher command to score the missing chunk(s)")
        if covered != n or (chunks and (chunks[0][0] != 0 or chunks[-1][1] != n - 1)):
            raise ArtifactError(f"{folder}: marked complete but its chunks cover {covered} of {n} queries")
        for (a1, b1, _), (a2, _, p2) in zip(chunks, chunks[1:]):
            if a2 != b1 + 1:
                raise ArtifactError(f"{p2}: gap before this chunk (queries {b1 + 1}-{a2 - 1} missing)")
    expected = store_schema(m)
    sums = m.get("chunk_sha256") or {}
    for _, _, p in chunks:
        try:
            schema = pq.read_schema(p)
        except Exception as exc:  # noqa: BLE001
            raise ArtifactError(f"{p}: unreadable chunk ({' '.join(str(exc).split())}); {RECOMPUTE}") from None
        if p.name in sums and sha256_file(p) != sums[p.name]:
            raise ArtifactError(f"{p}: checksum does not match {MANIFEST} (modified or corrupt); delete it and rerun "
                                "the same score-teacher command to recompute it")
        if schema.names != expected.names:
            raise ArtifactError(f"{p}: columns {schema.names} do not match the manifest's {expected.names}")
    return ScoreStore(folder, m, [p for _, _, p in chunks])


def merge_stores(shard_folders: Iterable[str | os.PathLike], out: str | os.PathLike, *,
                 overwrite: bool = False) -> ScoreStore:
    """Join the shard folders of one sharded run into a complete store at ``out``.

    Every shard must have the same config fingerprint and chunk size, be complete, and together
    the shards must be exactly ``0..N-1`` of ``count`` (no shard twice, none missing).
    """
    claim_output(out, ARTIFACT, overwrite=overwrite)  # the output first: a refusal should not cost the checks
    stores = [open_scores(f, allow_incomplete=True) for f in shard_folders]
    if not stores:
        raise EmbedKDError("merge needs at least one shard folder")
    first = stores[0].manifest
    count = (first.get("shard") or {}).get("count")
    seen: dict[int, Path] = {}
    for s in stores:
        m = s.manifest
        if m["config_fingerprint"] != first["config_fingerprint"]:
            raise ArtifactError(f"{s.path}: made with another config ({m['config_fingerprint']} vs "
                                f"{first['config_fingerprint']} in {stores[0].path}: {_diff(first, m)})")
        if m.get("chunk_size") != first.get("chunk_size"):
            raise ArtifactError(f"{s.path}: chunk size {m.get('chunk_size')} differs from {first.get('chunk_size')}")
        shard = m.get("shard")
        if not shard or shard.get("count") != count:
            raise ArtifactError(f"{s.path}: not a shard of a {count}-way run (shard: {shard})")
        if shard["index"] in seen:
            raise ArtifactError(f"{s.path}: shard {shard['index']}/{count} given twice (also {seen[shard['index']]})")
        seen[shard["index"]] = s.path
        if not m.get("complete"):
            prog = m.get("progress") or {}
            raise ArtifactError(f"{s.path}: shard {shard['index']}/{count} is incomplete "
                                f"({prog.get('queries_done', '?')} queries done); resume it first")
        owned = set(chunk_ranges(int(m["dataset"]["n_queries"]), int(m["chunk_size"]), shard))
        have = {tuple(map(int, _CHUNK_RE.match(p.name).groups())) for p in s.chunks}
        if have != owned:
            raise ArtifactError(f"{s.path}: chunks do not match shard {shard['index']}/{count}")
    missing = sorted(set(range(count or 0)) - set(seen))
    if missing:
        raise ArtifactError(f"merge: shard(s) {', '.join(f'{i}/{count}' for i in missing)} missing")
    out = Path(out)
    claim_output(out, ARTIFACT, overwrite=overwrite)
    manifest = dict(first)
    manifest["shard"] = None
    with atomic_dir(out, overwrite=overwrite, artifact=ARTIFACT) as tmp:
        (tmp / SHARDS).mkdir()
        rows = chunks = 0
        for s in stores:
            rows += s.manifest["progress"]["rows"]
            for p in s.chunks:
                shutil.copyfile(p, tmp / SHARDS / p.name)
                chunks += 1
        manifest["progress"] = {"queries_done": int(manifest["dataset"]["n_queries"]), "rows": rows, "chunks": chunks}
        manifest["complete"] = True
        manifest["chunk_sha256"] = {k: v for s in stores for k, v in (s.manifest.get("chunk_sha256") or {}).items()}
        manifest["merged_from"] = [str(s.path) for s in stores]
        atomic_write_json(tmp / MANIFEST, manifest)
    return open_scores(out)
