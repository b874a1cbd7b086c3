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
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embed_kd.candidates.bm25 import BM25Config, BM25Retriever
from embed_kd.data.beir import BeirDataset
from embed_kd.data.fingerprint import fingerprint_corpus
from embed_kd.device import device_info
from embed_kd.encode import encode_texts, uses_cosine
from embed_kd.errors import EmbedKDError
from embed_kd.runs import evaluate_run
from embed_kd.index.cache import EmbeddingCache
from embed_kd.index.compression import Compression, bytes_per_vector
from embed_kd.index.encoding import encode_corpus
from embed_kd.index.search import dense_run
from embed_kd.io import utc_now, versions
from embed_kd.models import model_info

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

    scored, timings = score_run(dataset, run, opt, t0, encode_docs_s=encode_docs_s,
                                encode_queries_s=encode_queries_s, search_s=search_s)
    result = eval_result(
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
    opt = options or EvalOptions()
    t0 = time.perf_counter()
    config = config or BM25Config()
    retriever = BM25Retriever.fit(dataset.corpus, config, show_progress=opt.show_progress)
    index_s = time.perf_counter() - t0
    t = time.perf_counter()
    run = retriever.retrieve(dataset.queries, k=opt.top_k)
    search_s = time.perf_counter() - t
    scored, timings = score_run(dataset, run, opt, t0, index_docs_s=index_s, search_s=search_s)
    result = eval_result("bm25", dataset, scored, timings, query_model=None, doc_model=None,
                         index={"kind": "bm25s", "top_k": opt.top_k, **config.__dict__}, cache={"docs": "off"})
    result["run"] = run
    return result


def score_run(dataset: BeirDataset, run: dict, opt: EvalOptions, t0: float, **stage_s: float) -> tuple[dict, dict]:
    """Score ``run`` against ``dataset.qrels`` (pytrec_eval) and build the result's ``timings``: the
    pre-measured ``opt.timings``, each stage's seconds (``stage_s``, in order), ``evaluate_s`` and
    ``total_s`` (since ``t0``, plus the pre-measured ones). Shared by every evaluation mode."""
    t = time.perf_counter()
    scored = evaluate_run(dataset.qrels, run, ignore_identical_ids=opt.ignore_identical_ids)
    timings = {**opt.timings, **stage_s, "evaluate_s": time.perf_counter() - t}
    timings["total_s"] = time.perf_counter() - t0 + sum(opt.timings.values())
    return scored, timings


def eval_result(mode, dataset: BeirDataset, scored: dict, timings: dict, *, query_model, doc_model, index,
                cache) -> dict:
    """The ``embed-kd/eval@1`` document (schema above) of one evaluation; every evaluation mode
    (dense, BM25, sparse, ensemble) builds its result here and adds its own blocks."""
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
        "created": utc_now(),
    }
