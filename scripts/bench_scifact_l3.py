"""SciFact 3-layer student benchmark: eval/results/scifact-l3.{json,md,png}.

Evaluates (SciFact test, 300 queries x 5,183 docs) the teacher, the untrained cut and the trained
students in asymmetric mode (student queries x teacher documents) and, where listed, symmetric
mode; loyalty to the teacher; STS Benchmark test cosine Spearman (general English, every entry);
query-encoding speed (300 test queries, 1 thread, median of 3
alternating repetitions). Each measurement is cached as JSON in --work (with the machine's load
average before/after it) so a rerun only adds what is missing. Rows of an earlier session found in
the existing ``--out``.json (a different ``session`` label) are kept, marked with their session, unless
this session measured the same (model, mode); ``--drop-earlier`` leaves them out. Every measurement and
the report record the machine (embed_kd.cpu.machine_info: CPU model, AVX2/AVX512/AVX512-BF16/AMX
flags, threads, load average, commit); a row of a trained student carries its training run's
``train_machine`` (the load while it trained) and ``stopped_by_time_budget``. Run (heavy: takes the
shared lock):

    flock /tmp/embed_kd_heavy.lock .venv/bin/python scripts/bench_scifact_l3.py --session LABEL
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

FOLDERS = (("default", "scifact-l3"), ("default_run2", "scifact-l3-run2"),
           ("default_phase1", "scifact-l3.phases/1-base"), ("default_run2_phase1", "scifact-l3-run2.phases/1-base"), ("proportional", "scifact-l3-prop"), ("round_robin", "scifact-l3-rr"),
           ("peer", "scifact-l3-peer"), ("peer_run2", "scifact-l3-peer-run2"), ("align_only", "scifact-l3-align"),
           ("margin_only", "scifact-l3-margin"))


def _place_labels(ys: list[float], gap: float) -> list[float]:
    """Label heights for points sharing one x: in the points' order, at least ``gap`` apart, each run of
    crowded labels centred on its points (clusters merged until none overlap).

    >>> [round(v, 3) for v in _place_labels([0.5, 0.5, 0.9], 0.1)]
    [0.45, 0.55, 0.9]
    >>> [round(v, 3) for v in _place_labels([0.60, 0.61, 0.62, 0.50], 0.05)]
    [0.56, 0.61, 0.66, 0.5]
    """
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    clusters = [[i] for i in order]  # bottom to top; a cluster sits centred on the mean of its points

    def bottom(c):
        return sum(ys[i] for i in c) / len(c) - gap * (len(c) - 1) / 2

    merged = True
    while merged:
        merged = False
        for k in range(len(clusters) - 1):
            if bottom(clusters[k]) + gap * len(clusters[k]) > bottom(clusters[k + 1]) + 1e-12:
                clusters[k:k + 2] = [clusters[k] + clusters[k + 1]]
                merged = True
                break
    out = [0.0] * len(ys)
    for c in clusters:
        for j, i in enumerate(c):
            out[i] = bottom(c) + j * gap
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="runs", help="folder holding the trained students (see FOLDERS)")
    ap.add_argument("--work", default=None, help="measurement cache (default RUNS/bench-l3)")
    ap.add_argument("--out", default="eval/results/scifact-l3")
    ap.add_argument("--keep-layers", default="0,3,5")
    ap.add_argument("--sym", default="teacher,cut,default,peer", help="entries also evaluated symmetrically")
    ap.add_argument("--session", required=True, help="label of this measuring session, stored in every row")
    ap.add_argument("--skip-speed", action="store_true", help="keep the previous --out.json speed measurement")
    ap.add_argument("--drop-earlier", action="store_true", help="leave out earlier sessions' rows of --out.json")
    args = ap.parse_args()
    RUNS = Path(args.runs)
    import os
    import torch

    from embed_kd.cpu import describe, machine_info
    from embed_kd.data import load_beir, resolve_dataset
    from embed_kd.encode import encode_texts
    from embed_kd.evaluation.loyalty import evaluate_loyalty
    from embed_kd.evaluation.retrieval_eval import EvalOptions, evaluate_dense
    from embed_kd.models import load_sentence_transformer
    from embed_kd.students import cut_layers

    work = Path(args.work or RUNS / "bench-l3")
    work.mkdir(parents=True, exist_ok=True)
    ds = load_beir(resolve_dataset("scifact"), "test")
    teacher = load_sentence_transformer("minilm-l6")
    keep = [int(x) for x in args.keep_layers.split(",")]
    cut_dir = RUNS / f"cut-{''.join(map(str, keep))}"
    if not cut_dir.exists():
        cut_layers(teacher, keep).save(str(cut_dir))
    entries = {"teacher": "minilm-l6", "cut": str(cut_dir)}
    for name, folder in FOLDERS:
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
                load_before = os.getloadavg()
                model = teacher if spec == "minilm-l6" else load_sentence_transformer(spec)
                dm = teacher if mode == "asym" else model
                r = evaluate_dense(ds, model, dm, options=opts)
                r["loyalty"] = evaluate_loyalty(ds, model, dm, teacher, options=opts, run=r["run"])
                r.pop("run")
                r.pop("per_query")
                r["loadavg_before_after"] = [list(load_before), list(os.getloadavg())]
                r["machine"] = machine_info()
                f.write_text(json.dumps(r, indent=1))
                print(f"{name} {mode}: nDCG@10 {r['metrics']['ndcg_at_10']:.4f} ({time.perf_counter() - t0:.0f}s)", flush=True)
            results[f"{name}-{mode}"] = json.loads(f.read_text())
    results["teacher-asym"] = results["teacher-sym"]

    # general English: STS Benchmark test, cosine Spearman, every entry (the model encodes both sentences)
    from embed_kd.data.sts import load_sts
    from embed_kd.evaluation.sts import sts_metrics

    sts_test, stsb = None, {}
    for name, spec in entries.items():
        f = work / f"{name}-stsb.json"
        if not f.exists():
            sts_test = sts_test or load_sts("stsb", "test")
            load_before = os.getloadavg()
            model = teacher if spec == "minilm-l6" else load_sentence_transformer(spec)
            m = sts_metrics(model, sts_test)
            f.write_text(json.dumps({"spearman_cosine": m["spearman_cosine"], "pearson_cosine": m["pearson_cosine"],
                                     "pairs": len(sts_test), "model": spec, "machine": machine_info(),
                                     "loadavg_before_after": [list(load_before), list(os.getloadavg())]}))
            print(f"{name} STSb test: Spearman {m['spearman_cosine']:.4f}", flush=True)
        stsb[name] = json.loads(f.read_text())

    # query-encoding speed: 1 thread, alternating, median of 3
    speed_f = work / "speed.json"
    previous = json.loads(Path(args.out + ".json").read_text()) if Path(args.out + ".json").exists() else None
    if args.skip_speed and previous and not speed_f.exists():
        speed_f.write_text(json.dumps({**previous["speed"], "session": previous["speed"].get("session")}))
    if not speed_f.exists():
        load_before = os.getloadavg()
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
        speed_f.write_text(json.dumps({"queries_per_s": speed, "times_s": times, "threads": 1, "n": len(queries),
                                       "session": args.session, "machine": machine_info(threads=1),
                                       "loadavg_before_after": [list(load_before), list(os.getloadavg())]}))
    speed = json.loads(speed_f.read_text())

    t_ndcg = results["teacher-sym"]["metrics"]["ndcg_at_10"]
    qps = speed["queries_per_s"]
    rows = []
    for key, r in results.items():
        if key == "teacher-asym":  # the same measurement as teacher-sym
            continue
        name, mode = key.rsplit("-", 1)
        m = r["metrics"]
        manifest = None
        run_name = name.removesuffix("_no_wa")  # a last-checkpoint row belongs to its run
        if run_name in entries and Path(entries[run_name], "embed_kd_train.json").exists():
            manifest = json.loads(Path(entries[run_name], "embed_kd_train.json").read_text())
        rows.append({
            "model": name, "mode": "asymmetric" if mode == "asym" else "symmetric",
            "ndcg_at_10": m["ndcg_at_10"], "recall_at_100": m["recall_at_100"], "ratio_to_teacher": m["ndcg_at_10"] / t_ndcg,
            "query_per_s": qps["teacher"] if name == "teacher" else qps["cut"],
            "loyalty": r.get("loyalty"),
            "stsb_test_spearman": stsb[name]["spearman_cosine"] if name in stsb else None,
            "stsb_ratio_to_teacher": stsb[name]["spearman_cosine"] / stsb["teacher"]["spearman_cosine"]
            if name in stsb else None,
            # a run in phases (embed_kd.training.phases): all phases' training, steps as "1200+2400+1200"
            "train_time_s": manifest["training"]["train_time_s"] + sum(p["train_time_s"] for p in
                                                                       manifest.get("phases") or []) if manifest else None,
            "train_steps": ("+".join(str(p["global_step"]) for p in [*manifest["phases"], manifest["training"]])
                            if manifest.get("phases") else manifest["training"]["global_step"]) if manifest else None,
            "stopped_by_time_budget": manifest["training"]["stopped_by_time_budget"] if manifest else None,
            "query_model": r["query_model"], "created": r["created"],
            "session": args.session, "loadavg_before_after": r.get("loadavg_before_after"),
            "dev_ndcg_at_10": ((manifest.get("dev") or {}).get("metrics_final") or {}).get("dev_ndcg_at_10")
            if manifest else None,
            "overrides": manifest["overrides"] if manifest else None,
            "machine": r.get("machine"), "train_machine": manifest.get("machine") if manifest else None,
        })
    # earlier sessions' rows: kept (marked) unless this session measured the same (model, mode)
    if previous and not args.drop_earlier:
        have = {(r["model"], r["mode"]) for r in rows}
        for r in previous["rows"]:
            if r.get("session") != args.session and (r["model"], r["mode"]) not in have:
                # q/s is the architecture's (teacher or 3-layer cut), measured once per file: the current one
                rows.append({**r, "query_per_s": qps["teacher"] if r["model"] == "teacher" else qps["cut"]})
    out = {"schema": "embed-kd/bench-scifact-l3@2", "dataset": results["teacher-sym"]["dataset"],
           "teacher_ndcg_at_10": t_ndcg, "speed": speed, "speedup": qps["cut"] / qps["teacher"], "rows": rows,
           "speed_previous": None if args.drop_earlier else
           previous["speed"] if previous and previous["speed"].get("session") != speed.get("session")
           else (previous or {}).get("speed_previous"),
           "versions": results["teacher-sym"]["versions"],
           # the speed measurement's machine record (each row has its evaluation's, each trained row its run's)
           "machine": speed.get("machine") or machine_info(threads=1),
           "machine_line": describe(speed.get("machine") or machine_info(threads=1)),
           "note": "fixed work (train.max_steps, no time budget); measured on a shared 2-core CPU machine, "
                   "per-row machine / train_machine give the load; see the .md",
           "note_sessions": None if args.drop_earlier else (previous or {}).get("note_sessions")}
    Path(args.out + ".json").write_text(json.dumps(out, indent=1))
    lines = ["| model | mode | nDCG@10 | ×teacher | R@100 | top-10 overlap | Spearman | query cos | STSb test "
             "(×teacher) | q/s (1 thread) | train s (steps) | session |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    def sts_cell(r: dict) -> str:
        v = r.get("stsb_test_spearman")
        return "—" if v is None else f"{v:.4f} ({r['stsb_ratio_to_teacher']:.3f})"

    for r in rows:
        ly = r["loyalty"] or {}
        f = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
        tr = "—" if r["train_time_s"] is None else f"{r['train_time_s']:.0f} ({r['train_steps']})"
        if r.get("stopped_by_time_budget"):
            tr += " budget-stopped"
        lines.append(f"| {r['model']} | {r['mode']} | {r['ndcg_at_10']:.4f} | {r['ratio_to_teacher']:.3f} | "
                     f"{r['recall_at_100']:.4f} | {f(ly.get('top10_overlap'))} | {f(ly.get('spearman'))} | "
                     f"{f(ly.get('query_cosine'))} | {sts_cell(r)} | {r['query_per_s']:.0f} | {tr} | "
                     f"{r.get('session') or '?'} |")
    lines += ["", f"Speed measured on: {out['machine_line']} (per-row machine / train_machine in the JSON)"]
    Path(args.out + ".table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 6.5))
    # the plot leaves out the *_no_wa ablation rows (in the tables) and the duplicate teacher row
    plotted = [r for r in rows if not r["model"].endswith("_no_wa")]
    by_x: dict[float, list[dict]] = {}
    for r in plotted:
        by_x.setdefault(round(r["query_per_s"], 3), []).append(r)
    all_y = []
    for x, group in by_x.items():
        ys = [r["ndcg_at_10"] for r in group]
        for r, ly in zip(group, _place_labels(ys, 0.009)):
            mk = "o" if r["mode"] == "asymmetric" else "s"
            now = r.get("session") == args.session
            ax.scatter(r["query_per_s"], r["ndcg_at_10"], marker=mk, color="C1" if now else "none",
                       edgecolors="C1" if now else "C0", zorder=3)
            tag = "" if now else " [earlier session]"
            ax.annotate(f"{r['model']} ({r['mode'][:4]}) {r['ndcg_at_10']:.3f}{tag}",
                        (r["query_per_s"], r["ndcg_at_10"]), xytext=(r["query_per_s"] + 12, ly), textcoords="data",
                        fontsize=6.5, va="center", arrowprops={"arrowstyle": "-", "lw": 0.3, "color": "grey"})
            all_y += [ly, r["ndcg_at_10"]]
    ax.set_ylim(min(all_y) - 0.01, max(all_y) + 0.01)
    xs = [r["query_per_s"] for r in plotted]
    ax.set_xlim(min(xs) - 10, max(xs) + 110)
    ax.axhline(t_ndcg, ls="--", lw=0.8, color="grey")
    ax.set_xlabel("query encoding speed, queries/s (1 CPU thread)")
    ax.set_ylabel("SciFact test nDCG@10")
    ax.set_title("3-layer MiniLM students vs the MiniLM-L6 teacher, SciFact test (o asymmetric, s symmetric)\n"
                 f"filled: session {args.session}; hollow: earlier session (see the .md)", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out + ".png", dpi=120)


if __name__ == "__main__":
    main()
