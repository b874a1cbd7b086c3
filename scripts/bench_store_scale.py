"""Corpus-scale memory of the score-store readers: peak RSS and time at 1M / 3M / 10M scored pairs.

A synthetic store (Q queries × 50 candidates: 20k / 60k / 200k queries; one judged positive per
query; random float32 scores; chunks of 1,000 queries) is written through the real writer
(:class:`embed_kd.teachers.store.ScoreStoreWriter`) and read, each in a fresh subprocess, by

- ``builder``: the training-example builder as ``embed-kd train`` runs it —
  :func:`embed_kd.training.data.build_score_examples` over a
  :class:`~embed_kd.training.data.CandidateStream` (defaults: 7 stratified negatives × 4 rounds,
  z-scored labels, frozen teacher documents) and the trainer's ``datasets.Dataset`` over it;
- ``builder-in-memory`` (1M and 3M only): the same examples from ``store.by_query()`` (every
  candidate list in RAM, what the builder read before streaming), for the slope;
- ``export``: ``export_margin_mse_tsv`` (``score-teacher export --format margin-mse-tsv``).

Each subprocess reports its own peak RSS (``VmHWM``, /proc/self/status) and its RSS before
reading (after imports and the synthetic dataset: 100k documents, the queries), and the wall time
of the read. Fixed work (the whole store), not a time budget. Writes
``eval/results/store-scale.{json,md}`` (the .md's reading is the raw table; edit by hand after).

    flock /tmp/embed_kd_heavy.lock python scripts/bench_store_scale.py --work /tmp/store-scale
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SIZES = (1_000_000, 3_000_000, 10_000_000)
CANDIDATES = 50
N_DOCS = 100_000
CHUNK_QUERIES = 1000
IN_MEMORY_MAX = 3_000_000


def _rss_mb() -> float:
    """This process's peak RSS: ``VmHWM`` of /proc/self/status. (``getrusage``'s ``ru_maxrss`` would
    carry the parent's RSS at fork across the exec on Linux, hiding a child smaller than its parent.)"""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # pragma: no cover - not Linux


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _dataset(n_queries: int):
    from embed_kd.data.beir import BeirDataset

    corpus = {f"d{j}": {"title": "", "text": f"document {j}"} for j in range(N_DOCS)}
    queries = {f"q{i}": f"synthetic query number {i}" for i in range(n_queries)}
    return BeirDataset("synthetic", ".", "train", corpus, queries, {})


def write_store(folder: Path, pairs: int, seed: int = 0) -> dict:
    import pyarrow as pa

    from embed_kd.teachers.store import ScoreStoreWriter, arrow_schema, new_manifest

    n_q = pairs // CANDIDATES
    m = new_manifest(
        dataset={"name": "synthetic", "split": "train", "corpus_fingerprint": "synthetic",
                 "queries_fingerprint": f"synthetic-{n_q}", "qrels_fingerprint": "synthetic", "n_queries": n_q},
        candidates=[{"source": "bm25", "name": "bm25", "k": CANDIDATES}],
        teachers=[{"name": "ce", "spec": "synthetic", "kind": "cross-encoder", "fingerprint": "synthetic",
                   "activation": None, "max_length": 256, "backend": "torch"}], ensemble=None)
    schema = arrow_schema(["ce"], ["bm25"])
    rng = np.random.default_rng(seed)
    t = time.perf_counter()
    w = ScoreStoreWriter.create(folder, m, chunk_size=CHUNK_QUERIES, overwrite=True)
    for a, b in w.pending():
        q = b - a + 1
        docs = rng.integers(0, N_DOCS, size=(q, CANDIDATES))
        scores = rng.standard_normal((q, CANDIDATES)).astype(np.float32)
        labels = np.zeros((q, CANDIDATES), np.int32)
        labels[:, 0] = 1
        qids = np.repeat(np.array([f"q{i}" for i in range(a, b + 1)], dtype=object), CANDIDATES)
        table = pa.table({"query_id": pa.array(qids, pa.string()),
                          "doc_id": pa.array([f"d{j}" for j in docs.ravel()], pa.string()),
                          "label": labels.ravel(), "score": scores.ravel(), "score__ce": scores.ravel(),
                          "rank__bm25": np.tile(np.arange(1, CANDIDATES + 1, dtype=np.int32), q)}, schema=schema)
        w.write_chunk(a, b, table)
    w.finalize()
    size = sum(p.stat().st_size for p in (folder / "shards").iterdir())
    return {"pairs": n_q * CANDIDATES, "queries": n_q, "write_s": time.perf_counter() - t, "store_mb": size / 2**20}


