"""Run MTEB tasks (the ``mteb`` package) with a student — symmetric, or asymmetric for retrieval.

``embed-kd eval --mteb TASK[,TASK…]`` hands the model to ``mteb.evaluate``: mteb loads the task's
data, encodes, searches and scores with its own code, so the numbers are the ones MTEB users
compare. embed-kd adds two things:

- **asymmetric retrieval** — :func:`routed_encoder` wraps two sentence-transformers models in
  one mteb encoder that routes by mteb's ``prompt_type``: ``document`` inputs go to the
  *document* model (the teacher), ``query`` inputs and every non-retrieval input (STS,
  classification, …) to the *query* model (the student). Each side keeps its own prompts and
  ``encode_query`` / ``encode_document`` through mteb's ``SentenceTransformerEncoderWrapper``;
  similarity is the document model's (the space the documents live in).
- **local retrieval data** — :func:`local_retrieval_task` builds an ``AbsTaskRetrieval`` whose
  ``load_data`` fills mteb's split data (corpus / queries / relevant_docs) from a local BEIR
  folder read by :func:`embed_kd.data.load_beir` (validated, sliceable). The model, search and
  scoring are mteb's, exactly as for a hub task. A hub retrieval task given local data keeps its
  metadata (name, main score, task prompts) and only swaps the data.

Task resolution (:func:`resolve_tasks`), per name:

==============================  ===========================================================
``beir:DATA``                   a local retrieval task from ``DATA`` (a BEIR folder or a name
                                resolved like ``--data``), named ``beir:<folder name>``
a retrieval task + ``data``     the hub task's metadata, the local data (``--data``)
a retrieval task, hub offline   the local BEIR folder named like its hub dataset
                                (``mteb/scifact`` → ``scifact`` under ``$EMBED_KD_DATA``)
any task, hub reachable         ``mteb.get_task(name)``: mteb downloads the hub dataset
a non-retrieval task, offline   an error (its data exists only on the hub)
==============================  ===========================================================

mteb's own result cache is not used (``cache=None``): nothing is written under ``~/.cache/mteb``
or the working folder; the result JSON below is the only output.

Result JSON (schema ``embed-kd/mteb@1``), written by ``embed-kd eval --mteb … --output``::

    {
      "schema": "embed-kd/mteb@1",
      "mode": "symmetric" | "asymmetric",
      "query_model": {"spec", "fingerprint", "dim", "max_seq_length"},
      "doc_model":   {"spec", "fingerprint", "dim", "max_seq_length"},
      "tasks": [
        {"name", "type", "main_score_name", "main_score", "source": "hub" | "local",
         "dataset": {"name", "path", "split", "n_queries", "n_docs", "corpus_fingerprint", "notes"}
                    | {"hub": repo, "revision"},
         "scores": {split: [{"hf_subset", "main_score", "ndcg_at_10", "recall_at_100", …}]},
         "evaluation_time_s"}
      ],
      "metrics": {"ndcg_at_10", "recall_at_100", "mrr_at_10"} | absent
                  (the first retrieval task's first split, for `embed-kd report`),
      "timings": {"load_models_s", "encode_queries_s", "encode_docs_s", "encode_other_s", "total_s"},
      "throughput": {"queries_per_s", "docs_per_s"},
      "cache": {"docs": ["hit" | "miss", …] (one per document encoding) | "off" | "not used"},
      "device": {"device", "type", "name"},   # where the models ran (embed_kd.device.device_info)
      "versions": {"embed_kd", "sentence_transformers", "torch", "transformers", "mteb", "python"},
      "created": ISO-8601 UTC
    }

mteb rounds its scores to 5 decimals; ``nauc_*`` confidence diagnostics are left out.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embed_kd.data import load_beir, resolve_dataset
from embed_kd.data.fingerprint import fingerprint_corpus
from embed_kd.device import device_info
from embed_kd.errors import EmbedKDError
from embed_kd.index.cache import EmbeddingCache
from embed_kd.index.encoding import encode_corpus
from embed_kd.io import utc_now, versions
from embed_kd.models import model_info
from embed_kd.presets import hub_reachable

logger = logging.getLogger(__name__)
SCHEMA = "embed-kd/mteb@1"
LOCAL_PREFIX = "beir:"


@dataclass
class EncodeStats:
    """Texts encoded and seconds spent, per role (query / document / other)."""

    counts: dict = field(default_factory=lambda: {"query": 0, "document": 0, "other": 0})
    seconds: dict = field(default_factory=lambda: {"query": 0.0, "document": 0.0, "other": 0.0})


def _role(prompt_type) -> str:
    value = getattr(prompt_type, "value", prompt_type)
    return value if value in ("query", "document") else "other"


def _default_prompts_only(model) -> bool:
    return not any((getattr(model, "prompts", None) or {}).values())


def _corpus_of(inputs) -> dict | None:
    """The ``{id: {title, text}}`` corpus behind an mteb document dataloader (None if not recoverable)."""
    ds = getattr(inputs, "dataset", None)
    cols = getattr(ds, "column_names", None) or []
    if "id" not in cols or "body" not in cols:
        return None
    titles = ds["title"] if "title" in cols else [None] * len(ds)
    corpus = {i: {"title": t or "", "text": b or ""} for i, t, b in zip(ds["id"], titles, ds["body"])}
    return corpus if len(corpus) == len(ds) else None


def routed_encoder(query_model, doc_model=None, *, cache=None):
    """An mteb encoder: queries (and non-retrieval inputs) by ``query_model``, documents by ``doc_model``.

    ``doc_model`` None (or the same object) gives the symmetric case through the same wrapper, so
    both modes share one code path and one set of timings (``encoder.stats``).

    ``cache`` (an :class:`embed_kd.index.EmbeddingCache`): retrieval documents are looked up in /
    stored to embed-kd's document-embedding cache with the same key ``embed-kd eval`` uses (doc
    model fingerprint, corpus fingerprint, max length, normalisation), so a teacher's corpus is
    encoded once for every student and for both evaluators. Only for a doc model without custom
    prompts (a prompt would change the embeddings but not the key); otherwise mteb encodes.
    """
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper

    class RoutedEncoder(AbsEncoder):
        def __init__(self, q, d):
            self.doc_st = q if d is None else d
            self.cache = cache
            self.cache_results: list[str] = []
            self.query = SentenceTransformerEncoderWrapper(q)
            self.document = self.query if d is None or d is q else SentenceTransformerEncoderWrapper(d)
            self.model = q
            self.mteb_model_meta = self.query.mteb_model_meta
            self.stats = EncodeStats()

        def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
            role = _role(prompt_type)
            side = self.document if role == "document" else self.query
            t = time.perf_counter()
            corpus = _corpus_of(inputs) if role == "document" and self.cache is not None else None
            if corpus is not None and _default_prompts_only(self.doc_st):
                from types import SimpleNamespace

                emb, _, res = encode_corpus(self.doc_st, SimpleNamespace(corpus=corpus), cache=self.cache,
                                            batch_size=kwargs.get("batch_size", 32),
                                            show_progress=kwargs.get("show_progress_bar", True))
                self.cache_results.append("hit" if res.hit else "miss")
            else:
                emb = side.encode(inputs, task_metadata=task_metadata, hf_split=hf_split, hf_subset=hf_subset,
                                  prompt_type=prompt_type, **kwargs)
            self.stats.seconds[role] += time.perf_counter() - t
            self.stats.counts[role] += len(emb)
            return emb

        def similarity(self, embeddings1, embeddings2):
            return self.document.similarity(embeddings1, embeddings2)

        def similarity_pairwise(self, embeddings1, embeddings2):
            return self.document.similarity_pairwise(embeddings1, embeddings2)

    return RoutedEncoder(query_model, doc_model)


def _split_data(dataset) -> dict:
    """mteb's ``RetrievalSplitData`` from a :class:`embed_kd.data.beir.BeirDataset`."""
    from datasets import Dataset

    corpus = Dataset.from_dict({
        "id": list(dataset.corpus),
        "title": [d.get("title") or "" for d in dataset.corpus.values()],
        "text": [d.get("text") or "" for d in dataset.corpus.values()],
    })
    qids = list(dataset.qrels)
    queries = Dataset.from_dict({"id": qids, "text": [dataset.queries[q] for q in qids]})
    relevant = {q: {d: int(r) for d, r in docs.items()} for q, docs in dataset.qrels.items()}
    return {"corpus": corpus, "queries": queries, "relevant_docs": relevant, "top_ranked": None}


