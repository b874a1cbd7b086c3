"""Term-bias fit for sparse students on SciFact (eval/results/scifact-sparse-term-bias.{json,md}).

Stage 1 (``cache``, heavy: one corpus pass per model): the bias-free max-logits
(:func:`embed_kd.students.term_bias.max_logits`) of the corpus (document role, ≤256 tokens), the
train queries and the test queries (query role, ≤32 tokens), for each ``--model``:
``untrained`` (MiniLM + the built tied MLM head, bias −5: the sparse student's start) or a
SparseEncoder folder (e.g. ``runs/scifact-sparse``). Written atomically to
``--work/<name>/`` as float16 ``.npy`` files + ``meta.json`` (``{"schema":
"embed-kd/sparse-max-logits@1", "model", "model_fingerprint", "role lengths", "n": {corpus,
train_queries, test_queries}, "doc_ids", "train_qids", "test_qids"}``) — a benchmark work folder,
not a product artifact.

Stage 2 (``fit``, light: minutes): fits the term bias on the teacher scores of the TRAIN queries
(``runs/scifact-train-ens``, dev slice of 50 queries held out exactly as ``embed-kd train`` does),
selects the configuration and step on dev nDCG@10 (full-corpus retrieval, train qrels), writes the
fitted bias into the model's head and saves the SparseEncoder to ``--save``. Test nDCG@10 of every
configuration is computed from the cached max-logits (same maths as encoding; float16 cache) and
reported next to the dev number, but selection never looks at it.

The saved model is then evaluated through the product path (``scripts/bench_scifact_sparse.py
--student <saved>``: a fresh corpus encoding, CSR inverted index, pytrec_eval).

    flock /tmp/embed_kd_heavy.lock .venv/bin/python scripts/bench_sparse_term_bias.py cache --model untrained
    .venv/bin/python scripts/bench_sparse_term_bias.py fit --model untrained --save runs/sparse-tb
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def build_model(name: str):
    from embed_kd.models import load_sparse_encoder
    from embed_kd.students.build import StudentSpec
    from embed_kd.students.sparse import SparseHeadOptions, build_sparse_student

    if name == "untrained":
        model, info = build_sparse_student(StudentSpec(model="minilm-l6"),
                                           opts=SparseHeadOptions(head_bias=-5.0, query_length=32, document_length=256))
        return model, info["head_init"]
    return load_sparse_encoder(name), f"SparseEncoder {name}"


def _name(model: str) -> str:
    return "untrained" if model == "untrained" else Path(model).name


def cache(args) -> None:
    from embed_kd.data import load_beir, resolve_dataset
    from embed_kd.io import Artifact, atomic_dir
    from embed_kd.models import fingerprint_model
    from embed_kd.students.term_bias import max_logits

    folder = resolve_dataset("scifact")
    train, test = load_beir(folder, "train"), load_beir(folder, "test")
    model, how = build_model(args.model)
    out = Path(args.work) / _name(args.model)
    doc_ids = list(train.corpus)
    t0 = time.perf_counter()
    with atomic_dir(out, overwrite=args.overwrite, artifact=Artifact("embed-kd/sparse-max-logits@1", "meta.json",
                                                                         "max-logits cache")) as tmp:
        parts = {"train_queries": (list(train.queries), [train.queries[q] for q in train.queries], "query"),
                 "test_queries": (list(test.queries), [test.queries[q] for q in test.queries], "query"),
                 "corpus": (doc_ids, [train.doc_text(d) for d in doc_ids], "document")}
        timings = {}
        for part, (ids, texts, role) in parts.items():
            t = time.perf_counter()
            m = max_logits(model, texts, role=role, batch_size=args.batch_size, show_progress=True)
            np.save(tmp / f"{part}.npy", m.astype(np.float16))
            timings[part] = round(time.perf_counter() - t, 1)
            print(f"{part}: {m.shape} in {timings[part]} s; max-logit range {m.min():.2f}..{m.max():.2f}", flush=True)
        (tmp / "meta.json").write_text(json.dumps({
            "schema": "embed-kd/sparse-max-logits@1", "model": args.model, "head": how,
            "model_fingerprint": fingerprint_model(model), "query_length": 32, "document_length": 256,
            "doc_ids": doc_ids, "train_qids": list(train.queries), "test_qids": list(test.queries),
            "timings_s": timings, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
    print(f"cached in {out} ({time.perf_counter() - t0:.0f} s)")


def _retrieval_ndcg(qmax, dmax, bias, qids, doc_ids, qrels) -> tuple[float, dict]:
    from embed_kd.training.term_bias_stage import retrieval_metrics

    m = retrieval_metrics(qmax, dmax, bias, qids, doc_ids, qrels)
    return m["ndcg_at_10"], m


def fit(args) -> None:
    from embed_kd.data import load_beir, resolve_dataset
    from embed_kd.evaluation.retrieval_eval import versions
    from embed_kd.students.term_bias import TermBiasFitOptions, fit_term_bias, get_term_bias, idf_bias, set_term_bias
    from embed_kd.teachers.store import open_scores
    from embed_kd.training.data import split_dev

    work = Path(args.work) / _name(args.model)
    meta = json.loads((work / "meta.json").read_text())
    dmax = np.load(work / "corpus.npy")
    trq, teq = np.load(work / "train_queries.npy"), np.load(work / "test_queries.npy")
    folder = resolve_dataset("scifact")
    train, test = load_beir(folder, "train"), load_beir(folder, "test")
    doc_ids, doc_row = meta["doc_ids"], {d: i for i, d in enumerate(meta["doc_ids"])}
    q_row = {q: i for i, q in enumerate(meta["train_qids"])}
    by_query = open_scores(args.scores).by_query()
    train_qids, dev_qids = split_dev(list(train.queries), 50, 42)  # as embed-kd train (dev_queries 50, seed 42)
    groups = [(q_row[q], [doc_row[d] for d, _, _ in by_query[q]], [s for _, s, _ in by_query[q]])
              for q in train_qids if q in by_query]
    dev_rows = [q_row[q] for q in dev_qids]
    dev_qrels = {q: train.qrels[q] for q in dev_qids}
    test_qids = meta["test_qids"]
    test_qrels = {q: test.qrels[q] for q in test_qids if q in test.qrels}

    def dev_eval(b):
        return _retrieval_ndcg(trq[dev_rows], dmax, b, dev_qids, doc_ids, dev_qrels)[0]

    model, how = build_model(args.model)
    start = get_term_bias(model)
    inits = {"start": start}
    for s in args.idf_strengths:
        inits[f"idf{s:g}"] = idf_bias(dmax.astype(np.float32), float(np.median(start)), s)
    rows = []
    for init_name, b0 in inits.items():
        d0, dm0 = _retrieval_ndcg(trq[dev_rows], dmax, b0, dev_qids, doc_ids, dev_qrels)
        t0, tm0 = _retrieval_ndcg(teq, dmax, b0, test_qids, doc_ids, test_qrels)
        rows.append({"init": init_name, "fit": None, "dev_ndcg_at_10": d0, "test": tm0, "dev": dm0})
        print(f"{init_name:>10} (no fit): dev {d0:.4f} test {t0:.4f} nnz q {tm0['query_nnz']:.1f} d {tm0['doc_nnz']:.1f}",
              flush=True)
        for loss in args.losses:
            for flw in args.flops:
                opts = TermBiasFitOptions(loss=loss, steps=args.steps, lr=args.lr, temperature=args.temperature,
                                          query_flops_weight=flw, doc_flops_weight=flw, l2_to_init=args.l2)
                t = time.perf_counter()
                b, info = fit_term_bias(trq, dmax, groups, b0, opts, evaluate=dev_eval, eval_every=args.eval_every,
                                        show_progress=False)
                fit_s = time.perf_counter() - t
                dv, dm = _retrieval_ndcg(trq[dev_rows], dmax, b, dev_qids, doc_ids, dev_qrels)
                tv, tm = _retrieval_ndcg(teq, dmax, b, test_qids, doc_ids, test_qrels)
                rows.append({"init": init_name, "fit": {"loss": loss, "flops": flw, "steps": args.steps, "lr": args.lr,
                                                        "temperature": args.temperature, "l2": args.l2,
                                                        "best_step": info["best_step"], "history": info["history"],
                                                        "fit_s": round(fit_s, 1)},
                             "dev_ndcg_at_10": dv, "test": tm, "dev": dm, "_bias": b})
                print(f"{init_name:>10} {loss} flops {flw:g}: best step {info['best_step']} dev {dv:.4f} test {tv:.4f} "
                      f"nnz q {tm['query_nnz']:.1f} d {tm['doc_nnz']:.1f} ({fit_s:.0f} s)", flush=True)
    best = max(rows, key=lambda r: r["dev_ndcg_at_10"])
    print(f"selected on dev: {best['init']} {best['fit']} dev {best['dev_ndcg_at_10']:.4f} "
          f"test {best['test']['ndcg_at_10']:.4f}")
    bias = best.get("_bias", inits[best["init"]])
    for r in rows:
        r.pop("_bias", None)
    if args.save:
        from embed_kd.io import Artifact, atomic_dir

        set_term_bias(model, bias)
        artifact = Artifact("embed-kd/term-bias-fit@1", "embed_kd_term_bias.json", "term-bias fit")
        with atomic_dir(Path(args.save), overwrite=args.overwrite, artifact=artifact) as tmp:
            model.save_pretrained(str(tmp))
            (tmp / "embed_kd_term_bias.json").write_text(json.dumps({
                "schema": "embed-kd/term-bias-fit@1", "base": args.model, "head_before": how, "selected": best,
                "scores": args.scores, "dev_queries": dev_qids}, indent=1))
    out = Path(args.out)
    res = {"schema": "embed-kd/bench-sparse-term-bias@1", "model": args.model, "head": how,
           "cache_timings_s": meta["timings_s"], "rows": rows, "selected": {k: best[k] for k in ("init", "fit")},
           "saved": args.save, "versions": versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "note": "test numbers from cached float16 max-logits; the saved model's product-path eval is in "
                   "scifact-sparse.json"}
    prev = json.loads(out.read_text()) if out.is_file() else {"runs": []}
    prev["runs"] = [r for r in prev.get("runs", []) if r["model"] != args.model] + [res]
    from embed_kd.cpu import machine_info  # CPU, flags, threads, load average, commit

    res["machine"] = machine_info()  # this run's (the runs list keeps earlier ones)
    out.write_text(json.dumps(prev, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["cache", "fit"])
    ap.add_argument("--model", default="untrained", help="untrained | a SparseEncoder folder")
    ap.add_argument("--work", default="runs/term-bias-cache")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--scores", default="runs/scifact-train-ens")
    ap.add_argument("--save")
    ap.add_argument("--out", default=str(REPO / "eval/results/scifact-sparse-term-bias.json"))
    ap.add_argument("--idf-strengths", type=float, nargs="*", default=[])
    ap.add_argument("--losses", nargs="*", default=["kl"])
    ap.add_argument("--flops", type=float, nargs="*", default=[1e-3])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--temperature", type=float, default=3.0)
    ap.add_argument("--l2", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=50)
    args = ap.parse_args()
    from embed_kd.cli.common import setup_logging

    setup_logging(0, quiet=True)
    cache(args) if args.stage == "cache" else fit(args)


if __name__ == "__main__":
    main()
