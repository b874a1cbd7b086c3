"""SciFact 3-layer student benchmark: eval/results/scifact-l3.{json,md,png}.

Evaluates (SciFact test, 300 queries x 5,183 docs) the teacher, the untrained cut and the trained
students in asymmetric mode (student queries x teacher documents) and, where listed, symmetric
mode; loyalty to the teacher; query-encoding speed (300 test queries, 1 thread, median of 3
alternating repetitions). Each measurement is cached as JSON in --work so a rerun only adds what is
missing. Run (heavy: takes the shared lock):

    flock /tmp/embed_kd_heavy.lock .venv/bin/python scripts/bench_scifact_l3.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

RUNS = Path("/work/runs")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=str(RUNS / "bench-l3"))
    ap.add_argument("--out", default="eval/results/scifact-l3")
    ap.add_argument("--keep-layers", default="0,3,5")
    ap.add_argument("--sym", default="teacher,cut,default,peer", help="entries also evaluated symmetrically")
    args = ap.parse_args()
    import torch

    from embed_kd.data import load_beir, resolve_dataset
    from embed_kd.encode import encode_texts
    from embed_kd.evaluation.loyalty import evaluate_loyalty
    from embed_kd.evaluation.retrieval_eval import EvalOptions, evaluate_dense
    from embed_kd.models import load_sentence_transformer
    from embed_kd.students import cut_layers

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ds = load_beir(resolve_dataset("scifact"), "test")
    teacher = load_sentence_transformer("minilm-l6")
    keep = [int(x) for x in args.keep_layers.split(",")]
    cut_dir = RUNS / f"cut-{''.join(map(str, keep))}"
    if not cut_dir.exists():
        cut_layers(teacher, keep).save(str(cut_dir))
    entries = {"teacher": "minilm-l6", "cut": str(cut_dir)}
    for name, folder in (("default", "scifact-l3"), ("round_robin", "scifact-l3-rr"), ("peer", "scifact-l3-peer"),
                         ("margin_only", "scifact-l3-margin"), ("align_only", "scifact-l3-align")):
        if (RUNS / folder / "modules.json").exists():
            entries[name] = str(RUNS / folder)
            ck = sorted((RUNS / folder / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
            manifest = json.loads((RUNS / folder / "embed_kd_train.json").read_text())
            if manifest["averaging"]["applied"] and ck:
                entries[f"{name}_no_wa"] = str(ck[-1])
    sym = set(args.sym.split(","))
    opts = EvalOptions(show_progress=False)
    results = {}
    for name, spec in entries.items():
        for mode in ("asym", "sym"):
            if mode == "sym" and name not in sym:
                continue
            if name == "teacher" and mode == "asym":
                continue
            f = work / f"{name}-{mode}.json"
            if not f.exists():
                t0 = time.perf_counter()
                model = teacher if spec == "minilm-l6" else load_sentence_transformer(spec)
                dm = teacher if mode == "asym" else model
                r = evaluate_dense(ds, model, dm, options=opts)
                r["loyalty"] = evaluate_loyalty(ds, model, dm, teacher, options=opts, run=r["run"])
                r.pop("run")
                r.pop("per_query")
                f.write_text(json.dumps(r, indent=1))
                print(f"{name} {mode}: nDCG@10 {r['metrics']['ndcg_at_10']:.4f} ({time.perf_counter() - t0:.0f}s)", flush=True)
            results[f"{name}-{mode}"] = json.loads(f.read_text())
    results["teacher-asym"] = results["teacher-sym"]

    # query-encoding speed: 1 thread, alternating, median of 3
    speed_f = work / "speed.json"
    if not speed_f.exists():
        torch.set_num_threads(1)
        queries = list(ds.queries.values())
        models = {"teacher": teacher, "cut": load_sentence_transformer(entries["cut"])}
        times = {k: [] for k in models}
        for _ in range(3):
            for k, m in models.items():
                t0 = time.perf_counter()
                encode_texts(m, queries, batch_size=32, role="query", show_progress=False)
                times[k].append(time.perf_counter() - t0)
        speed = {k: len(queries) / statistics.median(v) for k, v in times.items()}
        speed_f.write_text(json.dumps({"queries_per_s": speed, "times_s": times, "threads": 1, "n": len(queries)}))
    speed = json.loads(speed_f.read_text())

    t_ndcg = results["teacher-sym"]["metrics"]["ndcg_at_10"]
    qps = speed["queries_per_s"]
    rows = []
    for key, r in results.items():
        name, mode = key.rsplit("-", 1)
        m = r["metrics"]
        manifest = None
        if name in entries and Path(entries[name], "embed_kd_train.json").exists():
            manifest = json.loads(Path(entries[name], "embed_kd_train.json").read_text())
        rows.append({
            "model": name, "mode": "asymmetric" if mode == "asym" else "symmetric",
            "ndcg_at_10": m["ndcg_at_10"], "recall_at_100": m["recall_at_100"], "ratio_to_teacher": m["ndcg_at_10"] / t_ndcg,
            "query_per_s": qps["teacher"] if name == "teacher" else qps["cut"],
            "loyalty": r.get("loyalty"),
            "train_time_s": manifest["training"]["train_time_s"] if manifest else None,
            "train_steps": manifest["training"]["global_step"] if manifest else None,
            "stopped_by_time_budget": manifest["training"]["stopped_by_time_budget"] if manifest else None,
            "query_model": r["query_model"], "created": r["created"],
        })
    out = {"schema": "embed-kd/bench-scifact-l3@1", "dataset": results["teacher-sym"]["dataset"],
           "teacher_ndcg_at_10": t_ndcg, "speed": speed, "speedup": qps["cut"] / qps["teacher"], "rows": rows,
           "versions": results["teacher-sym"]["versions"],
           "note": "measured on a shared 2-core CPU machine (other engineers' jobs interleaved); see the .md"}
    Path(args.out + ".json").write_text(json.dumps(out, indent=1))
    lines = ["| model | mode | nDCG@10 | ×teacher | R@100 | top-10 overlap | Spearman | query cos | q/s (1 thread) | train s (steps) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ly = r["loyalty"] or {}
        f = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
        tr = "—" if r["train_time_s"] is None else f"{r['train_time_s']:.0f} ({r['train_steps']})"
        lines.append(f"| {r['model']} | {r['mode']} | {r['ndcg_at_10']:.4f} | {r['ratio_to_teacher']:.3f} | "
                     f"{r['recall_at_100']:.4f} | {f(ly.get('top10_overlap'))} | {f(ly.get('spearman'))} | "
                     f"{f(ly.get('query_cosine'))} | {r['query_per_s']:.0f} | {tr} |")
    Path(args.out + ".table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        mk = "o" if r["mode"] == "asymmetric" else "s"
        ax.scatter(r["query_per_s"], r["ndcg_at_10"], marker=mk)
        ax.annotate(f"{r['model']} ({r['mode'][:4]})", (r["query_per_s"], r["ndcg_at_10"]), fontsize=7,
                    xytext=(4, 2), textcoords="offset points")
    ax.axhline(t_ndcg, ls="--", lw=0.8, color="grey")
    ax.set_xlabel("query encoding speed, queries/s (1 CPU thread)")
    ax.set_ylabel("SciFact test nDCG@10")
    ax.set_title("3-layer MiniLM students vs MiniLM-L6 teacher (o asym, s sym)")
    fig.tight_layout()
    fig.savefig(args.out + ".png", dpi=120)


if __name__ == "__main__":
    main()