def local_retrieval_task(dataset, *, name: str | None = None, metadata=None):
    """An mteb retrieval task over a loaded (possibly sliced) BEIR split.

    ``metadata``: a hub task's ``TaskMetadata`` to keep (name, main score, prompts); its dataset
    and split are replaced by the local ones. Without it a minimal English text-retrieval
    metadata named ``name`` (default ``beir:<dataset name>``) is made.
    """
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.task_metadata import TaskMetadata

    local = {"path": str(dataset.path), "revision": fingerprint_corpus(dataset.corpus)}
    if metadata is not None:
        meta = metadata.model_copy(update={"dataset": local, "eval_splits": [dataset.split]})
    else:
        meta = TaskMetadata(
            name=name or f"{LOCAL_PREFIX}{dataset.name}", dataset=local,
            description=f"Local BEIR folder {dataset.path} ({dataset.split} split), loaded by embed-kd.",
            type="Retrieval", category="t2t", modalities=["text"], eval_splits=[dataset.split],
            eval_langs=["eng-Latn"], main_score="ndcg_at_10",
        )

    class LocalBeirRetrieval(AbsTaskRetrieval):
        metadata = meta

        def load_data(self, num_proc=None, **kwargs):
            if self.data_loaded:
                return
            self.dataset = {"default": {dataset.split: _split_data(dataset)}}
            self.data_loaded = True

    return LocalBeirRetrieval()


