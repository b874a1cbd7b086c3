"""Build and search FAISS indexes over embedding matrices, with defaults chosen by corpus size.

Every index is built with ``faiss.index_factory`` from a factory string (metric: inner product —
with normalised embeddings, cosine similarity). :func:`factory_string` picks the string from the
kind and the corpus size ``n`` following the FAISS wiki, *Guidelines to choose an index*
(https://github.com/facebookresearch/faiss/wiki/Guidelines-to-choose-an-index) and *The index
factory* (https://github.com/facebookresearch/faiss/wiki/The-index-factory):

============  ==================================================  ======================================
kind          factory string (search parameters)                  when
============  ==================================================  ======================================
``flat``      ``Flat`` (exact)                                     default; exact, RAM n·d·4 bytes
``hnsw``      ``HNSW32`` (efConstruction 200, efSearch            RAM for full vectors + graph
              max(128, k))                                         (n·(4d + 2·32·4) bytes), fast queries
``ivfpq``     n < 1M: ``IVF{K},PQ{m}x{b}``, K ≈ 4·√n (at most     compressed: m bytes per vector
              n/39); 1M–10M: ``IVF65536_HNSW32,PQ{m}x8``;          (d/8 sub-quantisers: 32× smaller than
              10M–100M: ``IVF262144_HNSW32,…``; ≥100M:             float32); recall below exact
              ``IVF1048576_HNSW32,…`` (nprobe 16)
``auto``      n ≤ 200k: ``flat``; ≤ 5M: ``hnsw``; above: ``ivfpq``  embed-kd's rule of thumb, see below
============  ==================================================  ======================================

- IVF: the wiki's "below 1M vectors: IVFK with K between 4·√N and 16·√N"; 1M and above: an HNSW
  coarse quantiser with 65536 / 262144 / 1048576 lists. k-means needs 30·K–256·K training vectors
  (FAISS warns below 39·K), so K ≤ n/39 and training uses a random sample of at most 256·K rows.
- PQ: ``m`` = d/8 sub-quantisers (the largest of d/8, d/4, d/2, d dividing d) of ``b`` = 8 bits;
  8-bit codebooks need 256·39 training vectors, so smaller corpora get fewer bits (4–7).
- ``auto``: exact search is cheap enough up to ~200k vectors (a 384-d query scans 300 MB); HNSW
  keeps full vectors (≈1.8 kB per 384-d vector with M=32), affordable to a few million; beyond,
  IVF-PQ's compressed codes. Measured recall/latency: ``eval/results/scaling.md``.

GPU: :func:`on_device` moves an exact (``Flat``) index to the selected GPU when FAISS was built
with GPU support (``faiss-gpu``, the ``gpu`` extra: ``faiss.StandardGpuResources`` exists) and the
device is ``cuda:N``; the search is still exact (same neighbours; scores differ only in float
rounding). HNSW has no GPU form and IVF-PQ's GPU form has other parameters: both stay on the CPU.

Vectors are added in blocks of ``ADD_BLOCK`` rows so that a memory-mapped matrix is never copied
whole (the index itself holds what its kind holds: all vectors for flat/HNSW, codes for IVF-PQ).

>>> factory_string(5000, 384, "ivfpq")
'IVF128,PQ48x7'
>>> factory_string(2_000_000, 384, "ivfpq"), factory_string(300_000, 384, "auto")
('IVF65536_HNSW32,PQ48x8', 'HNSW32')
>>> import numpy as np
>>> docs = np.eye(4, dtype="float32")
>>> index = build_faiss_index(docs, "flat")
>>> scores, rows = search_index(index, docs[:1], k=2)
>>> rows[0].tolist()[0], float(scores[0][0])
(0, 1.0)
"""

from __future__ import annotations

import logging
import math

import numpy as np

from embed_kd.device import current_device
from embed_kd.errors import EmbedKDError

logger = logging.getLogger(__name__)
INDEX_KINDS = ("flat", "hnsw", "ivfpq")
KIND_CHOICES = INDEX_KINDS + ("auto",)
ADD_BLOCK = 65536
#: ``auto``: the largest corpus indexed exactly, and the largest indexed with HNSW
AUTO_FLAT_MAX, AUTO_HNSW_MAX = 200_000, 5_000_000
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 200, 128
DEFAULT_NPROBE = 16


def resolve_kind(kind: str, n: int) -> str:
    """``auto`` → ``flat`` / ``hnsw`` / ``ivfpq`` by corpus size; other kinds unchanged."""
    if kind not in KIND_CHOICES:
        raise EmbedKDError(f"--index {kind}: unknown index kind (choose one of {', '.join(KIND_CHOICES)})")
    if kind != "auto":
        return kind
    return "flat" if n <= AUTO_FLAT_MAX else "hnsw" if n <= AUTO_HNSW_MAX else "ivfpq"


