#!/usr/bin/env python
"""Benchmark: a first (cold-cache) `embed-kd eval` vs BEIR's own DenseRetrievalExactSearch loop.

Both run in this one invocation, one after the other, as separate subprocesses (cold start each:
imports, model load, corpus encoding, search, metrics), with the same model, the same data, the
same batch size and thread count. A third run repeats `embed-kd eval` asymmetrically with a warm
document cache (the case every student evaluation hits). Writes JSON + markdown reports.

    python scripts/bench_eval_vs_beir.py --data ../shared/data/beir/scifact --output eval/results/eval-vs-beir
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BEIR_SNIPPET = r"""
import json, sys, time
t0 = time.perf_counter()
from beir.datasets.data_loader import GenericDataLoader
from beir.retrieval import models
from beir.retrieval.evaluation import EvaluateRetrieval
from beir.retrieval.search.dense import DenseRetrievalExactSearch as DRES
from embed_kd.presets import locate_model
data, batch_size = sys.argv[1], int(sys.argv[2])
corpus, queries, qrels = GenericDataLoader(data_folder=data).load(split="test")
path, _ = locate_model("minilm-l6")
model = DRES(models.SentenceBERT(path), batch_size=batch_size, show_progress_bar=False)
retriever = EvaluateRetrieval(model, score_function="cos_sim", k_values=[10, 100])
results = retriever.retrieve(corpus, queries)
ndcg, _map, recall, _p = retriever.evaluate(qrels, results, [10, 100])
mrr = retriever.evaluate_custom(qrels, results, [10], metric="mrr")
print(json.dumps({"ndcg_at_10": ndcg["NDCG@10"], "recall_at_100": recall["Recall@100"], "mrr_at_10": mrr["MRR@10"],
                  "in_process_s": time.perf_counter() - t0}))
"""


def timed(cmd: list[str], env: dict) -> tuple[float, str, float]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return wall, proc.stdout, peak_mb


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--output", required=True, help="report path without extension (.json and .md are written)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--backend", action="append", default=[],
                    help="also a cold `embed-kd eval --backend B` run (repeatable: openvino, onnx); its model "
                         "conversion is part of its wall time (fresh $EMBED_KD_CACHE)")
    args = ap.parse_args()

    py = sys.executable
    cache = tempfile.mkdtemp(prefix="embed-kd-bench-cache-")
    # every run starts cold: a fresh cache for embeddings and converted (OpenVINO/ONNX) models alike
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "EMBED_KD_CACHE": cache}
    out_dir = Path(tempfile.mkdtemp(prefix="embed-kd-bench-"))
    ekd = [py, "-m", "embed_kd", "eval", "--data", args.data, "--split", "test", "--batch-size", str(args.batch_size),
           "--cache-dir", cache, "--no-progress", "-q"]

    beir_wall, beir_out, _ = timed([py, "-c", BEIR_SNIPPET, args.data, str(args.batch_size)], env)
    beir = json.loads(beir_out.strip().splitlines()[-1])
    cold_wall, _, _ = timed(ekd + ["--model", "minilm-l6", "-o", str(out_dir / "cold.json")], env)
    cold = json.loads((out_dir / "cold.json").read_text())
    warm_wall, _, _ = timed(ekd + ["--query-model", "minilm-l6", "--doc-model", "minilm-l6",
                                   "-o", str(out_dir / "warm.json")], env)
    warm = json.loads((out_dir / "warm.json").read_text())
    backends = {}
    for b in args.backend:
        wall, _, _ = timed(ekd + ["--model", "minilm-l6", "--backend", b, "-o", str(out_dir / f"cold-{b}.json")], env)
        r = json.loads((out_dir / f"cold-{b}.json").read_text())
        backends[b] = {"wall_s": wall, "metrics": r["metrics"], "timings": r["timings"], "ratio_to_beir": wall / beir_wall,
                       "ndcg_at_10_equal_to_torch_4dp": round(r["metrics"]["ndcg_at_10"], 4) == round(cold["metrics"]["ndcg_at_10"], 4)}

    report = {
        "machine": {"cpus": os.cpu_count(), "note": "2-core dev machine, shared with other jobs during the run"},
        "dataset": cold["dataset"]["name"], "split": "test", "model": "minilm-l6 (all-MiniLM-L6-v2, bundled)",
        "batch_size": args.batch_size,
        "beir_dres": {"wall_s": beir_wall, **beir},
        "embed_kd_cold": {"wall_s": cold_wall, "metrics": cold["metrics"], "timings": cold["timings"]},
        "embed_kd_warm_cache_asymmetric": {"wall_s": warm_wall, "metrics": warm["metrics"], "timings": warm["timings"],
                                           "cache": warm["cache"]["docs"]},
        "ratio_cold_to_beir": cold_wall / beir_wall,
        "ratio_warm_to_beir": warm_wall / beir_wall,
        "embed_kd_cold_backends": backends,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    from embed_kd.cpu import describe, machine_info  # CPU, flags, threads, load average, commit

    report["machine"] = machine_info()
    Path(args.output + ".json").write_text(json.dumps(report, indent=2) + "\n")
    c, w = cold["metrics"], warm["metrics"]
    md = f"""# `embed-kd eval` vs BEIR's `DenseRetrievalExactSearch` (SciFact test, all-MiniLM-L6-v2)

Measured in one invocation of `scripts/bench_eval_vs_beir.py` (each run a cold subprocess: imports,
model load, corpus encoding, search, metrics); batch size {args.batch_size}; {os.cpu_count()} CPU cores,
absolute seconds depend on the load (machine line below) — compare within the table.

| run | wall s | nDCG@10 | Recall@100 | MRR@10 |
|---|---|---|---|---|
| BEIR `EvaluateRetrieval(DRES(SentenceBERT))` | {beir_wall:.1f} | {beir['ndcg_at_10']:.4f} | {beir['recall_at_100']:.4f} | {beir['mrr_at_10']:.4f} |
| `embed-kd eval --model minilm-l6` (cold cache) | {cold_wall:.1f} | {c['ndcg_at_10']:.4f} | {c['recall_at_100']:.4f} | {c['mrr_at_10']:.4f} |
| `embed-kd eval --query-model minilm-l6 --doc-model minilm-l6` (warm doc cache) | {warm_wall:.1f} | {w['ndcg_at_10']:.4f} | {w['recall_at_100']:.4f} | {w['mrr_at_10']:.4f} |
""" + "".join(f"| `embed-kd eval --model minilm-l6 --backend {b}` (cold cache, conversion included) | {r['wall_s']:.1f} | "
              f"{r['metrics']['ndcg_at_10']:.4f} | {r['metrics']['recall_at_100']:.4f} | {r['metrics']['mrr_at_10']:.4f} |\n"
              for b, r in backends.items()) + f"""

Ratios to BEIR's wall time: cold **{cold_wall / beir_wall:.2f}×**, warm-cache **{warm_wall / beir_wall:.3f}×**{"".join(f", cold `--backend {b}` **{r['ratio_to_beir']:.2f}×** (nDCG@10 equal to torch's to 4 decimals: {r['ndcg_at_10_equal_to_torch_4dp']})" for b, r in backends.items())}.

Machine: {describe(report["machine"])}.

embed-kd cold-run stages (s): {', '.join(f'{k} {v:.1f}' for k, v in cold['timings'].items())}.
"""
    Path(args.output + ".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
