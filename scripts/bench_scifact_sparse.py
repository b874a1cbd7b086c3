"""SciFact sparse-student benchmark: eval/results/scifact-sparse.{json,table.md}.

Evaluates (SciFact test, 300 queries x 5,183 docs) a trained sparse (SPLADE) student with
``embed_kd.evaluation.sparse_eval.evaluate_sparse`` (exact search on a SciPy CSR inverted index,
pytrec_eval metrics) — unpruned and with document (and query) top-k pruning, all from ONE encoding
of the corpus — next to BM25 (re-measured here, bm25s) and the dense 3-layer students (read from
eval/results/scifact-l3.json, not re-measured). The encoded CSR matrices are kept in --work
(scipy .npz, keyed by the student's fingerprint) so a rerun only adds rows. Per-query nDCG@10
differences (each pruning vs unpruned, each sparse row vs BM25) get a 95% paired-bootstrap interval. Heavy (encodes the
corpus): take the shared lock::

    flock /tmp/embed_kd_heavy.lock .venv/bin/python scripts/bench_scifact_sparse.py \
        --student runs/scifact-sparse [--untrained]

``--untrained`` also evaluates the student's starting point (MiniLM + the freshly built tied MLM
head, before any training) — a second corpus encoding.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

def paired_bootstrap(a, b, n: int = 10000, seed: int = 0) -> dict:
    """Mean of the per-query differences a - b and its 95% paired-bootstrap interval (queries resampled)."""
    import numpy as np

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    means = d[np.random.default_rng(seed).integers(0, len(d), (n, len(d)))].mean(1)
    return {"mean_diff": float(d.mean()), "ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))],
            "resamples": n, "seed": seed}


PRUNING = [(None, None), (256, None), (128, None), (64, None), (32, None), (256, 64), (128, 32)]


def _eval_sparse(ds, model, work: Path, name: str, opts, rows: list, pruning) -> None:
    import scipy.sparse as sp

    from embed_kd.evaluation.sparse_eval import evaluate_sparse
    from embed_kd.models import fingerprint_model

    fp = fingerprint_model(model)
    dq, dd = work / f"{name}-{fp}-queries.npz", work / f"{name}-{fp}-docs.npz"
    enc = {}
    if dq.exists() and dd.exists():
        enc = {"query_matrix": sp.load_npz(dq).tocsr(), "doc_matrix": sp.load_npz(dd).tocsr()}
        enc_info = json.loads((work / f"{name}-{fp}-encode.json").read_text())
    for doc_k, q_k in pruning:
        t0 = time.perf_counter()
        r = evaluate_sparse(ds, model, options=opts, doc_top_k=doc_k, query_top_k=q_k, **enc)
        mats = r.pop("_matrices")
        if not enc:
            sp.save_npz(dq, mats["queries"])
            sp.save_npz(dd, mats["docs"])
            enc_info = {"encode_docs_s": r["timings"]["encode_docs_s"], "encode_queries_s": r["timings"]["encode_queries_s"],
                        "docs_per_s": r["throughput"]["docs_per_s"], "queries_per_s": r["throughput"]["queries_per_s"]}
            (work / f"{name}-{fp}-encode.json").write_text(json.dumps(enc_info))
            enc = {"query_matrix": mats["queries"], "doc_matrix": mats["docs"]}
        r.pop("run")
        per_query = [r["per_query"][q].get("ndcg_at_10", 0.0) for q in sorted(ds.qrels)]
        r.pop("per_query")
        m, s = r["metrics"], r["sparse"]
        rows.append({"model": name, "kind": "sparse", "doc_top_k": doc_k, "query_top_k": q_k,
                     "ndcg_at_10": m["ndcg_at_10"], "recall_at_100": m["recall_at_100"], "mrr_at_10": m["mrr_at_10"],
                     "avg_query_nnz": s["avg_query_nnz"], "avg_doc_nnz": s["avg_doc_nnz"],
                     "avg_doc_nnz_unpruned": s["avg_doc_nnz_unpruned"], "flops": s["flops"],
                     "postings_per_query": s["postings_per_query"], "index_mb": s["index_bytes"] / 2**20,
                     "search_s": r["timings"]["search_s"], "encode": enc_info, "model_info": r["query_model"],
                     "source": "measured (this script)", "_per_query_ndcg": per_query})
        print(f"{name} doc_top_k={doc_k} query_top_k={q_k}: nDCG@10 {m['ndcg_at_10']:.4f}, q nnz "
              f"{s['avg_query_nnz']:.1f}, d nnz {s['avg_doc_nnz']:.1f}, FLOPS {s['flops']:.3f} "
              f"({time.perf_counter() - t0:.0f}s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--student", default="runs/scifact-sparse")
    ap.add_argument("--work", default="runs/bench-sparse")
    ap.add_argument("--out", default="eval/results/scifact-sparse")
    ap.add_argument("--dense", default="eval/results/scifact-l3.json", help="dense rows (read, not re-measured)")
    ap.add_argument("--untrained", action="store_true", help="also evaluate the untrained starting point")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--limit-queries", type=int, help="smoke run: first N queries")
    ap.add_argument("--limit-docs", type=int, help="smoke run: judged docs + others up to N")
    args = ap.parse_args()

    from embed_kd.data import load_beir, resolve_dataset
    from embed_kd.evaluation.retrieval_eval import EvalOptions, evaluate_bm25, versions
    from embed_kd.models import load_sparse_encoder

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ds = load_beir(resolve_dataset("scifact"), "test")
    if args.limit_queries or args.limit_docs:
        ds = ds.sliced(args.limit_queries, args.limit_docs)
    opts = EvalOptions(show_progress=False, batch_size=args.batch_size)
    rows: list[dict] = []

    bm = evaluate_bm25(ds, options=opts)
    bm25_per_query = [bm["per_query"][q].get("ndcg_at_10", 0.0) for q in sorted(ds.qrels)]
    rows.append({"model": "bm25", "kind": "lexical", "ndcg_at_10": bm["metrics"]["ndcg_at_10"],
                 "recall_at_100": bm["metrics"]["recall_at_100"], "mrr_at_10": bm["metrics"]["mrr_at_10"],
                 "config": bm["index"], "source": "measured (this script, bm25s)"})
    print(f"bm25: nDCG@10 {bm['metrics']['ndcg_at_10']:.4f}", flush=True)

    dense = json.loads(Path(args.dense).read_text())
    for r in dense["rows"]:
        if r["model"] in {"teacher", "default", "proportional", "round_robin", "margin_only"}:
            rows.append({"model": f"dense {r['model']} ({r['mode']})", "kind": "dense",
                         "ndcg_at_10": r["ndcg_at_10"], "recall_at_100": r["recall_at_100"], "mrr_at_10": None,
                         "source": f"{args.dense} (created {r['created']})"})

    student = load_sparse_encoder(args.student)
    tb_file = Path(args.student) / "embed_kd_term_bias.json"
    term_bias = json.loads(tb_file.read_text()) if tb_file.is_file() else None
    # a term-bias fit (scripts/bench_sparse_term_bias.py --save) keeps its base student's training manifest
    base = Path(term_bias["base"]) if term_bias and not (Path(args.student) / "embed_kd_train.json").is_file() \
        else Path(args.student)
    manifest = json.loads((base / "embed_kd_train.json").read_text())
    _eval_sparse(ds, student, work, "sparse-student", opts, rows, PRUNING)
    if args.untrained:
        from embed_kd.students.build import StudentSpec
        from embed_kd.students.sparse import SparseHeadOptions, build_sparse_student

        S = manifest["config"]["sparse"]
        init, _ = build_sparse_student(StudentSpec(**{k: v for k, v in manifest["config"]["student"].items()}),
                                       opts=SparseHeadOptions(pooling=S["pooling"], activation=S["activation"],
                                                              head_bias=S["head_bias"], query_length=S["query_length"],
                                                              document_length=S["document_length"]))
        _eval_sparse(ds, init, work, "untrained-init", opts, rows, [(None, None), (256, 64)])

    # paired bootstrap of per-query nDCG@10: each sparse row vs its model's unpruned row, and vs BM25
    unpruned = {r["model"]: r["_per_query_ndcg"] for r in rows if r.get("kind") == "sparse"
                and r["doc_top_k"] is None and r["query_top_k"] is None}
    for r in rows:
        if "_per_query_ndcg" in r:
            pq = r.pop("_per_query_ndcg")
            r["paired_ndcg_at_10_vs_bm25"] = paired_bootstrap(pq, bm25_per_query)
            if r["doc_top_k"] or r["query_top_k"]:
                r["paired_ndcg_at_10_vs_unpruned"] = paired_bootstrap(pq, unpruned[r["model"]])
    tr = manifest["training"]
    out = {"schema": "embed-kd/bench-scifact-sparse@1", "dataset": {"name": ds.name, "split": ds.split,
                                                                    "n_queries": len(ds.queries),
                                                                    "n_docs": len(ds.corpus)},
           "student": {"path": args.student, "init": manifest["student"]["init"],
                       "head_init": manifest["student"]["head_init"], "config": manifest["config"],
                       "train_steps": tr["global_step"], "train_time_s": tr["train_time_s"],
                       "stopped_by_time_budget": tr["stopped_by_time_budget"],
                       "dev": (manifest.get("dev") or {}).get("metrics_final"),
                       "term_bias": term_bias and {"base": term_bias["base"], "selected": term_bias["selected"],
                                                   "scores": term_bias["scores"]}},
           "rows": rows, "versions": versions(),
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "note": "measured on a shared 2-core CPU machine (other jobs interleaved); see the .md"}
    from embed_kd.cpu import machine_info  # CPU, flags, threads, load average, commit

    out["machine"] = machine_info()
    Path(args.out + ".json").write_text(json.dumps(out, indent=1) + "\n")
    f = lambda v, d=4: "—" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines = ["| model | doc top-k | query top-k | nDCG@10 | R@100 | MRR@10 | query nnz | doc nnz | FLOPS | postings/query "
             "| Δ vs unpruned [95% CI] | Δ vs BM25 [95% CI] |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ci = lambda p: "—" if not p else f"{p['mean_diff']:+.4f} [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}]"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['model']} | {r.get('doc_top_k') or '—'} | {r.get('query_top_k') or '—'} | "
                     f"{f(r['ndcg_at_10'])} | {f(r['recall_at_100'])} | {f(r.get('mrr_at_10'))} | "
                     f"{f(r.get('avg_query_nnz'), 1)} | {f(r.get('avg_doc_nnz'), 1)} | {f(r.get('flops'), 3)} | "
                     f"{f(r.get('postings_per_query'), 0)} | {ci(r.get('paired_ndcg_at_10_vs_unpruned'))} | "
                     f"{ci(r.get('paired_ndcg_at_10_vs_bm25'))} |")
    Path(args.out + ".table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
