"""Compressed embeddings: Matryoshka-style truncation and output quantization, searched exactly with FAISS.

Two independent knobs (``--truncate-dim N``, ``--precision P``) shrink what an index stores per
document; queries go through the same transformation before the search:

1. **truncation** — keep the first ``N`` dimensions; for a cosine model (normalised vectors) the
   kept part is L2-renormalised (:func:`truncate`);
2. **quantization** — sentence-transformers' :func:`~sentence_transformers.quantize_embeddings`:

   ============  =========================================  ===================================
   precision     code per dimension                         FAISS index, score
   ============  =========================================  ===================================
   ``float32``   4 bytes                                    the ``--index`` kind; inner product
   ``int8``      1 byte: ``floor((x - min) / step) - 128``  ``IndexScalarQuantizer``
                 (``step = (max - min) / 255``)             (``QT_8bit_direct_signed``: the codes
   ``uint8``     1 byte: the same without ``- 128``         as they are); inner product of codes
   ``binary``    1 bit: ``x > 0`` (packed, int8 view)       ``IndexBinaryFlat``; score
   ``ubinary``   1 bit: ``x > 0`` (packed, uint8 view)      ``dim - 2·hamming`` (= ±1 inner product)
   ============  =========================================  ===================================

   ``min``/``max`` per dimension (the calibration *ranges*, shape ``(2, dim)``) come from the
   corpus embeddings (:func:`calibration_ranges`), are stored with the index and quantize every
   query with the same buckets. The binary precisions need no calibration.

``rescore=K`` (binary/ubinary, int8/uint8): fetch the top ``max(K, k)`` by the quantized score,
re-score those candidates with the *float* query against the stored codes — ``±1`` bits for the
binary precisions, dequantised bucket values (``(code + 128)·step + min`` for int8) for the
scalar ones, as sentence-transformers' ``semantic_search_faiss`` does — and keep the best ``k``.
No float document vector is needed, so the index stays compressed.

The index is exact over the codes (non-float precisions need ``--index flat``).

>>> import numpy as np
>>> x = np.array([[3.0, 4.0, 12.0]], dtype="float32")
>>> [round(float(v), 4) for v in truncate(x / 13, 2, normalize=True)[0]]
[0.6, 0.8]
>>> docs = np.array([[1, 0.5, -1], [-1, 1, 1], [0.5, -1, 1]], dtype="float32")
>>> cs = CompressedSearch.build(docs, Compression(precision="ubinary"), normalize=False)
>>> scores, rows = cs.search(np.array([[1, 1, -1]], dtype="float32"), k=3)
>>> rows.tolist(), scores.tolist()   # codes 110, 011, 101; query 110: hamming 0, 2, 2
([[0, 1, 2]], [[3.0, -1.0, -1.0]])
>>> cs.bytes_per_vector
1
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from embed_kd.errors import EmbedKDError
from embed_kd.index.faiss_index import build_faiss_index, search_index

logger = logging.getLogger(__name__)

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")
SCALAR, BINARY = ("int8", "uint8"), ("binary", "ubinary")
BLOCK = 65536


@dataclass(frozen=True)
class Compression:
    """What the index stores per document: ``truncate_dim`` (None = all), ``precision``, ``rescore`` K."""

    truncate_dim: int | None = None
    precision: str = "float32"
    rescore: int | None = None

    @property
    def active(self) -> bool:
        return self.truncate_dim is not None or self.precision != "float32"

    def validate(self, dim: int, kind: str = "flat") -> None:
        if self.precision not in PRECISIONS:
            raise EmbedKDError(f"--precision {self.precision}: choose one of {', '.join(PRECISIONS)}")
        if self.truncate_dim is not None and not 1 <= self.truncate_dim <= dim:
            raise EmbedKDError(f"--truncate-dim {self.truncate_dim}: the model makes {dim}-dim vectors "
                               f"(choose 1..{dim})")
        if self.precision != "float32" and kind != "flat":
            raise EmbedKDError(f"--precision {self.precision} is searched exactly over its codes: use --index flat "
                               f"(not {kind})")
        if self.rescore is not None and self.precision == "float32":
            raise EmbedKDError("--rescore re-scores quantized candidates with the float query: it needs --precision "
                               "int8, uint8, binary or ubinary")

    def to_dict(self) -> dict:
        return {"truncate_dim": self.truncate_dim, "precision": self.precision, "rescore": self.rescore}


def bytes_per_vector(dim: int, precision: str) -> int:
    """Bytes one stored vector takes: ``dim / 8`` (rounded up) bits, ``dim`` bytes, or ``4·dim``.

    >>> [bytes_per_vector(384, p) for p in PRECISIONS]
    [1536, 384, 384, 48, 48]
    """
    return (dim + 7) // 8 if precision in BINARY else dim if precision in SCALAR else 4 * dim


def truncate(emb: np.ndarray, dim: int | None, *, normalize: bool) -> np.ndarray:
    """The first ``dim`` columns of ``emb`` (float32), L2-renormalised per row when ``normalize``."""
    out = np.ascontiguousarray(emb[:, :dim] if dim else emb, dtype=np.float32)
    if normalize and dim:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = out / np.where(norms > 0, norms, 1)
    return out


def calibration_ranges(emb: np.ndarray) -> np.ndarray:
    """Per-dimension ``[min; max]`` of ``emb`` (``(2, dim)`` float32), read block by block (a memory map is fine)."""
    lo = np.full(emb.shape[1], np.inf, dtype=np.float32)
    hi = np.full(emb.shape[1], -np.inf, dtype=np.float32)
    for a in range(0, emb.shape[0], BLOCK):
        block = np.asarray(emb[a : a + BLOCK], dtype=np.float32)
        lo, hi = np.minimum(lo, block.min(axis=0)), np.maximum(hi, block.max(axis=0))
    return np.vstack([lo, hi]).astype(np.float32)


def quantize(emb: np.ndarray, precision: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """sentence-transformers' ``quantize_embeddings`` (``ranges`` for int8/uint8)."""
    from sentence_transformers.util.quantization import quantize_embeddings

    if precision in SCALAR and ranges is None:
        raise EmbedKDError(f"{precision} quantization needs calibration ranges (from the corpus embeddings)")
    return quantize_embeddings(np.asarray(emb, dtype=np.float32), precision=precision, ranges=ranges)


