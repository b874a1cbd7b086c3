"""Import speed and memory at MS MARCO scale: eval/results/import-scale.{json,md}.

Writes (once, into ``--work``) a synthetic BEIR folder — ``--docs`` documents, ``--queries``
train queries with one judged positive each — and a synthetic ``margin-mse-tsv`` of ``--rows``
lines (each query: its positive against ``rows / queries`` random negatives, the positive's
score the same on every line as in a real teacher file, scores with 9 significant digits, like
``export`` writes them), then imports it with the CLI in a child process::

    embed-kd score-teacher import --format margin-mse-tsv --data WORK/beir -o WORK/store WORK/triples.tsv

and records the child's wall time, its peak RSS (``getrusage(RUSAGE_CHILDREN).ru_maxrss``), input
rows per second, the store it wrote (rows, chunks, bytes), and the machine (CPU model, flags,
threads, load average, commit). The import is repeated ``--repeats`` times into fresh folders
(median reported, every run kept). Fixed work; no time budget. Heavy — run under the shared lock:

    flock /tmp/embed_kd_heavy.lock .venv/bin/python scripts/bench_import_scale.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def write_dataset(root: Path, n_docs: int, n_queries: int, seed: int) -> None:
    """A BEIR folder: short synthetic texts, one judged positive per query (qrels/train.tsv)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    with (root / "corpus.jsonl").open("w") as fh:
        for i in range(n_docs):
            fh.write(f'{{"_id": "d{i}", "title": "", "text": "synthetic passage {i}"}}\n')
    with (root / "queries.jsonl").open("w") as fh:
        for i in range(n_queries):
            fh.write(f'{{"_id": "q{i}", "text": "synthetic query {i}"}}\n')
    pos = rng.integers(0, n_docs, n_queries)
    (root / "qrels").mkdir(exist_ok=True)
    with (root / "qrels" / "train.tsv").open("w") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        fh.writelines(f"q{i}\td{p}\t1\n" for i, p in enumerate(pos))
    np.save(root.parent / "positives.npy", pos)


def write_triples(path: Path, positives: np.ndarray, n_docs: int, rows: int, seed: int) -> None:
    """``pos_score neg_score qid pos_id neg_id`` lines, written with pyarrow's CSV writer in blocks."""
    import pyarrow as pa
    from pyarrow import csv

    rng = np.random.default_rng(seed + 1)
    n_q = len(positives)
    pos_score = rng.normal(8.0, 2.0, n_q).astype(np.float32)
    tmp = path.with_suffix(".part")
    opts = csv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    block = 1_000_000
    with csv.CSVWriter(str(tmp), pa.schema([("pos_score", pa.string()), ("neg_score", pa.string()),
                                            ("qid", pa.string()), ("pos", pa.string()), ("neg", pa.string())]),
                       write_options=opts) as w:
        for start in range(0, rows, block):
            idx = np.arange(start, min(start + block, rows))
            q = idx % n_q                       # every query gets rows / n_q lines
            neg = rng.integers(0, n_docs, len(idx))
            ps = pos_score[q]
            ns = (ps - np.abs(rng.normal(3.0, 2.0, len(idx)))).astype(np.float32)
            w.write_table(pa.table({
                "pos_score": pa.array([f"{x:.9g}" for x in ps.tolist()]),
                "neg_score": pa.array([f"{x:.9g}" for x in ns.tolist()]),
                "qid": pa.array(np.char.add("q", q.astype(str))),
                "pos": pa.array(np.char.add("d", positives[q].astype(str))),
                "neg": pa.array(np.char.add("d", neg.astype(str)))}))
    os.replace(tmp, path)


def import_once(work: Path, i: int) -> dict:
    out = work / f"store-{i}"
    shutil.rmtree(out, ignore_errors=True)
    before = os.getloadavg()
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "embed_kd", "score-teacher", "import", "--format", "margin-mse-tsv",
                        "--data", str(work / "beir"), "-o", str(out), str(work / "triples.tsv")],
                       cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode:
        sys.exit(f"import failed: {p.stderr[-2000:]}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child so far
    m = json.loads((out / "manifest.json").read_text())
    size = sum(f.stat().st_size for f in (out / "shards").iterdir())
    res = {"wall_s": wall, "peak_rss_mib_so_far": peak_kib / 1024, "load_before": [round(x, 2) for x in before],
           "load_after": [round(x, 2) for x in os.getloadavg()], "rows_written": m["progress"]["rows"],
           "chunks": m["progress"]["chunks"], "store_bytes": size, "duplicates": m["imported"]["duplicates"],
           "cli_line": p.stderr.strip().splitlines()[-1]}
    import re

    res["phases_s"] = {k: float(v) for k, v in re.findall(r"(load|read|group|write) ([0-9.]+)s", res["cli_line"])}
    shutil.rmtree(out, ignore_errors=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--queries", type=int, default=100_000)
    ap.add_argument("--docs", type=int, default=500_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="runs/import-scale")
    ap.add_argument("--out", default="eval/results/import-scale.json")
    args = ap.parse_args()
    from embed_kd.cpu import machine_info

    work = REPO / args.work
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    if not (work / "beir" / "qrels" / "train.tsv").is_file():
        write_dataset(work / "beir", args.docs, args.queries, args.seed)
    if not (work / "triples.tsv").is_file():
        write_triples(work / "triples.tsv", np.load(work / "positives.npy"), args.docs, args.rows, args.seed)
    gen_s = time.perf_counter() - t
    runs = [import_once(work, i) for i in range(args.repeats)]
    walls = [r["wall_s"] for r in runs]
    med = statistics.median(walls)
    result = {
        "schema": "embed-kd/bench-import-scale@1",
        "input": {"format": "margin-mse-tsv", "rows": args.rows, "queries": args.queries, "docs": args.docs,
                  "bytes": (work / "triples.tsv").stat().st_size, "seed": args.seed},
        "generate_s": gen_s,
        "runs": runs,
        "median_wall_s": med,
        "rows_per_s": args.rows / med,
        "peak_rss_mib": max(r["peak_rss_mib_so_far"] for r in runs),
        "goals": {"rows_per_s": 200_000, "peak_rss_mib": 2048},
        "machine": machine_info(threads=os.cpu_count()),
    }
    out = REPO / args.out
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.rows:,} rows: median {med:.1f}s → {result['rows_per_s']:,.0f} rows/s; peak RSS "
          f"{result['peak_rss_mib']:.0f} MiB; runs {[round(w, 1) for w in walls]}")


if __name__ == "__main__":
    main()
