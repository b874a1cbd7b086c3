"""SciFact static-student benchmark: eval/results/scifact-static.{json,table.md,png} in one run.

Measures, in one process (except the servers), on SciFact (5,183 docs; documents always by the
MiniLM-L6 teacher, from the shared embedding cache):

1. init variants (TRAIN split, 809 queries, asymmetric, untrained): the teacher-token table with
   other poolings / weightings / PCA, and a random table — what the init choice was made on (no test
   query is looked at to choose);
2. SciFact TEST (300 queries), asymmetric: the untrained static init (the trained run's own
   ``static:`` settings), the trained static student, the 3-layer default student (``--l3``, when
   its folder is complete) and the teacher — nDCG@10, Recall@100, loyalty to the teacher;
3. query-encoding speed on the 300 test queries, 1 torch thread, through ``encode_texts`` (the path
   ``eval`` and ``serve`` use): batch 32 (all queries, ``--reps`` alternating repetitions, median)
   and batch 1 (one call per query, median per-query latency of the alternating repetitions);
4. ``embed-kd serve`` p50 / p99 latency at 1 client (a real uvicorn process per query model, index
   of the teacher's documents, ``--serve-requests`` requests after 20 warm-up ones, k = 10);
5. the quality-vs-speed plot (``embed_kd.evaluation.plot``, the plot ``embed-kd report --plot``
   draws), x = batch-32 queries/s.

Run (heavy: takes the shared lock):

    flock /tmp/embed_kd_heavy.lock .venv/bin/python scripts/bench_scifact_static.py \
        --static runs/scifact-static --l3 runs/scifact-l3

Output ``OUT.json`` (schema ``embed-kd/bench-scifact-static@1``): ``{"schema", "created",
"machine" (embed_kd.cpu.machine_info at the end + load before), "variants": [{"name", "spec",
"ndcg_at_10", "recall_at_100", "init_s"}], "rows": [{"model", "spec", "ndcg_at_10",
"recall_at_100", "ratio_to_teacher", "loyalty", "train": {...} | null}], "speed": {"threads",
"reps", "n_queries", "batch32": {model: {"times_s", "queries_per_s"}}, "batch1": {model:
{"median_ms", "per_rep_median_ms"}}}, "serve": {model: level}, "goals": {...}, "versions"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# init variants, tried on TRAIN queries (name, StaticSpec fields over the StaticSpec defaults)
VARIANTS = (
    ("mean · sif 1e-3 (StaticSpec defaults)", {}),
    ("mean · sif 1e-4", {"sif_coefficient": 1e-4}),
    ("mean · sif 1e-2", {"sif_coefficient": 1e-2}),
    ("mean · zipf (id rank)", {"weighting": "zipf", "sif_coefficient": 1e-4}),
    ("mean · unweighted", {"weighting": "none"}),
    ("token · sif 1e-3", {"token_pooling": "token"}),
    ("mean · normalised tokens · sif 1e-3", {"normalize_tokens": True}),
    ("mean · centred (PCA 384) · sif 1e-3", {"pca_dims": 384}),
    ("mean · PCA 256 · sif 1e-3", {"pca_dims": 256}),
    ("mean · PCA 128 · sif 1e-3", {"pca_dims": 128}),
    ("token · centred (PCA 384) · sif 1e-3", {"token_pooling": "token", "pca_dims": 384}),
    ("random table", {"init": "random"}),
)


def _complete(folder: Path | None) -> bool:
    return bool(folder) and (folder / "embed_kd_train.json").is_file() and (folder / "modules.json").is_file()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--static", default="runs/scifact-static", help="the trained static student")
    ap.add_argument("--l3", default="runs/scifact-l3", help="the 3-layer default student (used when complete)")
    ap.add_argument("--work", default="runs/bench-static", help="scratch folder (init model, index)")
    ap.add_argument("--out", default="eval/results/scifact-static")
    ap.add_argument("--reps", type=int, default=5, help="alternating repetitions of each speed measurement")
    ap.add_argument("--serve-requests", type=int, default=300)
    ap.add_argument("--skip-variants", action="store_true")
    ap.add_argument("--smoke", type=int, metavar="N", help="check the script: N queries, N docs per split (not a result)")
    args = ap.parse_args()

    import numpy as np
    import torch

    from embed_kd.cpu import machine_info
    from embed_kd.data import load_beir, resolve_dataset
    from embed_kd.encode import encode_texts
    from embed_kd.evaluation.loyalty import evaluate_loyalty
    from embed_kd.evaluation.plot import plot_quality_speed, points, speed_table
    from embed_kd.evaluation.retrieval_eval import EvalOptions, evaluate_dense, versions
    from embed_kd.index.cache import EmbeddingCache
    from embed_kd.models import load_sentence_transformer
    from embed_kd.students.static import StaticSpec, build_static_student
    from embed_kd.training.data import split_dev

    load_before = [round(x, 2) for x in os.getloadavg()]
    t_all = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    static_dir, l3_dir = Path(args.static), Path(args.l3)
    if not _complete(static_dir):
        raise SystemExit(f"{static_dir}: no trained static student (embed_kd_train.json missing)")
    manifest = json.loads((static_dir / "embed_kd_train.json").read_text())
    cfg = manifest["config"]
    folder = resolve_dataset("scifact")
    train, test = load_beir(folder, "train"), load_beir(folder, "test")
    if args.smoke:
        train, test = train.sliced(args.smoke, args.smoke * 4), test.sliced(args.smoke, args.smoke * 4)
    cache = EmbeddingCache()
    teacher = load_sentence_transformer("minilm-l6")
    opts = EvalOptions(show_progress=False)

    # the SIF texts of the trained run: corpus + its train queries (dev queries held out)
    train_qids, _ = split_dev(list(train.queries), cfg["examples"]["dev_queries"], cfg["train"]["seed"])
    texts = [train.doc_text(d) for d in train.corpus] + [train.queries[q] for q in train_qids]
    run_spec = StaticSpec(**cfg["static"])

    # 1. init variants on TRAIN queries
    variants = []
    if not args.skip_variants:
        for name, fields in VARIANTS:
            spec = StaticSpec(**{**fields, "encode_batch_size": cfg["static"]["encode_batch_size"]})
            t0 = time.perf_counter()
            model = build_static_student(teacher, spec, texts=texts, cache=cache, seed=cfg["train"]["seed"])
            init_s = time.perf_counter() - t0
            r = evaluate_dense(train, model, teacher, options=opts)
            variants.append({"name": name, "spec": spec.__dict__.copy(), "ndcg_at_10": r["metrics"]["ndcg_at_10"],
                             "recall_at_100": r["metrics"]["recall_at_100"], "init_s": init_s})
            print(f"variant {name}: train nDCG@10 {r['metrics']['ndcg_at_10']:.4f} (init {init_s:.1f}s)", flush=True)

    # 2. SciFact test, asymmetric
    init_dir = work / "static-init"
    init_model = build_static_student(teacher, run_spec, texts=texts, cache=cache, seed=cfg["train"]["seed"])
    if init_dir.exists():
        import shutil

        shutil.rmtree(init_dir)
    init_model.save(str(init_dir))
    entries = {"teacher": "minilm-l6", "static init (untrained)": str(init_dir), "static (trained)": str(static_dir)}
    l3_note = None
    if _complete(l3_dir):
        entries["3-layer default (l3)"] = str(l3_dir)
    else:
        l3_note = f"{l3_dir} was not complete (no embed_kd_train.json) when this ran: no 3-layer row"
        print(l3_note, flush=True)
    models = {k: (teacher if v == "minilm-l6" else load_sentence_transformer(v)) for k, v in entries.items()}
    results, rows = {}, []
    for name, model in models.items():
        r = evaluate_dense(test, model, teacher, options=opts)
        r["loyalty"] = evaluate_loyalty(test, model, teacher, teacher, options=opts, run=r["run"])
        r.pop("run", None)
        r.pop("per_query", None)
        results[name] = r
        print(f"test {name}: nDCG@10 {r['metrics']['ndcg_at_10']:.4f}", flush=True)
    t_ndcg = results["teacher"]["metrics"]["ndcg_at_10"]

    # 3. query-encoding speed, 1 thread, alternating repetitions
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)
    queries = list(test.queries.values())
    for m in models.values():  # warm-up
        encode_texts(m, queries[:64], batch_size=32, role="query", show_progress=False)
    b32 = {k: [] for k in models}
    b1 = {k: [] for k in models}
    for _ in range(args.reps):
        for k, m in models.items():
            t0 = time.perf_counter()
            encode_texts(m, queries, batch_size=32, role="query", show_progress=False)
            b32[k].append(time.perf_counter() - t0)
        for k, m in models.items():
            lat = []
            for q in queries:
                t0 = time.perf_counter()
                encode_texts(m, [q], batch_size=1, role="query", show_progress=False)
                lat.append(time.perf_counter() - t0)
            b1[k].append(statistics.median(lat) * 1000)
    speed = {"threads": 1, "reps": args.reps, "n_queries": len(queries),
             "batch32": {k: {"times_s": v, "queries_per_s": len(queries) / statistics.median(v)} for k, v in b32.items()},
             "batch1": {k: {"per_rep_median_ms": v, "median_ms": statistics.median(v)} for k, v in b1.items()}}
    torch.set_num_threads(threads_before)
    machine_speed = machine_info(threads=1)

    # 4. serve p50 at 1 client
    sys.path.insert(0, str(HERE))
    import asyncio

    import httpx
    from _serve_common import ServerProcess
    from load_test import run_level

    from embed_kd.index.store import build_index
    from embed_kd.serve.runner import free_port

    idx = work / "idx-minilm"
    if not (idx / "manifest.json").exists():
        build_index(idx, test.corpus, teacher, cache=cache, overwrite=True, show_progress=False)
    serve = {}
    for name, spec in entries.items():
        with ServerProcess(str(idx), spec, free_port(), ["--threads", "1"]) as url:
            for i in range(20):
                httpx.post(f"{url}/search", json={"query": queries[i % len(queries)], "k": 10}, timeout=60)
            serve[name] = asyncio.run(run_level(url, queries, 1, args.serve_requests, 120.0, 10))
            serve[name]["alignment"] = httpx.get(f"{url}/info").json()["alignment"]
        print(f"serve {name}: p50 {serve[name]['p50_ms']:.2f} ms", flush=True)

    # rows, goals
    qps = {k: v["queries_per_s"] for k, v in speed["batch32"].items()}
    for name, r in results.items():
        spec = entries[name]
        m = r["metrics"]
        tr = None
        if _complete(Path(spec)):
            mf = json.loads((Path(spec) / "embed_kd_train.json").read_text())
            tr = {"steps": mf["training"]["global_step"], "train_time_s": mf["training"]["train_time_s"],
                  "total_time_s": mf["training"].get("total_time_s"), "dev": (mf.get("dev") or {}).get("metrics_final"),
                  "overrides": mf.get("overrides"), "config_file": mf.get("config_file"),
                  "init": mf["student"]["init"], "params": mf["student"]["params"]}
        rows.append({"model": name, "spec": spec, "mode": "symmetric" if name == "teacher" else "asymmetric",
                     "ndcg_at_10": m["ndcg_at_10"], "recall_at_100": m["recall_at_100"], "mrr_at_10": m["mrr_at_10"],
                     "ratio_to_teacher": m["ndcg_at_10"] / t_ndcg, "loyalty": r["loyalty"],
                     "query_per_s_b32": qps[name], "speedup_b32": qps[name] / qps["teacher"],
                     "latency_b1_ms": speed["batch1"][name]["median_ms"],
                     "speedup_b1": speed["batch1"]["teacher"]["median_ms"] / speed["batch1"][name]["median_ms"],
                     "serve_p50_ms": serve[name]["p50_ms"], "serve_p99_ms": serve[name]["p99_ms"],
                     "query_model": r["query_model"], "train": tr})
    st = next(r for r in rows if r["model"] == "static (trained)")
    train_s = st["train"]["total_time_s"] or st["train"]["train_time_s"]
    goals = {"ratio_ndcg": {"goal": 0.90, "reached": st["ratio_to_teacher"], "met": st["ratio_to_teacher"] >= 0.90},
             "speedup_b32": {"goal": 50.0, "reached": st["speedup_b32"], "met": st["speedup_b32"] >= 50.0},
             "train_time_s": {"goal": 900.0, "reached": train_s, "met": train_s <= 900.0}}

    # 5. plot (embed_kd.evaluation.plot), x = batch-32 queries/s
    plot_results = []
    for name, r in results.items():
        plot_results.append({**r, "throughput": {"queries_per_s": qps[name]}})
    pts = points(plot_results, labels=list(results))
    plot_quality_speed(pts, args.out + ".png", overwrite=True,
                       title="SciFact test: static query encoder vs the MiniLM-L6 teacher (MiniLM documents)")

    f3 = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["| query model | nDCG@10 | ×teacher | R@100 | top-10 overlap | Spearman | query cos | q/s b32 (×) "
             "| b1 ms (×) | serve p50 ms | train s (steps) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ly = r["loyalty"] or {}
        tr = r["train"]
        trs = "—" if not tr else f"{(tr['total_time_s'] or tr['train_time_s']):.0f} ({tr['steps']})"
        lines.append(f"| {r['model']} | {r['ndcg_at_10']:.4f} | {r['ratio_to_teacher']:.3f} | {r['recall_at_100']:.4f} | "
                     f"{f3(ly.get('top10_overlap'))} | {f3(ly.get('spearman'))} | {f3(ly.get('query_cosine'))} | "
                     f"{r['query_per_s_b32']:.0f} ({r['speedup_b32']:.1f}×) | {r['latency_b1_ms']:.3f} "
                     f"({r['speedup_b1']:.1f}×) | {r['serve_p50_ms']:.2f} | {trs} |")
    if variants:
        lines += ["", "Init variants (untrained, SciFact TRAIN queries, asymmetric):", "",
                  "| variant | train nDCG@10 | R@100 | init s |", "|---|---|---|---|"]
        lines += [f"| {v['name']} | {v['ndcg_at_10']:.4f} | {v['recall_at_100']:.4f} | {v['init_s']:.1f} |"
                  for v in variants]
    lines += ["", speed_table(pts)]
    machine = {**machine_info(threads=1), "load_avg_before": load_before, "speed_section": machine_speed}
    out = {"schema": "embed-kd/bench-scifact-static@1", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": machine, "wall_s": time.perf_counter() - t_all, "dataset": results["teacher"]["dataset"],
           "teacher_ndcg_at_10": t_ndcg, "variants": variants, "rows": rows, "speed": speed, "serve": serve,
           "goals": goals, "l3_note": l3_note, "static_config": cfg, "versions": versions()}
    Path(args.out + ".json").write_text(json.dumps(out, indent=1, default=float))
    Path(args.out + ".table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps(goals, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
