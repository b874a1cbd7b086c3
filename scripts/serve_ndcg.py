#!/usr/bin/env python
"""Check that `embed-kd serve` ranks like `embed-kd eval` (asymmetric mode, same query and doc models).

Serves an index with a query model (a real uvicorn server on 127.0.0.1), sends every query of a
BEIR split over HTTP (`k` = 100, in requests of `--per-request` queries), scores the returned run
with `embed_kd.runs.evaluate_run`, and compares it with `evaluate_dense` — what
`embed-kd eval --query-model Q --doc-model D` computes — run in this process on the same models.

    flock /tmp/embed_kd_heavy.lock python scripts/serve_ndcg.py --index /tmp/idx-minilm \\
        --query-model minilm-l6 -o /tmp/serve-ndcg-minilm.json
    flock /tmp/embed_kd_heavy.lock python scripts/serve_ndcg.py --index /tmp/idx-minilm \\
        --query-model cut:minilm-l6:0,2,4 -o /tmp/serve-ndcg-cut.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _serve_common import layer_cut  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", required=True)
    ap.add_argument("--query-model", required=True, help="model spec, or cut:SPEC:0,2,4 for a layer cut")
    ap.add_argument("--data", default="scifact")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit-queries", type=int)
    ap.add_argument("-k", type=int, default=100)
    ap.add_argument("--per-request", type=int, default=16)
    ap.add_argument("-o", "--output")
    args = ap.parse_args()

    from embed_kd.data import load_beir, resolve_dataset
    from embed_kd.runs import evaluate_run
    from embed_kd.evaluation.retrieval_eval import EvalOptions, evaluate_dense
    from embed_kd.index.store import read_manifest
    from embed_kd.models import load_sentence_transformer
    from embed_kd.serve.app import ServeSettings, create_app
    from embed_kd.serve.client import SearchClient
    from embed_kd.serve.engine import SearchEngine
    from embed_kd.serve.runner import BackgroundServer

    spec = args.query_model
    if spec.startswith("cut:"):
        _, base, layers = spec.split(":")
        spec = layer_cut(base, layers)
    ds = load_beir(resolve_dataset(args.data), args.split)
    if args.limit_queries:
        ds = ds.sliced(args.limit_queries, None)
    qids = list(ds.queries)

    engine = SearchEngine.load(args.index, spec)
    t = time.perf_counter()
    run: dict[str, dict[str, float]] = {}
    with BackgroundServer(create_app(engine, ServeSettings(max_queries=args.per_request))) as url, \
            SearchClient(url, timeout=300) as client:
        for i in range(0, len(qids), args.per_request):
            chunk = qids[i:i + args.per_request]
            for qid, res in zip(chunk, client.search([ds.queries[q] for q in chunk], k=args.k)):
                run[qid] = dict(zip(res["ids"], res["scores"]))
    http_s = time.perf_counter() - t
    served = evaluate_run(ds.qrels, run)["metrics"]

    manifest = read_manifest(args.index)
    doc_model = load_sentence_transformer(manifest["doc_model"]["spec"])
    # asymmetric mode as `embed-kd eval --query-model Q --doc-model D` runs it (a distinct doc-model object)
    ref = evaluate_dense(ds, engine.model, doc_model, options=EvalOptions(top_k=args.k, show_progress=False))
    same_top10 = sum(list(run[q])[:10] == list(ref["run"][q])[:10] for q in qids)
    out = {
        "query_model": engine.query_info, "doc_model": manifest["doc_model"], "alignment": engine.alignment,
        "dataset": f"{args.data}/{args.split}", "n_queries": len(qids), "k": args.k,
        "served": served, "eval": ref["metrics"],
        "abs_diff": {m: abs(served[m] - ref["metrics"][m]) for m in served},
        "queries_with_identical_top10": same_top10, "http_s": http_s,
    }
    from embed_kd.cpu import machine_info  # CPU, flags, threads, load average, commit

    out["machine"] = machine_info()
    print(json.dumps(out, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(out, indent=2))
    return 0 if max(out["abs_diff"].values()) < 5e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