def dequantize(codes: np.ndarray, precision: str, ranges: np.ndarray | None, dim: int) -> np.ndarray:
    """Float vectors the codes stand for: bucket starts for int8/uint8, ``±1`` for the binary precisions.

    >>> dequantize(np.array([[0b10100000]], dtype=np.uint8), "ubinary", None, 3).tolist()
    [[1.0, -1.0, 1.0]]
    """
    if precision in BINARY:  # packed bits: uint8, or int8 (= uint8 - 128, sentence-transformers' "binary")
        bits = np.unpackbits(_as_ubinary(codes), axis=-1)[..., :dim]
        return bits.astype(np.float32) * 2 - 1
    steps = (ranges[1] - ranges[0]) / 255
    steps = np.where(steps == 0, 1, steps)
    values = codes.astype(np.float64) + (128 if precision == "int8" else 0)
    return (values * steps + ranges[0]).astype(np.float32)


def _as_ubinary(codes: np.ndarray) -> np.ndarray:
    """Packed bits as uint8 (``binary`` stores them as int8 = uint8 - 128)."""
    if codes.dtype == np.int8:
        return (codes.astype(np.int16) + 128).astype(np.uint8)
    return np.ascontiguousarray(codes, dtype=np.uint8)


@dataclass
class CompressedSearch:
    """A FAISS index over compressed document vectors, and the query-side transformation that matches it.

    ``dim`` is the stored dimension (after truncation); ``ranges`` the int8/uint8 calibration.
    """

    spec: Compression
    index: object
    dim: int
    normalize: bool
    ranges: np.ndarray | None = None

    @classmethod
    def build(cls, doc_emb: np.ndarray, spec: Compression, *, normalize: bool, kind: str = "flat",
              ranges: np.ndarray | None = None) -> "CompressedSearch":
        """Truncate / quantize ``doc_emb`` (float, full model dimension) and index it.

        ``ranges``: given (an index being re-opened), else computed from ``doc_emb`` after truncation.
        """
        spec.validate(int(doc_emb.shape[1]), kind)
        dim = spec.truncate_dim or int(doc_emb.shape[1])
        if spec.precision in SCALAR and ranges is None:
            ranges = calibration_ranges(_Truncated(doc_emb, spec.truncate_dim, normalize))
        cs = cls(spec, cls.empty_index(spec.precision, dim, kind, len(doc_emb)), dim, normalize, ranges)
        if kind != "flat" and spec.precision == "float32":  # trained index kinds: built over all vectors at once

            cs.index = build_faiss_index(truncate(doc_emb, spec.truncate_dim, normalize=normalize), kind)
            return cs
        cs.add(doc_emb)
        return cs

    @staticmethod
    def empty_index(precision: str, dim: int, kind: str = "flat", n: int = 0):
        import faiss

        if precision in BINARY:
            return faiss.IndexBinaryFlat(((dim + 7) // 8) * 8)
        if precision in SCALAR:
            qt = faiss.ScalarQuantizer.QT_8bit_direct_signed if precision == "int8" else faiss.ScalarQuantizer.QT_8bit_direct
            return faiss.IndexScalarQuantizer(dim, qt, faiss.METRIC_INNER_PRODUCT)
        return faiss.IndexFlatIP(dim)

    def encode(self, emb: np.ndarray) -> np.ndarray:
        """Full-dimension float vectors → the codes this index stores (also what queries are searched with)."""
        return self._codes(truncate(emb, self.spec.truncate_dim, normalize=self.normalize))

    def _codes(self, emb: np.ndarray) -> np.ndarray:
        p = self.spec.precision
        if p == "float32":
            return emb
        codes = quantize(emb, p, self.ranges)
        if p in BINARY:
            return _as_ubinary(codes)
        return codes.astype(np.float32)  # the 8-bit "direct" quantizers take the code values as floats

    def add(self, doc_emb: np.ndarray) -> None:
        """Append documents (float, full model dimension), block by block."""
        for a in range(0, doc_emb.shape[0], BLOCK):
            self.index.add(self.encode(np.asarray(doc_emb[a : a + BLOCK], dtype=np.float32)))

    @property
    def bytes_per_vector(self) -> int:
        return bytes_per_vector(self.dim, self.spec.precision)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def stored_codes(self, rows: np.ndarray) -> np.ndarray:
        """The stored codes of ``rows`` (for re-scoring): packed uint8 bits, or int8/uint8 codes."""
        import faiss

        if self.spec.precision in BINARY:
            xb = faiss.vector_to_array(self.index.xb).reshape(self.ntotal, -1)
            return xb[rows]
        codes = faiss.vector_to_array(self.index.codes).reshape(self.ntotal, self.dim)[rows]
        return codes.astype(np.int16) - 128 if self.spec.precision == "int8" else codes  # stored with +128

    def search(self, query_emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, rows)`` for float queries of the model's full dimension (rows -1 = none)."""
        k = min(k, self.ntotal)
        q = truncate(np.asarray(query_emb, dtype=np.float32), self.spec.truncate_dim, normalize=self.normalize)
        p = self.spec.precision
        fetch = max(k, self.spec.rescore or 0) if p != "float32" else k
        fetch = min(fetch, self.ntotal)
        if p in BINARY:
            dist, rows = self.index.search(self._codes(q), fetch)
            scores = (self.dim - 2 * dist).astype(np.float32)
        else:
            scores, rows = search_index(self.index, self._codes(q), fetch)
        if p == "float32" or not self.spec.rescore:
            return scores[:, :k], rows[:, :k]
        out_s = np.full((len(q), k), -np.inf, dtype=np.float32)
        out_r = np.full((len(q), k), -1, dtype=np.int64)
        for i in range(len(q)):
            valid = rows[i][rows[i] >= 0]
            cand = dequantize(self.stored_codes(valid), p, self.ranges, self.dim)
            s = cand @ q[i]
            order = np.argsort(-s, kind="stable")[:k]
            out_s[i, : len(order)], out_r[i, : len(order)] = s[order], valid[order]
        return out_s, out_r

    def manifest(self) -> dict:
        """What the index manifest records to re-open this search (``ranges`` as lists)."""
        return {**self.spec.to_dict(), "dim": self.dim, "bytes_per_vector": self.bytes_per_vector,
                "ranges": None if self.ranges is None else self.ranges.tolist()}


class _Truncated:
    """A lazily truncated (and renormalised) view of a possibly memory-mapped matrix, for blockwise reads."""

    def __init__(self, emb, dim, normalize):
        self.emb, self.dim, self.normalize = emb, dim, normalize
        self.shape = (emb.shape[0], dim or emb.shape[1])

    def __getitem__(self, sl):
        return truncate(np.asarray(self.emb[sl], dtype=np.float32), self.dim, normalize=self.normalize)
