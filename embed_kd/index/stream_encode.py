"""Corpus encoding in bounded memory, optionally data-parallel over the processes of a launch.

The corpus is encoded block by block (``block_size`` documents: their texts are built, encoded by
``SentenceTransformer.encode`` — which length-sorts the block — and written into rows of a
memory-mapped ``embeddings.npy``), so the process holds the corpus texts once (the loaded corpus)
plus one block of texts and embeddings, never a second copy of all texts or a full embedding
matrix in RAM. The result is the embedding-cache entry itself (schema ``embed-kd/embeddings@1``,
:mod:`embed_kd.index.cache`), returned as a copy-on-write memory map.

Under ``torchrun`` / ``accelerate launch`` (a process group is up, :mod:`embed_kd.distributed`):

1. rank 0 checks the cache; a valid entry is shared (every rank memory-maps it, no encoding);
2. otherwise rank 0 creates the entry's temporary folder with an empty ``(n, dim)`` ``.npy``;
3. rank ``r`` of ``W`` encodes the contiguous rows :func:`~embed_kd.distributed.shard_range`
   ``(n, r, W)`` into it;
4. when every rank succeeded, rank 0 writes ``ids.json`` / ``meta.json`` (sha256 streamed from the
   file) and renames the folder into place (atomic, as a single-process write);
5. every rank memory-maps the finished entry.

With the cache disabled (``--no-cache``) the matrix is a raw ``(n, dim)`` float32 file
``.embed-kd-encode.pid<PID>-<random>.tmp`` in ``$TMPDIR`` (in the cache root's ``tmp/`` when several
processes must share it: a filesystem all processes see, always true on one machine). Every
process opens it, and then its name is **unlinked at once**, before any document is encoded: the
open file and its memory maps keep the data alive, and the kernel frees the blocks when the last
process holding it exits — even by ``kill -9``. Nothing reads the temporary by its name after that
(the result is a copy-on-write map of the open file; :attr:`CacheResult.path` is the former name,
for the record only). Where an open file cannot be unlinked (Windows), the name stays until the
encode returns; one left by a killed run is removed by the next run's
:func:`embed_kd.io.sweep_stale` (its pid is gone), which every uncached encode still calls.

Row ``i`` is document ``ids[i]`` whatever the number of processes; only the composition of the
length-sorted batches changes (embeddings equal within float rounding, ~1e-6).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from embed_kd import distributed as dist
from embed_kd.data.beir import doc_text
from embed_kd.encode import embedding_dim, encode_texts
from embed_kd.errors import ArtifactError
from embed_kd.index.cache import CacheResult, EmbeddingCache, write_entry_meta
from embed_kd.io import current_umask, sweep_stale

logger = logging.getLogger(__name__)

#: documents encoded (and held in RAM as texts + embeddings) at a time
DEFAULT_BLOCK = 8192
#: the uncached matrix is ``$TMPDIR/.embed-kd-encode.pid<PID>-<random>.tmp``, unlinked once open (swept when
#: stale on platforms where it cannot be)
TMP_NAME = "embed-kd-encode"


def encode_rows_into(out: np.ndarray, text_of_row: Callable[[int], str], start: int, stop: int,
                     encode: Callable[[list[str]], np.ndarray], *, block_size: int = DEFAULT_BLOCK,
                     progress: Callable[[int], object] | None = None) -> int:
    """Fill ``out[start:stop]`` block by block with ``encode(texts of the block)``; returns rows written.

    ``out`` is any writable ``(n, dim)`` array (a memory map in practice). Shape errors name the
    expected and actual shapes.

    >>> out = np.zeros((5, 2), dtype="float32")
    >>> encode_rows_into(out, lambda i: "x" * i, 1, 5, lambda t: np.array([[len(s), 1] for s in t], "float32"),
    ...                  block_size=2)
    4
    >>> out[:, 0].tolist()
    [0.0, 1.0, 2.0, 3.0, 4.0]
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    written = 0
    for a in range(start, stop, block_size):
        b = min(a + block_size, stop)
        emb = encode([text_of_row(i) for i in range(a, b)])
        if emb.shape != (b - a, out.shape[1]):
            raise ValueError(f"encoder returned shape {tuple(emb.shape)} for rows {a}..{b - 1}; "
                             f"expected ({b - a}, {out.shape[1]})")
        out[a:b] = emb
        written += b - a
        if progress is not None:
            progress(b - a)
    return written


