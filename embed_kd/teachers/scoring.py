"""The ``score-teacher`` loop: mine candidates, score them with teachers, commit chunk by chunk.

For each chunk of ``chunk_size`` queries (split order) that the output store does not hold yet:

1. mine candidates (:class:`~embed_kd.candidates.mining.CandidateMiner`: union of sources + qrels
   positives, with per-source ranks);
2. score every (query, candidate) pair with every teacher (:mod:`embed_kd.teachers.scorers`);
3. with several teachers, combine them per query into ``score``
   (:func:`~embed_kd.teachers.combine.combine_scores`); with one, ``score`` is its score;
4. commit the chunk (one Parquet file, atomic rename; :mod:`embed_kd.teachers.store`).

Everything a chunk holds depends only on the chunk's queries (candidates, batches, normalisation),
so a run resumed after an interruption — ``kill -9`` included — writes exactly the rows a clean run
writes. An output made with another config is refused unless ``overwrite``. ``shard=(I, N)``
scores only the chunks ``≡ I (mod N)``; :func:`~embed_kd.teachers.store.merge_stores` joins them.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from embed_kd.errors import DataError, EmbedKDError

logger = logging.getLogger(__name__)

#: testing hook: after this many chunks are committed, the process stops (sleeps) right before it
#: would commit the next one, so that a test can ``kill -9`` it at a known point mid-run.
PAUSE_ENV = "EMBED_KD_SCORE_PAUSE_AFTER_CHUNKS"


@dataclass
class ScoreOptions:
    chunk_size: int = 32
    batch_size: int = 32
    shard: tuple[int, int] | None = None
    limit: int | None = None
    overwrite: bool = False
    include_positives: bool = True
    activation: str | None = None
    max_length: int | None = None
    backend: str = "torch"
    #: runtime of the bi-encoders (dense candidate sources, ``bi:`` teachers): torch, openvino or onnx
    bi_backend: str = "torch"
    ensemble_norm: str = "zscore"
    weights: dict[str, float] | None = None
    cache_dir: str | Path | None = None
    use_cache: bool = True
    show_progress: bool = True
    #: a store of the same config that is already complete is returned as it is instead of refused
    #: (a multi-process run resumed after its merge failed: :mod:`embed_kd.teachers.parallel`)
    keep_complete: bool = False
    extra: dict = field(default_factory=dict)


def dataset_entry(dataset) -> dict:
    from embed_kd.data.fingerprint import fingerprint_corpus, fingerprint_qrels, fingerprint_queries

    return {"name": dataset.name, "split": dataset.split, "path": str(dataset.path),
            "corpus_fingerprint": fingerprint_corpus(dataset.corpus),
            "queries_fingerprint": fingerprint_queries(dataset.queries),
            "qrels_fingerprint": fingerprint_qrels(dataset.qrels),
            "n_queries": len(dataset.queries), "notes": list(dataset.notes),
            # false for queries without relevance judgments (--queries FILE): labels are then 0
            "judged": bool(dataset.qrels), "sources": dict(getattr(dataset, "sources", None) or {})}


def score_teacher(dataset, candidates: Sequence[str], teachers: Sequence[str], out: str | os.PathLike,
                  options: ScoreOptions | None = None) -> dict:
    """Run (or resume) scoring into the store at ``out``; returns a summary dict.

    ``candidates`` / ``teachers`` are spec strings (see :mod:`embed_kd.candidates.mining` and
    :mod:`embed_kd.teachers.scorers`). Raises :class:`EmbedKDError` on bad input before anything is
    written.
    """
    from embed_kd.candidates.mining import CandidateMiner, parse_candidate_spec
    from embed_kd.candidates.shared import SharedResources
    from embed_kd.index.cache import EmbeddingCache
    from embed_kd.teachers.bi_backend import BACKENDS as BI_BACKENDS
    from embed_kd.teachers.combine import NORMS, parse_weights
    from embed_kd.teachers.scorers import build_teacher, parse_teacher_spec
    from embed_kd.teachers.store import ARTIFACT, ScoreStoreWriter, new_manifest

    from embed_kd.io import check_writable, ownership_problem

    opt = options or ScoreOptions()
    t0 = time.perf_counter()
    check_writable(out)  # an unwritable output fails before mining and scoring
    if ownership_problem(out, ARTIFACT) is not None and not ScoreStoreWriter.is_scaffolding(Path(out)):
        from embed_kd.io import claim_output

        claim_output(out, ARTIFACT, overwrite=opt.overwrite)  # a folder that is not a store: refused now
    if opt.limit:
        dataset = dataset.sliced(opt.limit)
    if not dataset.queries:
        raise DataError(f"{dataset.path}: split '{dataset.split}' has no queries to score (pass --queries FILE)")
    if opt.shard is not None:
        i, n = opt.shard
        if not (n >= 1 and 0 <= i < n):
            raise EmbedKDError(f"--shard {i}/{n}: expected I/N with 0 <= I < N")
    if opt.bi_backend not in BI_BACKENDS:
        raise EmbedKDError(f"--bi-backend must be one of {', '.join(BI_BACKENDS)}; got {opt.bi_backend!r}")
    if opt.ensemble_norm not in NORMS:
        raise EmbedKDError(f"--ensemble must be one of {', '.join(NORMS)}; got {opt.ensemble_norm!r}")
    cand_specs = [parse_candidate_spec(c) for c in candidates]
    if not cand_specs:
        raise EmbedKDError("at least one --candidates source is needed (e.g. --candidates bm25:100)")
    t_specs = [parse_teacher_spec(t) for t in teachers]
    if not t_specs:
        raise EmbedKDError("at least one --teacher is needed (e.g. --teacher ce:MODEL or --teacher bm25)")
    names = [t.name for t in t_specs]
    if len(set(names)) != len(names):
        raise EmbedKDError(f"--teacher: names {names} are not unique; name them, e.g. --teacher big=ce:MODEL")
    if opt.weights and len(t_specs) == 1:
        raise EmbedKDError("--weights needs several teachers")
    weights = parse_weights(",".join(f"{k}={v}" for k, v in opt.weights.items()) if opt.weights else None, names)

    cache = EmbeddingCache(opt.cache_dir, enabled=opt.use_cache)
    res = SharedResources(dataset, cache=cache, batch_size=opt.batch_size, show_progress=opt.show_progress,
                          prepare_bi_encoder=_bi_runtime(opt.bi_backend, cache.root))
    miner = CandidateMiner(cand_specs, res, include_positives=opt.include_positives)
    t = time.perf_counter()
    cand_entries = miner.prepare()
    built = [build_teacher(s, res, activation=opt.activation, max_length=opt.max_length,
                           batch_size=opt.batch_size, backend=opt.backend)
             if s.kind == "cross-encoder" else build_teacher(s, res) for s in t_specs]
    prepare_s = time.perf_counter() - t
    ensemble = None if len(built) == 1 else {"norm": opt.ensemble_norm, "weights": weights}
    shard = {"index": opt.shard[0], "count": opt.shard[1]} if opt.shard else None
    manifest = new_manifest(dataset=dataset_entry(dataset), candidates=cand_entries,
                            teachers=[b.manifest_entry() for b in built], ensemble=ensemble,
                            include_positives=opt.include_positives, shard=shard)

    out = Path(out)
    if opt.keep_complete and not opt.overwrite:
        done = _complete_store(out, manifest)
        if done is not None:
            logger.info("%s: already complete with this config; nothing to score", out)
            return {"chunks_skipped": done["progress"]["chunks"], "chunks_written": 0, "queries_scored": 0,
                    "pairs": 0, "pair_scores": 0, "rows": done["progress"]["rows"], "loop_s": 0.0,
                    "pairs_per_s": None, "teacher_s": {}, "mine_s": 0.0, "score_s": 0.0, "write_s": 0.0,
                    "complete": True, "shard": done.get("shard"), "out": str(out), "prepare_s": prepare_s,
                    "total_s": time.perf_counter() - t0, "config_fingerprint": done["config_fingerprint"]}
    existed = out.exists()
    fresh = not (out / "manifest.json").is_file() or opt.overwrite
    writer = ScoreStoreWriter.create(out, manifest, chunk_size=opt.chunk_size, overwrite=opt.overwrite)
    try:
        summary = _run_chunks(writer, dataset, miner, built, ensemble, opt)
    except BaseException:
        writer.close()
        if fresh and not any((out / "shards").glob("chunk-*.parquet")):
            # nothing was committed: leave nothing behind (what this run made, not a folder it found empty)
            if existed and not opt.overwrite:
                ScoreStoreWriter.clear_scaffolding(out)
            else:
                shutil.rmtree(out, ignore_errors=True)
        raise
    summary.update({"out": str(out), "prepare_s": prepare_s, "total_s": time.perf_counter() - t0,
                    "config_fingerprint": manifest["config_fingerprint"]})
    return summary


def _bi_runtime(backend: str, cache_root: Path):
    """What every loaded bi-encoder goes through: ``with_backend`` (conversions cached under ``cache_root``)."""
    if backend == "torch":
        return None
    from embed_kd.teachers.bi_backend import with_backend

    return lambda model: with_backend(model, backend, cache_root=cache_root, flag="--bi-backend")


def _complete_store(out: Path, manifest: dict) -> dict | None:
    """The manifest of a complete store at ``out`` made with ``manifest``'s config and shard, else None."""
    from embed_kd.teachers.store import open_scores

    if not (out / "manifest.json").is_file():
        return None
    try:
        old = open_scores(out, allow_incomplete=True).manifest
    except EmbedKDError:
        return None
    same = (old.get("complete") and old["config_fingerprint"] == manifest["config_fingerprint"]
            and (old.get("shard") or None) == (manifest.get("shard") or None))
    return old if same else None


