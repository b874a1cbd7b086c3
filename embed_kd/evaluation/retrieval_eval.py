"""Evaluate a retriever on a BEIR split: encode (cached), index with FAISS, score with pytrec_eval.

Modes:

- **symmetric**: one bi-encoder encodes queries and documents;
- **asymmetric**: documents by ``doc_model`` (a teacher), queries by ``query_model`` (its aligned
  student). Both must produce vectors of the same dimension;
- **bm25**: lexical baseline (``bm25s``).

Result JSON (schema ``embed-kd/eval@1``), written by ``embed-kd eval --output``::

    {
      "schema": "embed-kd/eval@1",
      "mode": "symmetric" | "asymmetric" | "bm25",
      "dataset": {"name", "path", "split", "n_queries", "n_docs", "corpus_fingerprint", "notes"},
      "query_model": {"spec", "fingerprint", "dim", "max_seq_length"} | null,
      "doc_model":   {"spec", "fingerprint", "dim", "max_seq_length"} | null,
      "index": {"kind", "top_k", "normalize", "truncate_dim" (null = all), "precision", "rescore",
                "bytes_per_doc"},    # compression: embed_kd.index.compression
      "metrics": {"ndcg_at_10", "recall_at_100", "mrr_at_10"},
      "timings": {"load_models_s", "load_data_s", "encode_docs_s", "encode_queries_s", "search_s",
                  "evaluate_s", "total_s"},
      "throughput": {"docs_per_s", "queries_per_s"},
      "cache": {"docs": "hit" | "miss" | "off", "path"},
      "device": {"device", "type", "name"},   # where the models ran (embed_kd.device.device_info)
      "versions": {"embed_kd", "sentence_transformers", "torch", "faiss", "python"},
      "created": ISO-8601 UTC
    }

``encode_docs_s`` is 0-ish on a cache hit (the time to read and verify the cache entry).
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embed_kd.data.beir import BeirDataset
from embed_kd.data.fingerprint import fingerprint_corpus
from embed_kd.encode import embedding_dim, encode_texts, uses_cosine
from embed_kd.errors import EmbedKDError
from embed_kd.evaluation.metrics import evaluate_run
from embed_kd.index.cache import EmbeddingCache
from embed_kd.index.compression import Compression, CompressedSearch, bytes_per_vector
from embed_kd.index.faiss_index import build_faiss_index, search_index
from embed_kd.models import fingerprint_model, model_name

logger = logging.getLogger(__name__)
SCHEMA = "embed-kd/eval@1"


@dataclass
class EvalOptions:
    top_k: int = 100
    index: str = "flat"
    batch_size: int = 32
    cache_dir: str | Path | None = None
    use_cache: bool = True
    ignore_identical_ids: bool = False
    show_progress: bool = True
    timings: dict = field(default_factory=dict)  # pre-measured timings (e.g. model loading) to include
    compression: Compression | None = None  # --truncate-dim / --precision / --rescore (embed_kd.index.compression)


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("embed-kd", "sentence-transformers", "torch", "faiss-cpu", "transformers"):
        try:
            out[pkg.replace("-", "_")] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _finite(length):
    """A model's max_seq_length for JSON: None when it has no limit (a StaticEmbedding model's ``inf``)."""
    return None if length is None or length == float("inf") else length


def model_info(model) -> dict:
    info = {
        "spec": model_name(model),
        "fingerprint": fingerprint_model(model),
        "dim": embedding_dim(model),
        "max_seq_length": _finite(getattr(model, "max_seq_length", None)),
    }
    if getattr(model, "embed_kd_route", None):  # one tower of an asym model (embed_kd.students.asym)
        info["route"] = model.embed_kd_route
    if getattr(model, "embed_kd_backend", None):  # --backend openvino|onnx (embed_kd.teachers.bi_backend)
        info["backend"] = model.embed_kd_backend
    return info


def encode_corpus(model, dataset: BeirDataset, *, cache: EmbeddingCache, batch_size: int = 32,
                  normalize: bool | None = None, show_progress: bool = True):
    """Document embeddings for ``dataset.corpus`` (row i = ``list(corpus)[i]``), from the cache if valid.

    Encoded block by block into a memory-mapped cache entry, data-parallel under ``torchrun``
    (:mod:`embed_kd.index.stream_encode`). Returns ``(embeddings, doc_ids, cache_result)``; the
    embeddings are a copy-on-write memory map.
    """
    from embed_kd.index.stream_encode import encode_corpus_streamed

    normalize = uses_cosine(model) if normalize is None else normalize
    key = cache.make_key(fingerprint_model(model), fingerprint_corpus(dataset.corpus),
                         getattr(model, "max_seq_length", None), normalize, getattr(model, "embed_kd_backend", None))
    res = encode_corpus_streamed(model, dataset.corpus, key, cache=cache, batch_size=batch_size, normalize=normalize,
                                 show_progress=show_progress, model_label=model_name(model))
    return res.embeddings, res.ids, res


def dense_run(query_emb: np.ndarray, qids: list[str], doc_emb: np.ndarray, doc_ids: list[str], *,
              k: int = 100, index: str = "flat", compression: Compression | None = None,
              normalize: bool = True) -> dict[str, dict[str, float]]:
    """Search ``doc_emb`` with FAISS and return a TREC-style run.

    ``compression``: truncate / quantize documents and queries first (:mod:`embed_kd.index.compression`;
    ``normalize``: renormalise truncated vectors).
    """
    if compression is not None and (compression.active or compression.rescore):
        scores, rows = CompressedSearch.build(doc_emb, compression, normalize=normalize, kind=index).search(query_emb, k)
    else:
        from embed_kd.index.faiss_index import on_device

        searcher, _ = on_device(build_faiss_index(doc_emb, index))  # exact flat search on a GPU when it can
        scores, rows = search_index(searcher, query_emb, k)
    return {
        q: {doc_ids[int(r)]: float(s) for r, s in zip(rows[i], scores[i]) if r >= 0}
        for i, q in enumerate(qids)
    }


def evaluate_dense(dataset: BeirDataset, query_model, doc_model=None, *, options: EvalOptions | None = None) -> dict:
    """Symmetric (``doc_model`` None or the same object) or asymmetric dense evaluation."""
    opt = options or EvalOptions()
    t0 = time.perf_counter()
    doc_model = doc_model if doc_model is not None else query_model
    asym = doc_model is not query_model
    q_info, d_info = model_info(query_model), (model_info(doc_model) if asym else None)
    if asym and q_info["dim"] != d_info["dim"]:
        raise EmbedKDError(
            f"asymmetric mode needs one embedding space: query model '{q_info['spec']}' makes "
            f"{q_info['dim']}-dim vectors, doc model '{d_info['spec']}' makes {d_info['dim']}-dim vectors"
        )
    comp = opt.compression or Compression()
    comp.validate(q_info["dim"], opt.index)  # before the corpus encode
    normalize = uses_cosine(doc_model)
    cache = EmbeddingCache(opt.cache_dir, enabled=opt.use_cache)

    t = time.perf_counter()
    doc_emb, doc_ids, cres = encode_corpus(doc_model, dataset, cache=cache, batch_size=opt.batch_size,
                                           normalize=normalize, show_progress=opt.show_progress)
    encode_docs_s = time.perf_counter() - t

    qids = list(dataset.queries)
    t = time.perf_counter()
    q_emb = encode_texts(query_model, [dataset.queries[q] for q in qids], batch_size=opt.batch_size,
                         normalize=normalize, role="query", show_progress=opt.show_progress)
    encode_queries_s = time.perf_counter() - t

    t = time.perf_counter()
    run = dense_run(q_emb, qids, doc_emb, doc_ids, k=opt.top_k, index=opt.index, compression=comp, normalize=normalize)
    search_s = time.perf_counter() - t

    t = time.perf_counter()
    scored = evaluate_run(dataset.qrels, run, ignore_identical_ids=opt.ignore_identical_ids)
    evaluate_s = time.perf_counter() - t

    timings = {**opt.timings, "encode_docs_s": encode_docs_s, "encode_queries_s": encode_queries_s,
               "search_s": search_s, "evaluate_s": evaluate_s}
    timings["total_s"] = time.perf_counter() - t0 + sum(opt.timings.values())
    result = _result(
        "asymmetric" if asym else "symmetric", dataset, scored, timings,
        query_model=q_info, doc_model=d_info or q_info,
        index={"kind": opt.index, "top_k": opt.top_k, "normalize": normalize, **comp.to_dict(),
               "bytes_per_doc": bytes_per_vector(comp.truncate_dim or q_info["dim"], comp.precision)},
        cache={"docs": ("hit" if cres.hit else "miss") if opt.use_cache else "off", "path": str(cres.path)},
    )
    result["throughput"] = {
        "docs_per_s": (len(doc_ids) / encode_docs_s) if not cres.hit and encode_docs_s > 0 else None,
        "queries_per_s": len(qids) / encode_queries_s if encode_queries_s > 0 else None,
    }
    result["run"] = run
    return result


def evaluate_bm25(dataset: BeirDataset, *, options: EvalOptions | None = None, config=None) -> dict:
    from embed_kd.candidates.bm25 import BM25Config, BM25Retriever

    opt = options or EvalOptions()
    t0 = time.perf_counter()
    config = config or BM25Config()
    retriever = BM25Retriever.fit(dataset.corpus, config, show_progress=opt.show_progress)
    index_s = time.perf_counter() - t0
    t = time.perf_counter()
    run = retriever.retrieve(dataset.queries, k=opt.top_k)
    search_s = time.perf_counter() - t
    t = time.perf_counter()
    scored = evaluate_run(dataset.qrels, run, ignore_identical_ids=opt.ignore_identical_ids)
    timings = {**opt.timings, "index_docs_s": index_s, "search_s": search_s,
               "evaluate_s": time.perf_counter() - t}
    timings["total_s"] = time.perf_counter() - t0 + sum(opt.timings.values())
    result = _result("bm25", dataset, scored, timings, query_model=None, doc_model=None,
                     index={"kind": "bm25s", "top_k": opt.top_k, **config.__dict__}, cache={"docs": "off"})
    result["run"] = run
    return result


def _result(mode, dataset: BeirDataset, scored: dict, timings: dict, *, query_model, doc_model, index, cache) -> dict:
    from embed_kd.device import device_info

    return {
        "schema": SCHEMA,
        "mode": mode,
        "dataset": {
            "name": dataset.name, "path": str(dataset.path), "split": dataset.split,
            "n_queries": len(dataset.queries), "n_docs": len(dataset.corpus),
            "corpus_fingerprint": fingerprint_corpus(dataset.corpus), "notes": dataset.notes,
        },
        "query_model": query_model,
        "doc_model": doc_model,
        "index": index,
        "metrics": scored["metrics"],
        "per_query": scored["per_query"],
        "timings": timings,
        "cache": cache,
        "device": device_info(),
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