def measure(store_dir: str, reader: str, out_file: str | None) -> dict:
    """One reader over one store, in this (fresh) process."""
    from embed_kd.teachers.store import open_scores
    from embed_kd.training.data import CandidateStream, build_score_examples

    store = open_scores(store_dir)
    n_q = int(store.manifest["dataset"]["n_queries"])
    result = {"reader": reader}
    if reader.startswith("builder"):
        ds = _dataset(n_q)
        doc_row = {d: i for i, d in enumerate(ds.corpus)}
        result["rss_before_mb"] = _current_rss_mb()
        t = time.perf_counter()
        cands = CandidateStream(store) if reader == "builder" else store.by_query()
        ex = build_score_examples(cands, ds, list(ds.queries), negatives=7, sampling="stratified", rounds=4,
                                  score_norm="zscore", documents="teacher", doc_row=doc_row, seed=42)
        data = ex.dataset()
        result.update(seconds=time.perf_counter() - t, examples=len(data), output_mb=ex.table.nbytes / 2**20)
    elif reader == "export":
        from embed_kd.teachers.export import export_margin_mse_tsv

        result["rss_before_mb"] = _current_rss_mb()
        t = time.perf_counter()
        lines = export_margin_mse_tsv(store, out_file, overwrite=True)
        result.update(seconds=time.perf_counter() - t, lines=lines, output_mb=Path(out_file).stat().st_size / 2**20)
        Path(out_file).unlink()
    else:
        raise SystemExit(f"unknown reader {reader}")
    result["peak_rss_mb"] = _rss_mb()
    return result


def _child(store: Path, reader: str, work: Path) -> dict:
    cmd = [sys.executable, __file__, "_measure", str(store), reader, str(work / "triples.tsv")]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if r.returncode != 0:
        raise SystemExit(f"{reader} on {store} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _fit(xs, ys) -> float:
    """Exponent b of y ≈ a·x^b (least squares on logs): 1 = linear, < 1 = sub-linear."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def markdown(res: dict) -> str:
    from embed_kd.cpu import describe

    lines = ["# Score-store readers at corpus scale (peak RSS, time)", "",
             "`python scripts/bench_store_scale.py` (under `flock /tmp/embed_kd_heavy.lock`). Synthetic store, "
             f"{CANDIDATES} candidates per query, written through the real `ScoreStoreWriter` in chunks of "
             f"{CHUNK_QUERIES} queries; each reader runs in a fresh subprocess, which reports its own peak RSS "
             "(`VmHWM`) and its RSS before the read (imports + the synthetic dataset of "
             f"{N_DOCS:,} documents and the queries). Time = wall time of the read only.", "",
             f"Machine: {describe(res['machine'])}.", "",
             "| pairs | queries | store MB | write s | reader | RSS before MB | peak RSS MB | time s | output |",
             "|---:|---:|---:|---:|---|---:|---:|---:|---|"]
    for row in res["sizes"]:
        for r in row["readers"]:
            out = f"{r['examples']:,} examples" if "examples" in r else f"{r['lines']:,} lines"
            lines.append(f"| {row['pairs']:,} | {row['queries']:,} | {row['store_mb']:.0f} | {row['write_s']:.1f} | "
                         f"{r['reader']} | {r['rss_before_mb']:.0f} | {r['peak_rss_mb']:.0f} | {r['seconds']:.1f} | "
                         f"{out} ({r['output_mb']:.0f} MB) |")
    lines += ["", "Growth exponents b (y ≈ a·pairs^b over the sizes measured; 1 = linear):", ""]
    for reader, fit in res["fits"].items():
        lines.append(f"- {reader}: peak RSS b = {fit['peak_rss']:.2f}, read above baseline b = "
                     f"{fit['rss_above_before']:.2f}, time b = {fit['time']:.2f}")
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_measure":
        print(json.dumps(measure(sys.argv[2], sys.argv[3], sys.argv[4])))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/store-scale", help="Scratch folder (stores and the TSV; removed after).")
    ap.add_argument("--sizes", default=",".join(str(s) for s in SIZES), help="Pairs per store, comma-separated.")
    ap.add_argument("--out", default=str(REPO / "eval" / "results" / "store-scale"), help="Output prefix.")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for pairs in sizes:
        folder = work / f"store-{pairs}"
        info = write_store(folder, pairs)
        readers = ["builder", "export"] + (["builder-in-memory"] if pairs <= IN_MEMORY_MAX else [])
        info["readers"] = [_child(folder, r, work) for r in readers]
        print(json.dumps(info), flush=True)
        rows.append(info)
        shutil.rmtree(folder)
    from embed_kd.cpu import machine_info

    fits = {}
    for reader in ("builder", "export", "builder-in-memory"):
        pts = [(row["pairs"], r) for row in rows for r in row["readers"] if r["reader"] == reader]
        if len(pts) >= 2:
            xs = [p for p, _ in pts]
            fits[reader] = {"peak_rss": _fit(xs, [r["peak_rss_mb"] for _, r in pts]),
                            "rss_above_before": _fit(xs, [max(r["peak_rss_mb"] - r["rss_before_mb"], 1.0)
                                                          for _, r in pts]),
                            "time": _fit(xs, [r["seconds"] for _, r in pts])}
    res = {"schema": "embed-kd/bench-store-scale@1", "candidates_per_query": CANDIDATES, "n_docs": N_DOCS,
           "chunk_queries": CHUNK_QUERIES, "sizes": rows, "fits": fits, "machine": machine_info(threads=1)}
    from embed_kd.io import atomic_write_json, atomic_write_text

    atomic_write_json(args.out + ".json", res)
    atomic_write_text(args.out + ".md", markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
