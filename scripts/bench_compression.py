"""Compressed outputs on SciFact: eval/results/scifact-compression.{json,md,png}.

Does the aligned student inherit the teacher's robustness to Matryoshka truncation and output
quantization? For the teacher (symmetric: MiniLM queries × MiniLM documents) and the default
student as its asym model (``runs/scifact-l3/asym``: student queries × teacher documents), on
SciFact test (300 queries × 5,183 docs), at every (dim, precision) point of dims 384/256/128/64 ×
float32/int8/ubinary (plus ubinary with float re-scoring of the top 100): nDCG@10, Recall@100 and
the student/teacher nDCG@10 ratio at that same point (goal ≥ 0.98).

Fixed work: the document embeddings come from the embedding cache (the teacher's entry — the asym
model's document route has the teacher's fingerprint, so it is the same entry), each model's 300
queries are encoded once, and each point is one exact search with embed-kd's own compressed search
(:func:`embed_kd.evaluation.retrieval_eval.dense_run` with a
:class:`~embed_kd.index.compression.Compression`, what ``embed-kd eval --truncate-dim N
--precision P`` runs). One point per model is also run through ``evaluate_dense`` end to end and
must agree exactly. Heavy (takes the shared lock)::

    flock /tmp/embed_kd_heavy.lock .venv/bin/python scripts/bench_compression.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DIMS = (384, 256, 128, 64)
PRECISIONS = (("float32", None), ("int8", None), ("ubinary", None), ("ubinary", 100))
GOAL = 0.98


def _label(precision: str, rescore: int | None) -> str:
    return f"{precision}+rescore{rescore}" if rescore else precision


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="scifact")
    ap.add_argument("--split", default="test")
    ap.add_argument("--teacher", default="minilm-l6")
    ap.add_argument("--student", default="runs/scifact-l3/asym", help="the default student's asym (Router) model")
    ap.add_argument("--out", default="eval/results/scifact-compression")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dims", default=",".join(map(str, DIMS)), help="comma-separated dimensions (first: the full one)")
    args = ap.parse_args()

    import numpy as np
    import torch

    from embed_kd.cpu import describe, machine_info
    from embed_kd.data import load_beir, resolve_dataset
    from embed_kd.encode import encode_texts, uses_cosine
    from embed_kd.runs import evaluate_run
    from embed_kd.evaluation.retrieval_eval import EvalOptions, dense_run, encode_corpus, evaluate_dense, model_info
    from embed_kd.index.cache import EmbeddingCache
    from embed_kd.index.compression import Compression, bytes_per_vector
    from embed_kd.models import load_sentence_transformer
    from embed_kd.students.asym import split_routes

    torch.set_num_threads(args.threads)
    dims = tuple(int(d) for d in args.dims.split(","))
    check_dim = dims[min(2, len(dims) - 1)]
    t_start = time.perf_counter()
    folder = resolve_dataset(args.data)
    ds = load_beir(folder, args.split, name=Path(folder).name)
    teacher = load_sentence_transformer(args.teacher)
    s_query, s_docs = split_routes(load_sentence_transformer(args.student))
    cache = EmbeddingCache()
    qids = list(ds.queries)
    setups = {"teacher": (teacher, teacher), "student": (s_query, s_docs)}
    rows, models, sanity = [], {}, {}
    for name, (qm, dm) in setups.items():
        normalize = uses_cosine(dm)
        t = time.perf_counter()
        doc_emb, doc_ids, cres = encode_corpus(dm, ds, cache=cache, normalize=normalize, show_progress=False)
        docs_s = time.perf_counter() - t
        t = time.perf_counter()
        q_emb = encode_texts(qm, [ds.queries[q] for q in qids], normalize=normalize, role="query", show_progress=False)
        queries_s = time.perf_counter() - t
        models[name] = {"query_model": model_info(qm), "doc_model": model_info(dm), "doc_cache": "hit" if cres.hit
                        else "miss", "cache_path": str(cres.path), "encode_docs_s": docs_s,
                        "encode_queries_s": queries_s}
        for dim in dims:
            for precision, rescore in PRECISIONS:
                comp = Compression(truncate_dim=None if dim == doc_emb.shape[1] else dim, precision=precision,
                                   rescore=rescore)
                t = time.perf_counter()
                run = dense_run(q_emb, qids, doc_emb, doc_ids, k=100, compression=comp, normalize=normalize)
                search_s = time.perf_counter() - t
                metrics = evaluate_run(ds.qrels, run)["metrics"]
                rows.append({"model": name, "dim": dim, "precision": precision, "rescore": rescore,
                             "bytes_per_doc": bytes_per_vector(dim, precision), "search_s": search_s, **metrics})
                print(f"{name:8s} {dim:4d} {_label(precision, rescore):18s} nDCG@10 {metrics['ndcg_at_10']:.4f}",
                      flush=True)
        # the sweep's search is the CLI's: one point end to end through evaluate_dense (cache hit, same numbers)
        check = Compression(truncate_dim=check_dim, precision="int8")
        res = evaluate_dense(ds, qm, None if qm is dm else dm,
                             options=EvalOptions(show_progress=False, compression=check))
        mine = next(r for r in rows if r["model"] == name and r["dim"] == check_dim and r["precision"] == "int8"
                    and not r["rescore"])
        assert res["metrics"]["ndcg_at_10"] == mine["ndcg_at_10"], (res["metrics"], mine)
        sanity[name] = {"point": f"{check_dim}/int8", "evaluate_dense_ndcg_at_10": res["metrics"]["ndcg_at_10"],
                        "cache": res["cache"]["docs"]}

    by = {(r["model"], r["dim"], r["precision"], r["rescore"]): r for r in rows}
    points = []
    for dim in dims:
        for precision, rescore in PRECISIONS:
            t, s = by[("teacher", dim, precision, rescore)], by[("student", dim, precision, rescore)]
            ratio = s["ndcg_at_10"] / t["ndcg_at_10"]
            points.append({"dim": dim, "precision": precision, "rescore": rescore, "bytes_per_doc": t["bytes_per_doc"],
                           "teacher_ndcg_at_10": t["ndcg_at_10"], "student_ndcg_at_10": s["ndcg_at_10"],
                           "teacher_recall_at_100": t["recall_at_100"], "student_recall_at_100": s["recall_at_100"],
                           "ratio": ratio, "meets_goal": ratio >= GOAL})
    machine = machine_info(threads=args.threads)
    report = {"schema": "embed-kd/bench-compression@1", "dataset": {"name": ds.name, "split": ds.split,
              "n_queries": len(ds.queries), "n_docs": len(ds.corpus)}, "goal_ratio": GOAL, "models": models,
              "rows": rows, "points": points, "sanity": sanity, "machine": machine,
              "wall_s": time.perf_counter() - t_start,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    _plot(points, out.with_suffix(".png"))
    out.with_suffix(".md").write_text(_markdown(report, describe(machine)))
    print(f"wrote {out}.json/.md/.png in {report['wall_s']:.0f}s")


def _markdown(rep: dict, machine: str) -> str:
    pts, m = rep["points"], rep["models"]
    fails = [p for p in pts if not p["meets_goal"]]
    lines = [
        "# SciFact: does the student inherit the teacher's robustness to truncation and quantization?", "",
        f"SciFact {rep['dataset']['split']} ({rep['dataset']['n_queries']} queries × {rep['dataset']['n_docs']:,} docs). "
        f"Teacher: `{m['teacher']['query_model']['spec']}` symmetric. Student: the default student's asym model "
        f"`{m['student']['query_model']['spec']}` (query route `{m['student']['query_model']['fingerprint']}` × "
        f"document route `{m['student']['doc_model']['fingerprint']}` = the teacher's fingerprint; doc cache "
        f"{m['student']['doc_cache']}, the teacher's entry). Every point truncates (first N dims, renormalised) and "
        "quantizes documents and queries alike (int8 ranges calibrated on the corpus embeddings; ubinary searched "
        "by Hamming distance in a FAISS IndexBinaryFlat; `+rescore100`: the top 100 by Hamming re-scored with the "
        "float query against the ±1 codes), exact search, `embed-kd eval --truncate-dim N --precision P` "
        "(`scripts/bench_compression.py`).", "",
        f"Goal: the student's nDCG@10 ≥ {rep['goal_ratio']:.0%} of the teacher's at the same point. "
        + (f"**Met at all {len(pts)} points.**" if not fails else
           f"**Met at {len(pts) - len(fails)} of {len(pts)} points; not at: "
           + ", ".join(f"{p['dim']}/{_label(p['precision'], p['rescore'])} ({p['ratio']:.3f})" for p in fails) + ".**"),
        "", "| dim | precision | bytes/doc | teacher nDCG@10 | student nDCG@10 | student/teacher | teacher R@100 | "
        "student R@100 | goal |", "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in pts:
        lines.append(f"| {p['dim']} | {_label(p['precision'], p['rescore'])} | {p['bytes_per_doc']} | "
                     f"{p['teacher_ndcg_at_10']:.4f} | {p['student_ndcg_at_10']:.4f} | {p['ratio']:.3f} | "
                     f"{p['teacher_recall_at_100']:.4f} | {p['student_recall_at_100']:.4f} | "
                     f"{'met' if p['meets_goal'] else '**not met**'} |")
    lines += ["", "![nDCG@10 vs bytes per document](scifact-compression.png)", "",
              f"Machine: {machine}. Wall time {rep['wall_s']:.0f} s (document embeddings from the cache; query "
              f"encoding {m['teacher']['encode_queries_s']:.1f} s teacher, {m['student']['encode_queries_s']:.1f} s "
              f"student). Sanity: one point per model ({rep['sanity']['student']['point']}) rerun end to end through `evaluate_dense` gave the "
              "same nDCG@10.", ""]
    return "\n".join(lines)


def _plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {"float32": "o", "int8": "s", "ubinary": "^", "ubinary+rescore100": "v"}
    for label, marker in styles.items():
        sel = sorted((p for p in points if _label(p["precision"], p["rescore"]) == label), key=lambda p: p["bytes_per_doc"])
        x = [p["bytes_per_doc"] for p in sel]
        ax.plot(x, [p["teacher_ndcg_at_10"] for p in sel], marker=marker, color="tab:blue", alpha=0.8,
                label=f"teacher {label}")
        ax.plot(x, [p["student_ndcg_at_10"] for p in sel], marker=marker, color="tab:orange", linestyle="--",
                alpha=0.8, label=f"student {label}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bytes per document vector (log2)")
    ax.set_ylabel("nDCG@10 (SciFact test)")
    ax.set_title("Truncation (384/256/128/64 dims) × precision: teacher vs asymmetric student")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