@dataclass
class ResolvedTask:
    task: Any
    source: str  # "hub" | "local"
    dataset: dict


def _is_retrieval(task) -> bool:
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    return isinstance(task, AbsTaskRetrieval) and task.metadata.type == "Retrieval"


def _load_local(spec: str, split: str, *, limit_queries=None, limit_docs=None, allow_missing_ids=False,
                download: bool = True):
    folder = resolve_dataset(spec, download=download)
    dataset = load_beir(folder, split, name=Path(folder).name, allow_missing_ids=allow_missing_ids)
    if limit_queries or limit_docs:
        dataset = dataset.sliced(limit_queries, limit_docs)
    return dataset


def _local_info(dataset) -> dict:
    return {"name": dataset.name, "path": str(dataset.path), "split": dataset.split,
            "n_queries": len(dataset.qrels), "n_docs": len(dataset.corpus),
            "corpus_fingerprint": fingerprint_corpus(dataset.corpus), "notes": dataset.notes}


def parse_task_names(spec: str) -> list[str]:
    """``"SciFact, NFCorpus"`` → ``["SciFact", "NFCorpus"]`` (empty items refused).

    >>> parse_task_names("SciFact,beir:scifact")
    ['SciFact', 'beir:scifact']
    """
    names = [n.strip() for n in str(spec).split(",")]
    if not all(names):
        raise EmbedKDError(f"--mteb {spec!r}: empty task name (use TASK[,TASK…])")
    return names


def resolve_tasks(names: list[str], *, data: str | None = None, split: str = "test",
                  limit_queries: int | None = None, limit_docs: int | None = None,
                  allow_missing_ids: bool = False, online: bool | None = None) -> list[ResolvedTask]:
    """Turn task names into mteb tasks (see the module docstring for the rules)."""
    import mteb

    if online is None:
        online = hub_reachable()
    load = dict(limit_queries=limit_queries, limit_docs=limit_docs, allow_missing_ids=allow_missing_ids)
    out: list[ResolvedTask] = []
    local_used = False
    for name in names:
        if name.lower().startswith(LOCAL_PREFIX):
            ds = _load_local(name[len(LOCAL_PREFIX):], split, **load)
            out.append(ResolvedTask(local_retrieval_task(ds), "local", _local_info(ds)))
            continue
        try:
            task = mteb.get_task(name)
        except (KeyError, ValueError) as exc:
            raise EmbedKDError(f"--mteb: unknown MTEB task '{name}' ({str(exc).splitlines()[0][:200]}); "
                               f"for a local BEIR folder use beir:FOLDER") from None
        hub = {"hub": task.metadata.dataset.get("path"), "revision": task.metadata.dataset.get("revision")}
        if _is_retrieval(task) and (data or not online):
            if data and local_used:
                raise EmbedKDError("--data gives the local data of one retrieval task; name one retrieval task "
                                   "with --data, or use beir:FOLDER per task")
            spec = data or str(hub["hub"] or name).rstrip("/").split("/")[-1]
            try:
                ds = _load_local(spec, split, download=bool(data) and online, **load)
            except EmbedKDError as exc:
                if data:
                    raise
                raise EmbedKDError(f"MTEB task '{name}' needs its hub dataset {hub['hub']} and the hub is not "
                                   f"reachable; no local copy either ({exc}). Pass --data FOLDER.") from None
            local_used = True
            out.append(ResolvedTask(local_retrieval_task(ds, metadata=task.metadata), "local", _local_info(ds)))
        elif not online:
            raise EmbedKDError(f"MTEB task '{name}' ({task.metadata.type}) needs its hub dataset {hub['hub']} and "
                               f"the hub is not reachable; offline only retrieval tasks run (from a local BEIR folder)")
        else:
            if limit_queries or limit_docs:
                logger.warning("--limit-queries/--limit-docs apply to local data only; %s runs in full", name)
            out.append(ResolvedTask(task, "hub", hub))
    return out


def _scores(task_result) -> dict:
    return {
        split: [{k: v for k, v in s.items() if not k.startswith("nauc_")} for s in rows]
        for split, rows in task_result.scores.items()
    }