def ivf_lists(n: int) -> int:
    """Number of IVF lists K for ``n`` vectors (see the module docstring).

    >>> [ivf_lists(n) for n in (100, 5_000, 50_000, 999_999, 1_000_000, 20_000_000, 200_000_000)]
    [2, 128, 894, 3999, 65536, 262144, 1048576]
    """
    if n >= 100_000_000:
        return 1_048_576
    if n >= 10_000_000:
        return 262_144
    if n >= 1_000_000:
        return 65_536
    return max(1, min(int(4 * math.sqrt(n)), n // 39 or 1))


def pq_params(n: int, dim: int) -> tuple[int, int]:
    """``(m sub-quantisers, bits per code)`` for ``n`` training vectors of dimension ``dim``."""
    m = next(m for m in (dim // 8, dim // 4, dim // 2, dim) if m and dim % m == 0)
    nbits = 8 if n >= 256 * 39 else max(4, min(8, int(math.log2(max(n // 39, 16)))))
    return m, nbits


def factory_string(n: int, dim: int, kind: str = "flat", *, hnsw_m: int = HNSW_M, nlist: int | None = None,
                   pq_m: int | None = None) -> str:
    """The ``faiss.index_factory`` string for ``n`` vectors of dimension ``dim`` (module docstring)."""
    kind = resolve_kind(kind, n)
    if kind == "flat":
        return "Flat"
    if kind == "hnsw":
        return f"HNSW{hnsw_m}"
    k = nlist or ivf_lists(n)
    m, nbits = pq_params(n, dim)
    if pq_m:
        if dim % pq_m:
            raise EmbedKDError(f"PQ sub-quantisers {pq_m} must divide the dimension {dim}")
        m = pq_m
    coarse = f"IVF{k}_HNSW32" if k >= 65_536 else f"IVF{k}"
    return f"{coarse},PQ{m}x{nbits}"


def build_faiss_index(emb: np.ndarray, kind: str = "flat", *, hnsw_m: int = HNSW_M, nlist: int | None = None,
                      pq_m: int | None = None, nprobe: int = DEFAULT_NPROBE, seed: int = 0):
    """A FAISS index over ``emb`` (``(n, dim)`` float32, a memory map is fine) built from :func:`factory_string`."""
    import faiss

    if emb.ndim != 2:
        raise EmbedKDError(f"embeddings have shape {tuple(emb.shape)}; expected (n, dim)")
    n, dim = emb.shape
    kind = resolve_kind(kind, n)
    spec = factory_string(n, dim, kind, hnsw_m=hnsw_m, nlist=nlist, pq_m=pq_m)
    index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    if kind == "hnsw":
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    elif kind == "ivfpq":
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed = seed
        k = ivf.nlist
        sample = min(n, 256 * k)
        rows = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False)) if sample < n else None
        train = np.ascontiguousarray(emb if rows is None else emb[rows], dtype=np.float32)
        index.train(train)
        del train
        ivf.nprobe = min(nprobe, k)
    for a in range(0, n, ADD_BLOCK):
        index.add(np.ascontiguousarray(emb[a : a + ADD_BLOCK], dtype=np.float32))
    logger.debug("built %s (%s) over %d × %d", kind, spec, n, dim)
    return index


def search_index(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, row numbers) per query; rows of -1 (fewer than k docs) are dropped later."""
    import faiss

    k = min(k, index.ntotal)
    if isinstance(index, faiss.IndexHNSWFlat):
        index.hnsw.efSearch = max(HNSW_EF_SEARCH, k)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


_GPU_RESOURCES: dict[int, object] = {}  # one StandardGpuResources per GPU, kept alive for the process


def faiss_has_gpu() -> bool:
    """Whether the installed FAISS was built with GPU support (``faiss-gpu``) and sees a GPU."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def on_device(index, device: str | None = None):
    """``index`` on the GPU of ``device`` (default: the selected device) when that is ``cuda:N``,
    FAISS has GPU support and the index is exact (``Flat``); else ``index`` itself. Returns
    ``(index, "gpu" | "cpu")``."""
    import faiss

    device = device or current_device()
    if not device.startswith("cuda") or not isinstance(index, faiss.IndexFlat):
        return index, "cpu"
    if not faiss_has_gpu():
        logger.info("FAISS has no GPU support here (pip install 'embed-kd[gpu]' for faiss-gpu): searching on the CPU")
        return index, "cpu"
    gpu = int(device.split(":", 1)[1]) if ":" in device else 0
    res = _GPU_RESOURCES.setdefault(gpu, faiss.StandardGpuResources())
    return faiss.index_cpu_to_gpu(res, gpu, index), "gpu"
