"""A persisted FAISS index folder: documents encoded once by the doc model (the teacher), served many times.

``embed-kd index build`` writes it, ``embed-kd index add`` appends documents to it and
``embed-kd serve`` searches it with a query model (the teacher itself, or a student aligned to it).

On-disk layout (schema ``embed-kd/index@1``)::

    IDX/
      index.faiss     faiss.serialize_index bytes (what faiss.write_index writes); FAISS row i is ids[i]
      ids.json        JSON list of the n document ids, in row order
      docs.jsonl      one {"_id", "title", "text"} a line, in row order (texts for ``return_text``)
      manifest.json   written last; see below

``manifest.json``::

    {
      "schema": "embed-kd/index@1",
      "kind": "flat" | "hnsw" | "ivfpq",        # see embed_kd.index.faiss_index (``auto`` is resolved)
      "factory": "IVF894,PQ48x8",                # faiss.index_factory string it was built from (absent
                                                 # in indexes written before it was recorded)
      "metric": "inner_product",
      "n": int, "dim": int,
      "normalize": bool,                         # documents (and queries) are L2-normalised
      "doc_model": {"spec", "fingerprint", "dim", "max_seq_length"[, "backend"]},  # backend: --backend
                                                 # openvino|onnx of the build ("openvino-f32" / "onnx-f32")
      "corpus": {"name", "source", "fingerprint", "n_docs"},  # fingerprint over all docs, row order
      "batches": [{"source", "corpus_fingerprint", "n", "first_row", "added", "device"[, "backend"]}],
                                                 # build, then each add; backend: its runtime when not torch
      "device": {"device", "type", "name"},      # where the build encoded (embed_kd.device.device_info)
      "files": {"index.faiss": sha256, "ids.json": sha256, "docs.jsonl": sha256},
      "compression": {"truncate_dim", "precision", "rescore", "dim", "bytes_per_vector",
                      "ranges": [[min…], [max…]] | null},   # only when built with --truncate-dim /
                                                 # --precision (embed_kd.index.compression); then "dim" is
                                                 # the stored dimension, queries come at doc_model.dim
      "versions": {...}, "created": ISO-8601 UTC, "updated": ISO-8601 UTC
    }

A compressed index (``compression`` present) holds an ``IndexBinaryFlat`` (binary/ubinary,
``faiss.serialize_index_binary`` bytes) or an ``IndexScalarQuantizer`` over the int8/uint8 codes;
queries are truncated and quantized with the recorded ranges before the search.

``corpus.fingerprint`` is :func:`embed_kd.data.fingerprint_corpus` over every document in row
order, so a freshly built index carries the same corpus fingerprint as ``embed-kd eval`` results
and the embedding cache for that corpus.

Atomicity: a build or an add writes a complete new folder next to ``IDX`` (``.IDX.*.tmp``) and
renames it into place (:func:`embed_kd.io.atomic_dir`); the manifest, with the sha256 of every
file, is written last. An interrupted build leaves no ``IDX``; an interrupted add leaves the old
``IDX`` intact. A reader (:func:`open_index`) checks the schema, the files' checksums, and that
FAISS, ids and manifest agree on ``n`` and ``dim``; anything else is an :class:`ArtifactError`.
Concurrent adds to one folder are serialised with a lock file ``.IDX.lock`` beside it.

>>> import numpy as np, tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> docs = {"a": {"title": "", "text": "cats"}, "b": {"title": "", "text": "dogs"}}
>>> info = {"spec": "toy", "fingerprint": "f" * 16, "dim": 2, "max_seq_length": None}
>>> m = write_index(root / "idx", np.eye(2, dtype="float32"), docs, doc_model=info, normalize=True)
>>> m["n"], m["dim"], m["kind"]
(2, 2, 'flat')
>>> m = append_to_index(root / "idx", np.array([[0.6, 0.8]], dtype="float32"),
...                     {"c": {"title": "", "text": "both"}}, doc_model_fingerprint="f" * 16)
>>> idx = open_index(root / "idx")
>>> idx.search(np.array([[0.0, 1.0]], dtype="float32"), k=2)[0][0]
['b', 'c']
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from embed_kd import distributed as dist
from embed_kd.data.fingerprint import fingerprint_corpus
from embed_kd.errors import ArtifactError, EmbedKDError
from embed_kd.device import device_info
from embed_kd.index.compression import BINARY, CompressedSearch, Compression
from embed_kd.index.faiss_index import KIND_CHOICES, build_faiss_index, factory_string, resolve_kind, search_index
from embed_kd.io import Artifact, atomic_dir, claim_output, read_json, sha256_file, utc_now, versions

logger = logging.getLogger(__name__)

SCHEMA = "embed-kd/index@1"
#: the ownership rule (:func:`embed_kd.io.claim_output`): only an embed-kd index folder is replaced
ARTIFACT = Artifact(SCHEMA, "manifest.json", "index folder")
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.json"
DOCS_FILE = "docs.jsonl"
MANIFEST_FILE = "manifest.json"
_FILES = (INDEX_FILE, IDS_FILE, DOCS_FILE)


@dataclass
class PersistedIndex:
    """An opened index folder: the FAISS index, row → id map, documents and manifest."""

    path: Path
    index: object
    ids: list[str]
    manifest: dict
    docs: list[dict] = field(default_factory=list)
    compressed: CompressedSearch | None = None  # a --truncate-dim / --precision index (manifest "compression")

    @property
    def n(self) -> int:
        return int(self.manifest["n"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def normalize(self) -> bool:
        return bool(self.manifest["normalize"])

    @property
    def doc_model(self) -> dict:
        return self.manifest["doc_model"]

    def search(self, query_emb: np.ndarray, k: int) -> list[tuple[list[str], list[float], list[int]]]:
        """Top-``k`` per query row: ``(doc ids, scores, rows)``, best first (fewer when n < k)."""
        query_emb = np.asarray(query_emb, dtype=np.float32)
        want = int(self.doc_model["dim"]) if self.compressed is not None else self.dim  # truncated here
        if query_emb.ndim != 2 or query_emb.shape[1] != want:
            raise EmbedKDError(f"query embeddings have shape {tuple(query_emb.shape)}; expected (m, {want})")
        if self.compressed is not None:
            scores, rows = self.compressed.search(query_emb, k)
        else:
            scores, rows = search_index(self.index, query_emb, k)
        out = []
        for srow, rrow in zip(scores, rows):
            keep = [(int(r), float(s)) for r, s in zip(rrow, srow) if r >= 0]
            out.append(([self.ids[r] for r, _ in keep], [s for _, s in keep], [r for r, _ in keep]))
        return out

    def compress(self, spec: Compression) -> None:
        """Search with ``spec`` from now on (``embed-kd serve --truncate-dim/--precision/--rescore``), in memory.

        A compressed index only takes another ``rescore``; a float ``flat`` index is re-encoded from
        its stored vectors (truncated / quantized, int8 ranges calibrated on them).
        """
        if self.compressed is not None:
            have = self.compressed.spec
            if (spec.truncate_dim not in (None, have.truncate_dim)
                    or spec.precision not in ("float32", have.precision)):
                raise EmbedKDError(f"{self.path}: the index was built with --truncate-dim {have.truncate_dim} "
                                   f"--precision {have.precision}; serve it with those (only --rescore may change)")
            spec = Compression(have.truncate_dim, have.precision, spec.rescore)
            self.compressed = CompressedSearch(spec, self.index, self.compressed.dim, self.normalize,
                                               self.compressed.ranges)
        else:
            if self.manifest["kind"] != "flat":
                raise EmbedKDError(f"{self.path}: a {self.manifest['kind']} index cannot be compressed at serve time "
                                   "(its vectors are not stored exactly); build it with index build --truncate-dim/"
                                   "--precision")
            vectors = self.index.reconstruct_n(0, self.n)
            self.compressed = CompressedSearch.build(vectors, spec, normalize=self.normalize)
            self.index = self.compressed.index
        self.manifest = {**self.manifest, "compression": self.compressed.manifest()}

    def text(self, row: int) -> str:
        """The document text as the doc model encoded it (``title + " " + text``)."""
        from embed_kd.data.beir import doc_text

        return doc_text(self.docs[row])


# ------------------------------------------------------------------------------------------ writing


def _write_files(folder: Path, index, ids: list[str], docs) -> dict:
    import faiss

    # serialised in memory and written by Python: a full disk raises OSError here (faiss.write_index
    # only prints "close error" to stderr and leaves a short file)
    serialize = faiss.serialize_index_binary if isinstance(index, faiss.IndexBinary) else faiss.serialize_index
    with (folder / INDEX_FILE).open("wb") as fh:
        fh.write(serialize(index).tobytes())
    (folder / IDS_FILE).write_text(json.dumps(ids, ensure_ascii=False), encoding="utf-8")
    with (folder / DOCS_FILE).open("w", encoding="utf-8") as fh:
        for doc_id, doc in zip(ids, docs):
            fh.write(json.dumps({"_id": doc_id, "title": doc.get("title") or "", "text": doc.get("text") or ""},
                                ensure_ascii=False) + "\n")
    return {name: sha256_file(folder / name) for name in _FILES}


def _write_manifest(folder: Path, manifest: dict) -> None:
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _check_embeddings(emb: np.ndarray, corpus: Mapping, what: str) -> np.ndarray:
    if emb.dtype != np.float32:
        emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(corpus):
        raise EmbedKDError(f"{what}: embeddings have shape {tuple(emb.shape)}; expected ({len(corpus)}, dim)")
    for a in range(0, emb.shape[0], 65536):  # blockwise: a memory-mapped matrix is not copied whole
        if not np.isfinite(emb[a : a + 65536]).all():
            raise EmbedKDError(f"{what}: embeddings contain NaN or infinite values")
    return emb


#: the ``factory`` recorded for a quantized index (FAISS factory strings of the index it holds)
_COMPRESSED_FACTORY = {"int8": "SQ8_direct_signed", "uint8": "SQ8_direct", "binary": "BFlat", "ubinary": "BFlat"}


def write_index(output: str | Path, emb: np.ndarray, corpus: Mapping[str, Mapping[str, str]], *, doc_model: dict,
                normalize: bool, kind: str = "flat", name: str = "", source: str = "", overwrite: bool = False,
                compression: Compression | None = None) -> dict:
    """Build a FAISS index over ``emb`` (row i = ``list(corpus)[i]``) and persist it atomically.

    ``doc_model`` is :func:`embed_kd.models.model_info` of the model that made
    ``emb``. ``compression``: store truncated / quantized vectors (:mod:`embed_kd.index.compression`;
    ``emb`` stays the full float embeddings). Returns the manifest.
    """
    output = Path(output)
    claim_output(output, ARTIFACT, overwrite=overwrite)
    if not corpus:
        raise EmbedKDError("no documents to index")
    kind = resolve_kind(kind, len(corpus))
    emb = _check_embeddings(emb, corpus, str(output))
    ids = list(corpus)
    corpus_fp = fingerprint_corpus(corpus)
    if compression is not None and (compression.active or compression.rescore):
        cs = CompressedSearch.build(emb, compression, normalize=normalize, kind=kind)
        index, dim, extra = cs.index, cs.dim, {"compression": cs.manifest()}
        factory = (_COMPRESSED_FACTORY.get(compression.precision) or factory_string(len(ids), cs.dim, kind))
    else:
        index, dim, extra = build_faiss_index(emb, kind), int(emb.shape[1]), {}
        factory = factory_string(len(ids), dim, kind)
    created = utc_now()
    with atomic_dir(output, overwrite=overwrite, artifact=ARTIFACT) as tmp:
        files = _write_files(tmp, index, ids, (corpus[d] for d in ids))
        manifest = {
            "schema": SCHEMA, "kind": kind, "factory": factory,
            "metric": "hamming" if compression is not None and compression.precision in BINARY else "inner_product",
            "n": len(ids), "dim": dim, "normalize": bool(normalize), **extra,
            "doc_model": dict(doc_model),
            "corpus": {"name": name, "source": source, "fingerprint": corpus_fp, "n_docs": len(ids)},
            "batches": [{"source": source, "corpus_fingerprint": corpus_fp, "n": len(ids), "first_row": 0,
                         "added": created, "device": device_info()["device"], **_backend_field(doc_model)}],
            "device": device_info(), "files": files, "versions": versions(), "created": created, "updated": created,
        }
        _write_manifest(tmp, manifest)
    logger.info("wrote %s index of %d docs (dim %d) to %s", kind, len(ids), dim, output)
    return manifest


@contextlib.contextmanager
def _folder_lock(path: Path) -> Iterator[None]:
    lock_path = path.parent / f".{path.name}.lock"
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _backend_field(info: Mapping) -> dict:
    """``{"backend": …}`` for a batch encoded by a graph runtime (``model_info``'s ``backend``), else ``{}``."""
    return {"backend": info["backend"]} if info.get("backend") else {}


def append_to_index(path: str | Path, emb: np.ndarray, corpus: Mapping[str, Mapping[str, str]], *,
                    doc_model_fingerprint: str, source: str = "", backend: str | None = None) -> dict:
    """Add documents (``emb`` row i = ``list(corpus)[i]``) to an index folder, atomically.

    ``doc_model_fingerprint`` must be the index's doc model (documents from another model would
    live in another embedding space). Ids already in the index are refused. ``backend``: the runtime
    that encoded them when not torch (``"openvino-f32"`` / ``"onnx-f32"``), recorded in their batch.
    Returns the new manifest.
    """
    path = Path(path)
    if not corpus:
        raise EmbedKDError("no documents to add")
    with _folder_lock(path):
        current = open_index(path)
        m = current.manifest
        if doc_model_fingerprint != m["doc_model"]["fingerprint"]:
            raise EmbedKDError(
                f"{path}: documents were encoded by a model with fingerprint {doc_model_fingerprint}, but the index "
                f"holds documents of '{m['doc_model']['spec']}' ({m['doc_model']['fingerprint']}); encode new "
                "documents with the index's doc model"
            )
        emb = _check_embeddings(emb, corpus, str(path))
        want = int(m["doc_model"]["dim"]) if current.compressed is not None else current.dim
        if emb.shape[1] != want:
            raise EmbedKDError(f"{path}: new embeddings are {emb.shape[1]}-dim; the index is {want}-dim")
        existing = set(current.ids)
        dup = [d for d in corpus if d in existing]
        if dup:
            raise EmbedKDError(
                f"{path}: {len(dup)} document id(s) are already in the index (e.g. '{dup[0]}'); "
                "ids must be unique"
            )
        new_ids = list(corpus)
        if current.compressed is not None:  # truncated / quantized like the rest (the recorded int8 ranges)
            current.compressed.add(emb)
        else:
            current.index.add(emb)
        ids = current.ids + new_ids
        docs = current.docs + [dict(corpus[d]) for d in new_ids]
        all_docs = {d: doc for d, doc in zip(ids, docs)}
        now = utc_now()
        with atomic_dir(path, overwrite=True, artifact=ARTIFACT) as tmp:
            files = _write_files(tmp, current.index, ids, docs)
            manifest = {
                **m, "n": len(ids), "files": files, "updated": now,
                "corpus": {**m["corpus"], "fingerprint": fingerprint_corpus(all_docs), "n_docs": len(ids)},
                "batches": m["batches"] + [{"source": source, "corpus_fingerprint": fingerprint_corpus(corpus),
                                            "n": len(new_ids), "first_row": current.n, "added": now,
                                            "device": device_info()["device"],
                                            **_backend_field({"backend": backend})}],
            }
            _write_manifest(tmp, manifest)
    logger.info("added %d docs to %s (now %d)", len(new_ids), path, len(ids))
    return manifest


# ------------------------------------------------------------------------------------------ reading


def read_manifest(path: str | Path) -> dict:
    """The manifest of an index folder, schema-checked (files are not verified here)."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{path}: index folder not found")
    manifest = read_json(path / MANIFEST_FILE, "index manifest")
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        got = manifest.get("schema") if isinstance(manifest, dict) else type(manifest).__name__
        raise ArtifactError(f"{path / MANIFEST_FILE}: not an embed-kd index manifest (schema {got!r}, expected {SCHEMA!r})")
    for key in ("kind", "n", "dim", "normalize", "doc_model", "corpus", "files"):
        if key not in manifest:
            raise ArtifactError(f"{path / MANIFEST_FILE}: missing field '{key}'")
    return manifest


def open_index(path: str | Path, *, verify: bool = True) -> PersistedIndex:
    """Open an index folder; with ``verify`` (default) every file's sha256 is checked first."""
    import faiss

    path = Path(path)
    manifest = read_manifest(path)
    for name in _FILES:
        f = path / name
        if not f.is_file():
            raise ArtifactError(f"{f}: missing from the index folder (rebuild it with embed-kd index build)")
        if verify and sha256_file(f) != manifest["files"].get(name):
            raise ArtifactError(f"{f}: checksum does not match {MANIFEST_FILE} (truncated or modified); rebuild the index")
    comp = manifest.get("compression")
    binary = bool(comp) and comp.get("precision") in BINARY
    try:
        index = (faiss.read_index_binary if binary else faiss.read_index)(str(path / INDEX_FILE))
    except RuntimeError as exc:
        raise ArtifactError(f"{path / INDEX_FILE}: FAISS cannot read it ({str(exc).splitlines()[-1][:200]})") from None
    ids = read_json(path / IDS_FILE, "index id map")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ArtifactError(f"{path / IDS_FILE}: expected a JSON list of document ids")
    docs = []
    with (path / DOCS_FILE).open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ArtifactError(f"{path / DOCS_FILE}:{lineno}: malformed JSON ({exc.msg})") from None
            docs.append({"title": obj.get("title", ""), "text": obj.get("text", "")})
    n, dim = int(manifest["n"]), int(manifest["dim"])
    if not (index.ntotal == len(ids) == len(docs) == n) or index.d != (((dim + 7) // 8) * 8 if binary else dim):
        raise ArtifactError(
            f"{path}: inconsistent index folder: FAISS holds {index.ntotal} × {index.d}, ids.json {len(ids)}, "
            f"docs.jsonl {len(docs)}, manifest says {n} × {dim}"
        )
    compressed = None
    if comp:
        spec = Compression(comp.get("truncate_dim"), comp["precision"], comp.get("rescore"))
        ranges = None if comp.get("ranges") is None else np.asarray(comp["ranges"], dtype=np.float32)
        compressed = CompressedSearch(spec, index, dim, bool(manifest["normalize"]), ranges)
    return PersistedIndex(path, index, ids, manifest, docs, compressed)


# ------------------------------------------------------------------------------------ with a model


def _as_dataset(corpus: Mapping[str, Mapping[str, str]], name: str, source: str):
    from embed_kd.data.beir import BeirDataset

    return BeirDataset(name=name, path=Path(source or "."), split="corpus", corpus=dict(corpus), queries={}, qrels={})


def build_index(output: str | Path, corpus: Mapping[str, Mapping[str, str]], doc_model, *, kind: str = "flat",
                cache=None, batch_size: int = 32, name: str = "", source: str = "", overwrite: bool = False,
                show_progress: bool = True, compression: Compression | None = None) -> dict:
    """Encode ``corpus`` with ``doc_model`` (through the embedding cache) and write an index folder.

    ``compression``: truncate / quantize what is stored (the cache keeps the full float vectors).

    Under a process group (``torchrun``) every process encodes its share of the corpus and rank 0
    builds and writes the index; every process returns the manifest.
    """
    from embed_kd.encode import uses_cosine
    from embed_kd.index.encoding import encode_corpus
    from embed_kd.models import model_info
    from embed_kd.index.cache import EmbeddingCache

    claim_output(output, ARTIFACT, overwrite=overwrite)  # before encoding: a refusal should not cost an encode
    if kind not in KIND_CHOICES:
        raise EmbedKDError(f"--index {kind}: unknown index kind (choose one of {', '.join(KIND_CHOICES)})")
    if compression is not None:  # before encoding
        from embed_kd.encode import embedding_dim

        compression.validate(embedding_dim(doc_model), resolve_kind(kind, max(1, len(corpus))))
    normalize = uses_cosine(doc_model)
    cache = cache if cache is not None else EmbeddingCache()
    emb, _, _ = encode_corpus(doc_model, _as_dataset(corpus, name, source), cache=cache, batch_size=batch_size,
                              normalize=normalize, show_progress=show_progress)
    # under torchrun the encoding above is data-parallel; one process builds and writes the index
    manifest = None
    with dist.step("writing the index"):
        if dist.active().is_main:
            manifest = write_index(output, emb, corpus, doc_model=model_info(doc_model), normalize=normalize,
                                   kind=kind, name=name, source=source, overwrite=overwrite, compression=compression)
    return dist.broadcast_object(manifest)


def add_documents(path: str | Path, corpus: Mapping[str, Mapping[str, str]], doc_model, *, cache=None,
                  batch_size: int = 32, source: str = "", show_progress: bool = True) -> dict:
    """Encode new documents with the index's doc model and append them (see :func:`append_to_index`)."""
    from embed_kd.index.encoding import encode_corpus
    from embed_kd.index.cache import EmbeddingCache
    from embed_kd.models import fingerprint_model

    manifest = read_manifest(path)
    fp = fingerprint_model(doc_model)
    if fp != manifest["doc_model"]["fingerprint"]:
        raise EmbedKDError(
            f"{path}: --doc-model has fingerprint {fp}, but the index was built with '{manifest['doc_model']['spec']}' "
            f"({manifest['doc_model']['fingerprint']}); new documents must be encoded by the same model"
        )
    cache = cache if cache is not None else EmbeddingCache()
    emb, _, _ = encode_corpus(doc_model, _as_dataset(corpus, "", source), cache=cache, batch_size=batch_size,
                              normalize=bool(manifest["normalize"]), show_progress=show_progress)
    new = None
    with dist.step("adding to the index"):  # under torchrun: encoded data-parallel above, one process appends
        if dist.active().is_main:
            new = append_to_index(path, emb, corpus, doc_model_fingerprint=fp, source=source,
                                  backend=getattr(doc_model, "embed_kd_backend", None))
    return dist.broadcast_object(new)


def index_summary(manifest: dict) -> dict:
    """The fields ``index info`` and ``GET /info`` show."""
    return {
        "kind": manifest["kind"], "n": manifest["n"], "dim": manifest["dim"], "normalize": manifest["normalize"],
        "compression": {k: v for k, v in manifest["compression"].items() if k != "ranges"}
        if manifest.get("compression") else None,
        "doc_model": manifest["doc_model"], "corpus": manifest["corpus"], "batches": len(manifest.get("batches", [])),
        "created": manifest.get("created"), "updated": manifest.get("updated"),
    }
