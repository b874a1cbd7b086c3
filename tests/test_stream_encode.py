"""Streamed, memory-mapped corpus encoding and FAISS defaults by corpus size (single process)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from embed_kd.data import load_beir
from embed_kd.index.cache import EmbeddingCache
from embed_kd.index.faiss_index import build_faiss_index, factory_string, ivf_lists, resolve_kind
from embed_kd.index.stream_encode import encode_corpus_streamed
from embed_kd.models import fingerprint_model, load_sentence_transformer


@pytest.fixture(scope="module")
def model(tiny_model):
    return load_sentence_transformer(str(tiny_model))


@pytest.fixture(scope="module")
def dataset(tiny_beir):
    return load_beir(tiny_beir, "test")


def _key(cache, model, dataset):
    from embed_kd.data.fingerprint import fingerprint_corpus

    return cache.make_key(fingerprint_model(model), fingerprint_corpus(dataset.corpus), model.max_seq_length, True)


def test_blocks_equal_one_encode_and_entry_is_valid(tmp_path, model, dataset):
    cache = EmbeddingCache(tmp_path / "cache")
    key = _key(cache, model, dataset)
    res = encode_corpus_streamed(model, dataset.corpus, key, cache=cache, batch_size=4, block_size=7,
                                 show_progress=False)
    assert not res.hit and isinstance(res.embeddings, np.memmap) and res.ids == list(dataset.corpus)
    direct = model.encode([dataset.doc_text(d) for d in dataset.corpus], batch_size=4, normalize_embeddings=True)
    np.testing.assert_allclose(np.asarray(res.embeddings), direct, rtol=0, atol=1e-5)
    # the entry on disk is a normal cache entry (checksum verified by load); a second call is a hit
    assert cache.load(key, res.ids) is not None
    again = encode_corpus_streamed(model, dataset.corpus, key, cache=cache, show_progress=False)
    assert again.hit and np.array_equal(np.asarray(again.embeddings), np.asarray(res.embeddings))
    # nothing else left beside the entry (no temporary folder)
    assert [p.name for p in (tmp_path / "cache" / "embeddings").iterdir()] == [key["key"]]
    # copy-on-write: writing to the returned map does not touch the cached file
    again.embeddings[0, 0] = 123.0
    assert cache.load(key, res.ids)[0, 0] != 123.0


def test_no_cache_leaves_nothing_behind(tmp_path, model, dataset, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    cache = EmbeddingCache(tmp_path / "cache", enabled=False)
    res = encode_corpus_streamed(model, dataset.corpus, _key(cache, model, dataset), cache=cache, block_size=5,
                                 show_progress=False)
    assert res.embeddings.shape == (len(dataset.corpus), 32) and np.isfinite(res.embeddings).all()
    assert not (tmp_path / "cache").exists() and list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux /proc to see the mapping")
def test_no_cache_matrix_is_unlinked_before_encoding(tmp_path, model, dataset, monkeypatch):
    """The uncached matrix has no name while documents are encoded (so a kill -9 leaves nothing): at every
    progress update the temporary folder is empty and this process maps a deleted .embed-kd-encode file.
    The result equals a cached encode's, and stays readable after its file is gone; a stale temporary
    of a dead process (a platform where the name could not go) is swept."""
    import subprocess
    import tempfile

    import tqdm.auto

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp / f".embed-kd-encode.pid{dead.pid}-abcd.tmp"
    stale.write_bytes(b"\0" * 4096)
    seen: list[tuple[list[str], list[str]]] = []

    class Bar:  # looks at the disk and at this process's maps while the corpus is encoded
        def __init__(self, *a, **k):
            pass

        def update(self, n):
            maps = [ln.split(None, 5)[-1] for ln in Path("/proc/self/maps").read_text().splitlines()
                    if ".embed-kd-encode.pid" in ln]
            seen.append((sorted(p.name for p in tmp.iterdir()), maps))

        def close(self):
            pass

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    cache = EmbeddingCache(tmp_path / "cache", enabled=False)
    key = _key(cache, model, dataset)
    res = encode_corpus_streamed(model, dataset.corpus, key, cache=cache, batch_size=4, block_size=5)
    assert seen and not stale.exists()
    for names, maps in seen:
        assert names == [] and len(maps) == 1, (names, maps)
        assert maps[0].endswith("(deleted)") and f".embed-kd-encode.pid{os.getpid()}-" in maps[0]
    # the returned map still reads the (nameless) file: equal to a cached encode, and copy-on-write
    assert not res.path.exists() and isinstance(res.embeddings, np.memmap)
    cached = encode_corpus_streamed(model, dataset.corpus, key, cache=EmbeddingCache(tmp_path / "c2"), batch_size=4,
                                    block_size=5)
    np.testing.assert_allclose(np.asarray(res.embeddings), np.asarray(cached.embeddings), rtol=0, atol=1e-6)
    res.embeddings[0, 0] = 123.0
    assert list(tmp.iterdir()) == []


def test_index_factory_defaults_by_size():
    import faiss

    assert [resolve_kind("auto", n) for n in (1_000, 200_001, 5_000_001)] == ["flat", "hnsw", "ivfpq"]
    assert factory_string(50_000, 384, "ivfpq") == f"IVF{ivf_lists(50_000)},PQ48x8" == "IVF894,PQ48x8"
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((3000, 32)).astype("float32")
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    index = build_faiss_index(emb, "ivfpq")
    ivf = faiss.extract_index_ivf(index)
    assert ivf.nlist == ivf_lists(3000) == 76 and index.ntotal == 3000 and ivf.nprobe == 16
    # an exact query for a stored vector finds itself first through HNSW and IVF-PQ
    for kind in ("hnsw", "ivfpq"):
        idx = build_faiss_index(emb, kind)
        _, rows = idx.search(emb[:20], 1)
        hits = int((rows[:, 0] == np.arange(20)).sum())
        assert hits >= (20 if kind == "hnsw" else 15), (kind, hits)


def test_progress_moves_per_batch(tmp_path, model, dataset, monkeypatch):
    """The corpus bar advances after every batch (not once per block), with the embeddings unchanged."""
    import math

    import tqdm.auto

    from embed_kd.encode import encode_texts

    texts = [dataset.doc_text(d) for d in dataset.corpus]
    steps: list[int] = []
    batched = encode_texts(model, texts, batch_size=4, normalize=True, progress=steps.append)
    assert steps == [4] * (len(texts) // 4) + ([len(texts) % 4] if len(texts) % 4 else [])
    whole = encode_texts(model, texts, batch_size=4, normalize=True, show_progress=False)
    np.testing.assert_allclose(batched, whole, rtol=0, atol=1e-6)

    updates: list[int] = []

    class Bar:  # records what encode_corpus_streamed reports to its bar
        def __init__(self, *a, **k):
            self.total = k.get("total")

        def update(self, n):
            updates.append(n)

        def close(self):
            pass

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    cache = EmbeddingCache(tmp_path / "cache")
    n, block = len(dataset.corpus), 7
    encode_corpus_streamed(model, dataset.corpus, _key(cache, model, dataset), cache=cache, batch_size=2,
                           block_size=block)
    blocks = [min(block, n - a) for a in range(0, n, block)]
    assert sum(updates) == n and max(updates) <= 2
    assert len(updates) == sum(math.ceil(b / 2) for b in blocks)
