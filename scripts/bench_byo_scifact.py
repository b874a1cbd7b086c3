"""SciFact with queries WITHOUT judgments vs the judged recipe: eval/results/byo-data.json (see byo-data.md).

The bring-your-own-data path of docs/your-data.md on a dataset whose answer we know:

1. the SciFact *train* queries are written to a plain query file (ids and texts; no qrels);
2. ``score-teacher run --data scifact --queries FILE`` — the default recipe's BM25 + MiniLM z-score
   ensemble (``eval/configs/scifact-l3.yaml`` header) on that file: candidates mined, nothing added;
3. ``train CONFIG --queries FILE --scores STORE`` (dev slice: loyalty, there are no judgments);
4. the judged student: the same config on ``runs/scifact-train-ens`` (the judged store, positives
   added from the train qrels). With ``--judged-student DIR`` (e.g. ``runs/scifact-l3``, the default
   recipe's student) that student is reused and CONFIG is *its* recorded config (the resolved
   ``embed_kd_train.json`` config, only ``queries`` / ``scores`` / ``output`` changed), so both
   students differ in nothing but the judgments; else both are trained from
   ``eval/configs/scifact-l3-v1.yaml`` (the 180-step recipe this report was measured with) at ``--steps``;
5. both evaluated on the SciFact *test* split (its qrels are used here and only here), asymmetric
   (student queries × MiniLM documents), with loyalty to MiniLM; a paired bootstrap of the
   per-query nDCG@10 difference (10,000 resamples, seed 0).

Every step is a CLI call; outputs in ``--work`` (default ``runs/byo``) are reused when present (a
rerun only does what is missing). Heavy — run under the shared lock:

    flock /tmp/embed_kd_heavy.lock .venv/bin/python scripts/bench_byo_scifact.py --steps 100 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "embed_kd"]


def run(args: list[str], log: Path) -> float:
    t = time.perf_counter()
    with log.open("w") as fh:
        p = subprocess.run(CLI + args, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
    if p.returncode:
        sys.exit(f"failed ({p.returncode}): {' '.join(args)}; see {log}")
    return time.perf_counter() - t


def paired_bootstrap(a: dict, b: dict, n: int = 10000, seed: int = 0) -> dict:
    qs = sorted(set(a) & set(b))
    d = np.array([a[q] - b[q] for q in qs])
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), (n, len(d)))].mean(1)
    return {"queries": len(qs), "mean_diff": float(d.mean()), "ci95": [float(np.quantile(means, 0.025)),
                                                                      float(np.quantile(means, 0.975))]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=None, help="train.max_steps (default: the config's)")
    ap.add_argument("--judged-student", help="reuse this judged student and train with its recorded config")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="runs/byo")
    ap.add_argument("--judged-store", default="runs/scifact-train-ens")
    ap.add_argument("--out", default="eval/results/byo-data.json")
    args = ap.parse_args()
    work = REPO / args.work
    work.mkdir(parents=True, exist_ok=True)
    from embed_kd.cpu import machine_info
    from embed_kd.data import load_beir, resolve_dataset

    folder = resolve_dataset("scifact")
    train = load_beir(folder, "train")
    qfile = work / "scifact-train-queries.jsonl"
    if not qfile.exists():  # a query log: ids and texts, no judgments
        qfile.write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in train.queries.items()))
    times, loads = {}, {}
    thr = ["--threads", str(args.threads), "--no-progress"]
    store = work / "scores-unjudged"
    steps = {
        "score_teacher": (store, ["score-teacher", "run", "--data", "scifact", "--queries", str(qfile),
                                  "--candidates", "bm25:100", "--candidates", "dense:minilm-l6:100", "--teacher", "bm25",
                                  "--teacher", "minilm-l6", "--ensemble", "zscore", "--weights",
                                  "eval/results/scifact-ensemble-weights.json", "-o", str(store), *thr]),
    }
    config = "eval/configs/scifact-l3-v1.yaml"
    judged_dir = work / "student-judged"
    if args.judged_student:
        import yaml

        judged_dir = REPO / args.judged_student
        cfg = json.loads((judged_dir / "embed_kd_train.json").read_text())["config"]
        config = str(work / "unjudged-config.yaml")
        Path(config).write_text(yaml.safe_dump(cfg, sort_keys=False))
    over = ["--set", f"train.max_steps={args.steps}"] if args.steps else []
    steps["train_unjudged"] = (work / "student-unjudged", ["train", config, "--queries", str(qfile), "--scores",
                                                            str(store), "-o", str(work / "student-unjudged"), *over, *thr])
    if not args.judged_student:
        steps["train_judged"] = (judged_dir, ["train", config, "--scores", args.judged_store, "-o", str(judged_dir),
                                              *over, *thr])
    students = {"unjudged": work / "student-unjudged", "judged": judged_dir}
    for name in ("unjudged", "judged"):
        out = work / f"eval-{name}.json"
        steps[f"eval_{name}"] = (out, ["eval", "--data", "scifact", "--split", "test", "--query-model",
                                       str(students[name]), "--doc-model", "minilm-l6",
                                       "--loyalty-teacher", "minilm-l6", "-o", str(out), *thr])
    for name, (target, cmd) in steps.items():
        if target.exists():
            print(f"{name}: {target} exists, reused", file=sys.stderr)
            continue
        before = os.getloadavg()
        times[name] = run(cmd, work / f"{name}.log")
        loads[name] = [round(x, 2) for x in (*before, *os.getloadavg())]
        print(f"{name}: {times[name]:.0f}s", file=sys.stderr)
    ev = {n: json.loads((work / f"eval-{n}.json").read_text()) for n in ("unjudged", "judged")}
    tr = {n: json.loads((students[n] / "embed_kd_train.json").read_text()) for n in ("unjudged", "judged")}
    sm = json.loads((store / "manifest.json").read_text())

    def ndcg(e):
        return {q: m["ndcg_at_10"] for q, m in e["per_query"].items()}

    result = {
        "schema": "embed-kd/bench-byo-data@1",
        "steps": {n: tr[n]["training"]["global_step"] for n in tr}, "threads": args.threads,
        "config": config, "judged_student": str(judged_dir.relative_to(REPO)),
        "queries_file": str(qfile.relative_to(REPO)), "train_queries": len(train.queries),
        "store": {"path": str(store.relative_to(REPO)), "judged": sm["dataset"].get("judged"),
                  "rows": sm["progress"]["rows"], "config_fingerprint": sm["config_fingerprint"]},
        "students": {n: {"test": ev[n]["metrics"], "loyalty": ev[n].get("loyalty"),
                         "dev_final": (tr[n]["dev"] or {}).get("metrics_final"),
                         "global_step": tr[n]["training"]["global_step"],
                         "train_time_s": tr[n]["training"]["train_time_s"],
                         "examples": tr[n]["examples"]["score"]["examples"],
                         "queries_without_judged_positive": tr[n]["examples"]["score"].get(
                             "queries_without_judged_positive"),
                         "commit": (tr[n].get("git") or {}).get("commit")} for n in ("unjudged", "judged")},
        "paired_ndcg10_unjudged_minus_judged": paired_bootstrap(ndcg(ev["unjudged"]), ndcg(ev["judged"])),
        "wall_s": times, "load_avg_before_after": loads, "machine": machine_info(args.threads),
    }
    out = REPO / args.out
    out.write_text(json.dumps(result, indent=2) + "\n")
    u, j = (result["students"][n]["test"]["ndcg_at_10"] for n in ("unjudged", "judged"))
    print(f"test nDCG@10: unjudged {u:.4f}, judged {j:.4f}; {result['paired_ndcg10_unjudged_minus_judged']}")


if __name__ == "__main__":
    main()