def run_mteb(tasks: list[ResolvedTask], query_model, doc_model=None, *, batch_size: int = 32,
             show_progress: bool = True, timings: dict | None = None, cache_dir=None, use_cache: bool = True) -> dict:
    """Evaluate ``tasks`` with ``mteb.evaluate``; returns the ``embed-kd/mteb@1`` result dict.

    ``cache_dir`` / ``use_cache``: the document-embedding cache (see :func:`routed_encoder`).
    """
    import mteb

    t0 = time.perf_counter()
    asym = doc_model is not None and doc_model is not query_model
    q_info = model_info(query_model)
    d_info = model_info(doc_model) if asym else q_info
    if asym and q_info["dim"] != d_info["dim"]:
        raise EmbedKDError(
            f"asymmetric mode needs one embedding space: query model '{q_info['spec']}' makes "
            f"{q_info['dim']}-dim vectors, doc model '{d_info['spec']}' makes {d_info['dim']}-dim vectors")

    cache = EmbeddingCache(cache_dir, enabled=use_cache) if use_cache else None
    encoder = routed_encoder(query_model, doc_model if asym else None, cache=cache)
    out_tasks = []
    for rt in tasks:
        t = time.perf_counter()
        res = mteb.evaluate(encoder, rt.task, cache=None, raise_error=True, show_progress_bar=show_progress,
                            encode_kwargs={"batch_size": batch_size, "show_progress_bar": show_progress})
        if res.exceptions:  # pragma: no cover - raise_error=True raises instead
            raise EmbedKDError(f"MTEB task {rt.task.metadata.name} failed: {res.exceptions[0]}")
        tr = res.task_results[0]
        scores = _scores(tr)
        first = next(iter(scores.values()))[0]
        out_tasks.append({
            "name": rt.task.metadata.name, "type": rt.task.metadata.type,
            "main_score_name": rt.task.metadata.main_score, "main_score": first.get("main_score"),
            "source": rt.source, "dataset": rt.dataset, "scores": scores,
            "evaluation_time_s": time.perf_counter() - t,
        })
        logger.info("MTEB %s (%s): %s = %s", rt.task.metadata.name, rt.source, rt.task.metadata.main_score,
                    first.get("main_score"))
    st = encoder.stats
    timings = {**(timings or {}), "encode_queries_s": st.seconds["query"], "encode_docs_s": st.seconds["document"],
               "encode_other_s": st.seconds["other"]}
    timings["total_s"] = time.perf_counter() - t0 + timings.get("load_models_s", 0.0)
    result = {
        "schema": SCHEMA,
        "mode": "asymmetric" if asym else "symmetric",
        "query_model": q_info,
        "doc_model": d_info,
        "tasks": out_tasks,
        "timings": timings,
        "throughput": {
            "queries_per_s": st.counts["query"] / st.seconds["query"] if st.seconds["query"] > 0 else None,
            "docs_per_s": (st.counts["document"] / st.seconds["document"]
                           if st.seconds["document"] > 0 and "hit" not in encoder.cache_results else None),
        },
        "cache": {"docs": encoder.cache_results or ("off" if cache is None else "not used")},
        "device": device_info(),
        "versions": {**versions(), "mteb": mteb.__version__},
        "created": utc_now(),
    }
    for task in out_tasks:
        if task["type"] == "Retrieval":
            s = next(iter(task["scores"].values()))[0]
            if all(k in s for k in ("ndcg_at_10", "recall_at_100", "mrr_at_10")):
                result["metrics"] = {k: s[k] for k in ("ndcg_at_10", "recall_at_100", "mrr_at_10")}
                break
    return result


def mteb_table(result: dict) -> str:
    """Markdown: one row per task and split (main score and, for retrieval, nDCG@10 / Recall@100).

    >>> r = {"tasks": [{"name": "SciFact", "type": "Retrieval", "source": "local", "main_score_name": "ndcg_at_10",
    ...       "scores": {"test": [{"hf_subset": "default", "main_score": 0.64512, "ndcg_at_10": 0.64512,
    ...                            "recall_at_100": 0.925}]}}]}
    >>> print(mteb_table(r))
    | task | source | split | subset | main score | value | nDCG@10 | Recall@100 |
    |---|---|---|---|---|---|---|---|
    | SciFact | local | test | default | ndcg_at_10 | 0.6451 | 0.6451 | 0.9250 |
    """
    fmt = lambda v: "—" if v is None else f"{v:.4f}"  # noqa: E731
    lines = ["| task | source | split | subset | main score | value | nDCG@10 | Recall@100 |",
             "|---|---|---|---|---|---|---|---|"]
    for t in result["tasks"]:
        for split, rows in t["scores"].items():
            for s in rows:
                lines.append(f"| {t['name']} | {t['source']} | {split} | {s.get('hf_subset', 'default')} | "
                             f"{t['main_score_name']} | {fmt(s.get('main_score'))} | {fmt(s.get('ndcg_at_10'))} | "
                             f"{fmt(s.get('recall_at_100'))} |")
    return "\n".join(lines)