def _run_chunks(writer, dataset, miner, teachers, ensemble, opt: ScoreOptions) -> dict:
    from tqdm.auto import tqdm

    from embed_kd.teachers.combine import combine_scores

    qids = list(dataset.queries)
    owned, pending = writer.owned(), writer.pending()
    skipped = len(owned) - len(pending)
    if skipped:
        logger.info("resuming %s: %d of %d chunk(s) already committed", writer.folder, skipped, len(owned))
    pause_after = int(os.environ.get(PAUSE_ENV, "0") or 0)
    pending_queries = sum(b - a + 1 for a, b in pending)
    # the bar's total from the start: the candidate budget (sum of the sources' k, at most the corpus)
    # per pending query, refined after each chunk from the pairs actually mined (sources overlap)
    specs = getattr(miner, "specs", None) or []
    budget = min(sum(s.k for s in specs), len(dataset.corpus)) if specs else 0
    bar = tqdm(total=(pending_queries * budget * len(teachers)) or None, unit="pair", desc="score-teacher",
               disable=not opt.show_progress, dynamic_ncols=True, smoothing=0.1)
    n_pairs = n_queries = committed = 0
    timings = {"mine_s": 0.0, "score_s": 0.0, "write_s": 0.0}
    per_teacher_s = {t.name: 0.0 for t in teachers}
    t_loop = time.perf_counter()
    try:
        for a, b in pending:
            chunk_q = qids[a : b + 1]
            t = time.perf_counter()
            cands = miner.mine(chunk_q)
            timings["mine_s"] += time.perf_counter() - t
            chunk_pairs = sum(len(c.doc_ids) for c in cands)
            n_queries += len(chunk_q)
            # the bar's total: pairs so far + an estimate for the queries left (candidates per query vary)
            est_left = (pending_queries - n_queries) * (n_pairs + chunk_pairs) / max(n_queries, 1)
            bar.total = int(n_pairs + chunk_pairs + est_left) * len(teachers)
            bar.refresh()
            cols = {}
            t = time.perf_counter()
            for teacher in teachers:
                tt = time.perf_counter()
                cols[teacher.name] = teacher.score(chunk_q, [c.doc_ids for c in cands], progress=bar.update)
                per_teacher_s[teacher.name] += time.perf_counter() - tt
            timings["score_s"] += time.perf_counter() - t
            n_pairs += chunk_pairs
            rows = _chunk_columns(cands, cols, ensemble, combine_scores, writer)
            if pause_after and committed >= pause_after:
                logger.warning("%s=%d: pausing before committing chunk %d-%d", PAUSE_ENV, pause_after, a, b)
                time.sleep(3600)
            t = time.perf_counter()
            writer.write_chunk(a, b, rows)
            timings["write_s"] += time.perf_counter() - t
            committed += 1
            bar.set_postfix(queries=f"{writer.manifest['progress']['queries_done']}/{len(qids)}", refresh=False)
    finally:
        bar.close()
    loop_s = time.perf_counter() - t_loop
    m = writer.finalize()
    scored = n_pairs * len(teachers)
    return {"chunks_skipped": skipped, "chunks_written": committed, "queries_scored": n_queries,
            "pairs": n_pairs, "pair_scores": scored, "rows": m["progress"]["rows"],
            "loop_s": loop_s, "pairs_per_s": (n_pairs / timings["score_s"]) if timings["score_s"] > 0 else None,
            "teacher_s": per_teacher_s, **timings, "complete": m["complete"], "shard": m.get("shard")}


def _chunk_columns(cands, cols, ensemble, combine_scores, writer) -> dict:
    names = list(cols)
    out = {"query_id": [], "doc_id": [], "label": [], "score": []}
    for t in names:
        out[f"score__{t}"] = []
    sources = list(cands[0].ranks) if cands else []
    for s in sources:
        out[f"rank__{s}"] = []
    for i, c in enumerate(cands):
        n = len(c.doc_ids)
        out["query_id"] += [c.qid] * n
        out["doc_id"] += c.doc_ids
        out["label"] += c.labels
        per = {t: cols[t][i] for t in names}
        for t in names:
            out[f"score__{t}"] += per[t].tolist()
        if ensemble is None:
            out["score"] += per[names[0]].tolist()
        else:
            out["score"] += combine_scores({t: per[t].tolist() for t in names}, ensemble["norm"], ensemble["weights"])
        for s in sources:
            out[f"rank__{s}"] += c.ranks[s]
    return {k: out[k] for k in writer.schema.names}