def _allocate(fd: int, size: int) -> None:
    """Allocate ``size`` bytes of the file now: a full disk is an ``OSError`` here, not a ``SIGBUS``
    when a memory-mapped page is first written (``ftruncate`` only where ``posix_fallocate`` is missing)."""
    if size and hasattr(os, "posix_fallocate"):
        os.posix_fallocate(fd, 0, size)
    else:
        os.ftruncate(fd, size)


def _create_npy(folder: Path, n: int, dim: int) -> None:
    """An ``(n, dim)`` float32 ``.npy`` (a cache entry's) whose blocks are allocated now."""
    npy = folder / "embeddings.npy"
    np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32, shape=(n, dim)).flush()
    fd = os.open(npy, os.O_RDWR)
    try:
        _allocate(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _cache_folder(cache: EmbeddingCache, key: str, world: dist.World, n: int, dim: int) -> tuple[Path, Path] | None:
    """``(temporary folder holding an allocated embeddings.npy, final entry path)``, or None when the
    cache is disabled or cannot take the entry (read-only, full: a warning, and the run encodes into
    an unlinked temporary instead). Rank 0 only."""
    if not cache.enabled:
        return None
    final = cache.entry_path(key)
    folder = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(final)
        folder = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.pid{os.getpid()}-", suffix=".tmp"))
        os.chmod(folder, 0o777 & ~current_umask())
        _create_npy(folder, n, dim)
        return folder, final
    except OSError as exc:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        logger.warning("embedding cache not written (%s: %s); encoding without it", exc.filename or final.parent,
                       exc.strerror or exc)
        if world.distributed:
            raise ArtifactError(f"{final.parent}: cannot write the embedding cache entry that the processes "
                                f"share ({exc.strerror or exc})") from None
    return None


def _create_temporary(cache: EmbeddingCache, world: dist.World, n: int, dim: int) -> Path:
    """An allocated raw ``n * dim`` float32 file named ``.embed-kd-encode.pid<PID>-<random>.tmp`` (rank 0).

    Peers must see it: the cache root, not a node-local /tmp, under a process group. The name carries
    this pid, so a temporary that could not be unlinked and outlived a killed run is recognised as
    stale and removed by the next run's sweep.
    """
    root = cache.root / "tmp" if world.distributed else Path(tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    sweep_stale(root / TMP_NAME)
    fd, name = tempfile.mkstemp(dir=root, prefix=f".{TMP_NAME}.pid{os.getpid()}-", suffix=".tmp")
    try:
        _allocate(fd, n * dim * np.dtype(np.float32).itemsize)
    except OSError as exc:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise ArtifactError(f"{name}: cannot hold the {n} x {dim} document embeddings "
                            f"({exc.strerror or exc}); free space there or set TMPDIR") from None
    os.close(fd)
    return Path(name)


def _unlink(path: Path) -> bool:
    """Remove ``path``; False where an open file cannot be removed (Windows: the sweep will)."""
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return True
    except OSError as exc:
        logger.debug("%s: not removed while open (%s); removed after the encode or swept by the next run", path, exc)
        return False


def _map(fh, n: int, dim: int, mode: str) -> np.ndarray:
    """The ``(n, dim)`` float32 rows of the open raw file ``fh`` (an empty array when there are none:
    an empty file cannot be mapped)."""
    if n * dim == 0:
        return np.zeros((n, dim), dtype=np.float32)
    return np.memmap(fh, dtype=np.float32, mode=mode, shape=(n, dim))


def encode_corpus_streamed(model, corpus: Mapping[str, Mapping[str, str]], key_fields: dict, *,
                           cache: EmbeddingCache, batch_size: int = 32, normalize: bool = True,
                           block_size: int = DEFAULT_BLOCK, show_progress: bool = True, model_label: str = ""
                           ) -> CacheResult:
    """Document embeddings of ``corpus`` (row i = ``list(corpus)[i]``) as a memory map; see the module doc.

    ``key_fields`` is :meth:`EmbeddingCache.make_key`'s output for (model, corpus, max length,
    normalisation). Collective under a process group: every rank must call it with the same corpus.
    """
    from tqdm.auto import tqdm

    world = dist.active()
    ids: Sequence[str] = list(corpus)
    n = len(ids)

    # 1. a valid cache entry: rank 0 verifies it, the others map it without re-hashing
    hit, emb = False, None
    if cache.enabled:
        with dist.step("embedding cache lookup"):
            if world.is_main:
                emb = cache.load(key_fields, ids, mmap=True)
                hit = emb is not None
        hit = dist.broadcast_object(hit)
        if hit:
            if emb is None:  # a peer of rank 0, which verified the entry's checksum
                emb = cache.load(key_fields, ids, mmap=True, verify=False)
            if emb is None:  # only possible when the entry vanished between the two reads
                raise ArtifactError(f"{cache.entry_path(key_fields['key'])}: embedding cache entry removed while "
                                    "it was being read; rerun")
            logger.info("embedding cache hit: %s", cache.entry_path(key_fields["key"]))
            return CacheResult(emb, list(ids), True, cache.entry_path(key_fields["key"]))

    # 2. rank 0 makes an empty (n, dim) matrix: the cache entry's temporary folder, or a temporary file
    dim = embedding_dim(model)
    made = None
    with dist.step("creating the embedding file"):
        if world.is_main:
            made = _cache_folder(cache, key_fields["key"], world, n, dim)
            if made is None:
                made = (_create_temporary(cache, world, n, dim), None)
    folder, final = dist.broadcast_object(made)  # folder: the temporary file itself when final is None
    fh = None

    def _discard() -> None:
        if fh is not None:
            fh.close()
        if world.is_main:
            if final is None:
                _unlink(folder)
            else:
                shutil.rmtree(folder, ignore_errors=True)

    # 2b. uncached: every rank opens the file, then its name goes (the open file keeps the data; the kernel
    # frees it when the last holder exits, kill -9 included). ``unlinked`` is False where that fails (Windows).
    unlinked = True
    if final is None:
        try:
            with dist.step("opening the temporary embedding file"):
                fh = open(folder, "r+b")
            unlinked = dist.broadcast_object(_unlink(folder) if world.is_main else None)
        except BaseException:
            _discard()
            raise

    # 3. every rank fills its rows
    start, stop = dist.shard_range(n, world.rank, world.world_size)
    desc = "encode docs" + (f" (rank 0 of {world.world_size}, rows {start}-{stop - 1})" if world.distributed else "")
    bar = tqdm(total=stop - start, unit="doc", desc=desc, disable=not (show_progress and world.is_main),
               dynamic_ncols=True)

    def _encode(texts: list[str]) -> np.ndarray:
        return encode_texts(model, texts, batch_size=batch_size, normalize=normalize, role="document",
                            show_progress=False, progress=bar.update)  # the bar moves per batch

    try:
        with dist.step("encoding the corpus"):
            out = (_map(fh, n, dim, "r+") if final is None else np.load(folder / "embeddings.npy", mmap_mode="r+"))
            encode_rows_into(out, lambda i: doc_text(corpus[ids[i]]), start, stop, _encode, block_size=block_size)
            if isinstance(out, np.memmap):
                out.flush()
            del out
    except BaseException:
        _discard()
        raise
    finally:
        bar.close()

    # 4. uncached: a copy-on-write map of the open file (never reopened by name)
    if final is None:
        emb = _map(fh, n, dim, "c")
        fh.close()
        if not unlinked:  # every rank holds its map now; the sweep removes what still cannot go
            dist.barrier()
            if world.is_main:
                _unlink(folder)
        return CacheResult(emb, list(ids), False, folder)

    # 5. rank 0 commits the entry, then every rank maps it
    with dist.step("committing the embedding cache entry"):
        if world.is_main:
            try:
                write_entry_meta(folder, key_fields, ids, (n, dim), model_label)
                if final.exists():
                    shutil.rmtree(final)  # an invalid entry the lookup did not remove (a race)
                os.replace(folder, final)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
    return CacheResult(np.load(final / "embeddings.npy", mmap_mode="c"), list(ids), False, final)
