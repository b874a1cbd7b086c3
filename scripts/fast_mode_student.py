"""Effect of fast-mode teacher scores on a trained student (eval/results/score-teacher-fast-student.json).

For each ``--backend`` (default: ``torch`` = exact, and ``torch-bf16``), with everything else equal:

1. ``embed-kd score-teacher run`` — SciFact TRAIN queries, ``bm25:K`` candidates + qrels positives,
   scored by ``--teacher`` (a cross-encoder) at ``--max-length`` with that backend (wall time kept);
2. ``embed-kd train eval/configs/demo.yaml`` on those scores (same seed, same budget in steps);
3. ``embed-kd eval`` on SciFact TEST in asymmetric mode (student queries, MiniLM documents).

Reported: per-backend scoring time, the fast store's drift and per-query Kendall tau against the exact
store over *all* train queries, each student's nDCG@10 / R@100, the paired-bootstrap 95% interval of
the per-query nDCG@10 difference between the students, and their top-10 overlap.

    flock /tmp/embed_kd_heavy.lock .venv/bin/python scripts/fast_mode_student.py --teacher runs/ce-r3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))


def sh(args: list[str]) -> float:
    t = time.perf_counter()
    print("$ " + " ".join(args), flush=True)
    subprocess.run(args, check=True, cwd=REPO)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--teacher-note", default="")
    ap.add_argument("--backends", nargs="+", default=["torch", "torch-bf16"])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--config", default="eval/configs/demo.yaml")
    ap.add_argument("--max-time-s", type=int, default=100000, help="train.max_time_s (default: steps decide)")
    ap.add_argument("--work", default="runs/fast-mode-student")
    ap.add_argument("--out", default="eval/results/score-teacher-fast-student.json")
    args = ap.parse_args()

    from bench_scifact_sparse import paired_bootstrap
    from score_teacher_speed import kendall_tau_per_query

    from embed_kd.evaluation.loyalty import top_k_overlap
    from embed_kd.teachers.store import open_scores

    ek = str(REPO / ".venv/bin/embed-kd")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {"schema": "embed-kd/fast-mode-student@1", "teacher": args.teacher, "teacher_note": args.teacher_note,
                 "candidates": f"bm25:{args.k} + qrels positives", "max_length": args.max_length,
                 "config": args.config, "backends": {}}
    runs, stores = {}, {}
    for b in args.backends:
        scores = work / f"scores-{b}"
        entry: dict = {}
        if not (scores / "manifest.json").is_file():
            entry["score_teacher_wall_s"] = round(sh([ek, "score-teacher", "run", "--data", "scifact", "--split", "train",
                                                     "--candidates", f"bm25:{args.k}", "--teacher", f"ce=ce:{args.teacher}",
                                                     "--max-length", str(args.max_length), "--backend", b, "-o", str(scores),
                                                     "-q"]), 1)
        store = open_scores(scores)
        stores[b] = store.to_run("score__ce")
        entry["pairs"] = int(sum(len(v) for v in stores[b].values()))
        student = work / f"student-{b}"
        entry["train_wall_s"] = round(sh([ek, "train", args.config, "--data", "scifact", "--scores", str(scores), "-o",
                                          str(student), "--overwrite", "--set", f"train.max_time_s={args.max_time_s}",
                                          "-q"]), 1)
        ev = work / f"eval-{b}.json"
        sh([ek, "eval", "--data", "scifact", "--split", "test", "--query-model", str(student), "--doc-model", "minilm-l6",
            "--save-run", str(work / f"run-{b}.json"), "-o", str(ev), "--overwrite", "-q"])
        r = json.loads(ev.read_text())
        entry.update({"ndcg_at_10": r["metrics"]["ndcg_at_10"], "recall_at_100": r["metrics"]["recall_at_100"],
                      "mrr_at_10": r["metrics"]["mrr_at_10"],
                      "train_steps": json.loads((student / "embed_kd_train.json").read_text())["training"]["global_step"]})
        runs[b] = r
        res["backends"][b] = entry
    exact = args.backends[0]
    for b in args.backends[1:]:
        e, f = stores[exact], stores[b]
        diffs = np.array([f[q][d] - e[q][d] for q in e for d in e[q]])
        taus = kendall_tau_per_query(e, f)
        qs = sorted(runs[exact]["per_query"])
        pq = lambda r: [r["per_query"][q].get("ndcg_at_10", 0.0) for q in qs]  # noqa: E731
        run_e = json.loads((work / f"run-{exact}.json").read_text())
        run_f = json.loads((work / f"run-{b}.json").read_text())
        res["backends"][b].update({
            "vs_exact": {"max_abs_drift": float(np.abs(diffs).max()), "mean_abs_drift": float(np.abs(diffs).mean()),
                         "kendall_tau_mean": float(np.mean(taus)), "kendall_tau_min": float(np.min(taus)),
                         "queries": len(taus),
                         "top1_agreement": float(np.mean([max(f[q], key=f[q].get) == max(e[q], key=e[q].get) for q in e])),
                         "student_ndcg_at_10_diff": paired_bootstrap(pq(runs[b]), pq(runs[exact])),
                         "student_top10_overlap": top_k_overlap(run_f.get("run", run_f), run_e.get("run", run_e), 10)}})
    res["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    from embed_kd.cpu import machine_info  # CPU, flags, threads, load average, commit

    res["machine"] = machine_info()
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
