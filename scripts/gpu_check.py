#!/usr/bin/env python
"""The GPU check (issue 16): score-teacher, a short train and eval on SciFact, on the GPU and on the CPU.

Run through ``scripts/gpu_check.sh`` (it checks that a CUDA GPU is visible first). Offline: the
cross-encoder teacher is MiniLM-L6's weights with a fresh 1-logit head (seed 0,
``score_teacher_speed.build_minilm_ce``): throughput does not depend on the head's values, and the
fp16 drift / rank agreement is measured on this teacher's scores. Fixed work, wall time beside:

1. ``score-teacher``: the SciFact train split (all 809 queries; ``--queries N``: the first N) ×
   (bm25:50 + positives), ``ce:`` teacher — ``--device cuda`` with ``--backend torch`` and
   ``torch-fp16``, and ``--device cpu`` on the first ``--cpu-queries``; pairs/s from each run; GPU
   fp32 vs CPU scores (max |diff| on the common queries), GPU fp16 vs GPU fp32 (max |diff|,
   per-query Kendall tau);
2. ``eval --model minilm-l6`` on SciFact test with ``--device cuda`` and ``--device cpu`` (one fresh
   embedding cache per device, so each encodes the corpus): docs/s and nDCG@10; the check is
   |nDCG@10(GPU) - nDCG@10(CPU)| <= 1e-3;
3. ``train``: the 3-layer student cut from MiniLM on the GPU-scored store (it must cover the whole
   split: a ``--limit`` store is refused by ``train``), ``--steps`` steps on the GPU
   (train.precision auto) and ``--cpu-steps`` on the CPU (each reusing its device's cache from 2);
   steps/s from the manifests.

Writes ``eval/results/gpu-check.{json,md}``. Never reports a figure it did not measure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))


def cli(*args: str, log: Path) -> tuple[str, float]:
    """``python -m embed_kd ARGS``; returns (stderr, wall seconds); exits on failure with its tail."""
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "embed_kd", *args], capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t
    with log.open("a") as fh:
        fh.write(f"$ embed-kd {' '.join(args)}\n{r.stdout}{r.stderr}\n(exit {r.returncode}, {wall:.1f}s)\n\n")
    if r.returncode != 0:
        sys.exit(f"embed-kd {' '.join(args)} failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return r.stderr, wall


def pairs_per_s(stderr: str) -> float:
    m = re.search(r"\(([\d.]+) pairs/s\)", stderr)
    if not m:
        sys.exit(f"no pairs/s in score-teacher's report:\n{stderr[-2000:]}")
    return float(m.group(1))


def run_of(store: Path) -> dict:
    from embed_kd.teachers.store import open_scores

    return open_scores(store).to_run("score")


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/embed_kd_gpu_check", help="Scratch folder (stores, students, caches).")
    ap.add_argument("--queries", type=int, default=0, help="Train queries scored on the GPU (0: all; train needs all).")
    ap.add_argument("--cpu-queries", type=int, default=60, help="Of those, scored on the CPU too.")
    ap.add_argument("--steps", type=int, default=200, help="Training steps on the GPU.")
    ap.add_argument("--cpu-steps", type=int, default=20, help="Training steps on the CPU.")
    ap.add_argument("--out", default=str(REPO / "eval" / "results" / "gpu-check"), help="Output prefix.")
    ap.add_argument("--smoke", action="store_true", help="Plumbing check on a CPU-only machine: the 'GPU' runs run "
                    "on the CPU (torch-bf16 for fp16); write --out elsewhere — these are not GPU figures.")
    args = ap.parse_args()
    gpu, half = ("cpu", "torch-bf16") if args.smoke else ("cuda", "torch-fp16")
    if args.smoke and Path(args.out).resolve() == (REPO / "eval" / "results" / "gpu-check").resolve():
        sys.exit("Error: --smoke figures are CPU figures: pass --out somewhere outside eval/results")
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("Error: no CUDA GPU is visible to torch (torch.cuda.is_available() is False); the GPU check needs one")

    from score_teacher_speed import build_minilm_ce, kendall_tau_per_query

    from embed_kd.cpu import describe, machine_info
    from embed_kd.device import device_info

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    log.write_text("")
    import shutil

    for name in ("gpu", "cpu"):  # fresh embedding caches: eval measures each device's own corpus encode
        shutil.rmtree(work / f"cache-{name}", ignore_errors=True)
    ce = build_minilm_ce(work / "ce-minilm")
    res: dict = {"schema": "embed-kd/gpu-check@1", "smoke": args.smoke,
                 "gpu": device_info("cpu" if args.smoke else "cuda:0"), "cpu": device_info("cpu"),
                 "torch": torch.__version__, "cuda": torch.version.cuda}

    # 1. score-teacher ------------------------------------------------------------------------------
    base = ["score-teacher", "--data", "scifact", "--split", "train", "--candidates", "bm25:50",
            "--teacher", f"ce=ce:{ce}", "--no-progress", "--overwrite"]
    score = {}
    for name, extra, limit in (("gpu-fp32", ["--device", gpu], args.queries),
                               ("gpu-fp16", ["--device", gpu, "--backend", half], args.queries),
                               ("cpu-fp32", ["--device", "cpu"], args.cpu_queries)):
        lim = ["--limit", str(limit)] if limit else []
        err, wall = cli(*base, *extra, *lim, "-o", str(work / f"scores-{name}"), log=log)
        score[name] = {"queries": limit, "pairs_per_s": pairs_per_s(err), "wall_s": wall}
    g32, g16, c32 = (run_of(work / f"scores-{n}") for n in ("gpu-fp32", "gpu-fp16", "cpu-fp32"))
    diff_cpu = max(abs(g32[q][d] - s) for q in c32 for d, s in c32[q].items())
    diff_16 = max(abs(g32[q][d] - s) for q in g16 for d, s in g16[q].items())
    taus = kendall_tau_per_query(g32, g16)
    score["gpu_vs_cpu_max_abs_diff"] = diff_cpu
    score["fp16_vs_fp32"] = {"max_abs_diff": diff_16, "kendall_tau_mean": float(np.mean(taus)),
                             "kendall_tau_min": float(np.min(taus))}
    score["gpu_speedup"] = score["gpu-fp32"]["pairs_per_s"] / score["cpu-fp32"]["pairs_per_s"]
    res["score_teacher"] = score

    # 2. eval ---------------------------------------------------------------------------------------
    ev = {}
    for name, device in (("gpu", gpu), ("cpu", "cpu")):
        out = work / f"eval-{name}.json"
        cli("eval", "--data", "scifact", "--model", "minilm-l6", "--device", device, "--no-progress",
            *(["--limit-docs", "300", "--limit-queries", "30"] if args.smoke else []),
            "--cache-dir", str(work / f"cache-{name}"), "-o", str(out), "--overwrite", log=log)
        r = json.loads(out.read_text())
        ev[name] = {"ndcg_at_10": r["metrics"]["ndcg_at_10"], "docs_per_s": r["throughput"]["docs_per_s"],
                    "encode_docs_s": r["timings"]["encode_docs_s"], "device": r.get("device")}
    ev["ndcg_diff"] = abs(ev["gpu"]["ndcg_at_10"] - ev["cpu"]["ndcg_at_10"])
    ev["within_1e-3"] = ev["ndcg_diff"] <= 1e-3
    res["eval"] = ev
    # 3. train --------------------------------------------------------------------------------------
    train = {}
    if args.queries:  # a --limit store: train refuses it (its queries fingerprint is not the split's)
        train["skipped"] = "score-teacher ran with --queries; train needs the whole split"
    for name, device, steps in ((("gpu", gpu, args.steps), ("cpu", "cpu", args.cpu_steps)) if not args.queries else ()):
        out = work / f"student-{name}"
        cli("train", "--data", "scifact", "--scores", str(work / "scores-gpu-fp32"), "--teacher", "minilm-l6",
            "--student-from-teacher", "--keep-layers", "0,2,4", "-o", str(out), "--overwrite", "--no-progress",
            "--cache-dir", str(work / f"cache-{name}"), "--device", device,
            "--set", f"train.max_steps={steps}", "--set", f"train.save_steps={steps}",
            "--set", f"train.eval_steps={steps}", "--set", "average.enabled=false", log=log)
        m = json.loads((out / "embed_kd_train.json").read_text())
        tr = m["training"]
        train[name] = {"steps": tr["global_step"], "train_time_s": tr["train_time_s"],
                       "steps_per_s": tr["global_step"] / tr["train_time_s"], "precision": tr.get("precision"),
                       "device": m.get("device")}
    if not args.queries:
        train["gpu_speedup"] = train["gpu"]["steps_per_s"] / train["cpu"]["steps_per_s"]
    res["train"] = train

    res["machine"] = machine_info()

    from embed_kd.io import atomic_write_json, atomic_write_text

    atomic_write_json(args.out + ".json", res)
    s, t, e = score, train, ev
    md = [
        "# GPU check (scripts/gpu_check.sh)" + (" — SMOKE RUN ON A CPU, NOT GPU FIGURES" if args.smoke else ""), "",
        f"GPU: {res['gpu']['name']} (torch {res['torch']}, CUDA {res['cuda']}); CPU: {describe(res['machine'])}.",
        "Teacher: MiniLM-L6 weights + a fresh 1-logit head (offline; speed does not depend on the head).", "",
        "| stage | GPU | CPU | GPU / CPU |", "|---|---:|---:|---:|",
        f"| score-teacher pairs/s (torch fp32) | {s['gpu-fp32']['pairs_per_s']:.0f} | {s['cpu-fp32']['pairs_per_s']:.0f} "
        f"| {s['gpu_speedup']:.1f}× |",
        f"| score-teacher pairs/s (torch-fp16) | {s['gpu-fp16']['pairs_per_s']:.0f} | — | — |",
        (f"| train steps/s ({t['gpu']['precision']} on GPU, batch 32) | {t['gpu']['steps_per_s']:.2f} | "
         f"{t['cpu']['steps_per_s']:.2f} | {t['gpu_speedup']:.1f}× |" if "gpu" in t else "| train | skipped | | |"),
        f"| eval docs/s (MiniLM, SciFact corpus) | {e['gpu']['docs_per_s']:.0f} | {e['cpu']['docs_per_s']:.0f} | "
        f"{e['gpu']['docs_per_s'] / e['cpu']['docs_per_s']:.1f}× |",
        f"| eval nDCG@10 (SciFact test) | {e['gpu']['ndcg_at_10']:.4f} | {e['cpu']['ndcg_at_10']:.4f} | "
        f"diff {e['ndcg_diff']:.1e} ({'within' if e['within_1e-3'] else 'NOT within'} 1e-3) |", "",
        f"Scores: GPU fp32 vs CPU max |diff| {s['gpu_vs_cpu_max_abs_diff']:.2e} ({args.cpu_queries} queries); "
        f"torch-fp16 vs fp32 max |diff| {s['fp16_vs_fp32']['max_abs_diff']:.2e}, per-query Kendall tau mean "
        f"{s['fp16_vs_fp32']['kendall_tau_mean']:.4f} (min {s['fp16_vs_fp32']['kendall_tau_min']:.3f}).",
        f"Work: score-teacher {args.queries or 'all'} train queries on the GPU, {args.cpu_queries} on the CPU; train "
        + (f"{t['gpu']['steps']} GPU / {t['cpu']['steps']} CPU steps" if "gpu" in t else "skipped")
        + f". Commands and their output: {log}.", ""]
    atomic_write_text(args.out + ".md", "\n".join(md))
    print("\n".join(md))
    if not e["within_1e-3"]:
        sys.exit(f"GPU vs CPU nDCG@10 differ by {e['ndcg_diff']:.2e} (> 1e-3)")


if __name__ == "__main__":
    main()
