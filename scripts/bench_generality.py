"""Generality benchmark (issue 23): does a SciFact student keep its teacher's general semantics?

For each variant — the teacher, the untrained cut, the default student (``runs/scifact-l3``) and the
alignment-mix ablations (``runs/scifact-l3-mix*``), each with its checkpoint-averaging variants
re-made from the run's kept checkpoints (``final``: the last checkpoint alone; ``last3``: the mean
of the last 3, when the run averaged more) —
it measures

- **dev** (what the choice is made on): asymmetric nDCG@10 of the 50 held-out TRAIN queries (the
  runs' ``dataset.dev_queries``; student queries × teacher documents) and STSb *dev* cosine Spearman;
- **test** (reported, not chosen on): SciFact test asymmetric nDCG@10 (300 queries × 5,183 docs),
  symmetric nDCG@10 for the variants in ``--sym`` (the student encodes the corpus too), and STSb
  *test* cosine Spearman (sentence-transformers' EmbeddingSimilarityEvaluator, via
  :mod:`embed_kd.evaluation.sts`).

Every measurement is cached as JSON in ``--work`` (with the load average before/after), so a rerun
adds only what is missing (a variant whose run is not finished yet is skipped and reported).
Heavy: run under the shared lock::

    flock /tmp/embed_kd_heavy.lock .venv/bin/python scripts/bench_generality.py

Output ``--out`` (``eval/results/scifact-generality.json``, schema ``embed-kd/bench-generality@1``; the
table also goes to ``--out`` with ``.table.md``)::

    {"schema", "created", "machine": embed_kd.cpu.machine_info(), "dev_queries": n,
     "rows": [{"variant", "description", "model" (folder or spec), "averaged": [checkpoint names] | null,
               "fingerprint", "dev": {"scifact_dev_asym_ndcg_at_10", "stsb_dev_spearman"},
               "test": {"scifact_asym_ndcg_at_10", "scifact_asym_recall_at_100", "scifact_sym_ndcg_at_10" | null,
                        "stsb_test_spearman", "stsb_test_pearson"},
               "ratios": {each test value / the teacher's (symmetric teacher for both nDCG columns)},
               "seconds": {measure: s}, "load": {measure: [before 1-min, after 1-min]}}],
     "missing": [variants not measured: run not finished]}
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

RUN_VARIANTS = (  # (name, run folder under --runs, description)
    ("default", "scifact-l3", "default recipe: align corpus + train queries (unweighted), avg last 3"),
    ("mix30", "scifact-l3-mix30", "align 0.5 corpus / 0.2 queries / 0.3 STSb-train, avg all 8 checkpoints"),
    ("mix60", "scifact-l3-mix60", "align 0.25 corpus / 0.15 queries / 0.6 STSb-train, avg all 8 checkpoints"),
    ("indomain-avgall", "scifact-l3-avgall", "align corpus + train queries (unweighted), avg all 8 checkpoints"),
)


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def markdown(rows: list[dict]) -> str:
    """The ablation table: dev columns (chosen on), then test columns with the ratio to the teacher.

    >>> print(markdown([{"variant": "t", "description": "teacher", "dev": {"stsb_dev_spearman": 0.87},
    ...                  "test": {"stsb_test_spearman": 0.82}, "ratios": {"stsb_test_spearman": 1.0}}]))
    | variant | what | dev asym nDCG@10 | STSb dev | test asym nDCG@10 | ×T | test sym nDCG@10 | ×T | STSb test | ×T |
    |---|---|---|---|---|---|---|---|---|---|
    | t | teacher | — | 0.8700 | — | — | — | — | 0.8200 | 1.000 |
    """
    f = lambda v: "—" if v is None else f"{v:.4f}"  # noqa: E731
    g = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    out = ["| variant | what | dev asym nDCG@10 | STSb dev | test asym nDCG@10 | ×T | test sym nDCG@10 | ×T | "
           "STSb test | ×T |", "|---" * 10 + "|"]
    for r in rows:
        d, te, ra = r["dev"], r["test"], r["ratios"]
        out.append(f"| {r['variant']} | {r['description']} | {f(d.get('scifact_dev_asym_ndcg_at_10'))} | "
                   f"{f(d.get('stsb_dev_spearman'))} | {f(te.get('scifact_asym_ndcg_at_10'))} | "
                   f"{g(ra.get('scifact_asym_ndcg_at_10'))} | {f(te.get('scifact_sym_ndcg_at_10'))} | "
                   f"{g(ra.get('scifact_sym_ndcg_at_10'))} | {f(te.get('stsb_test_spearman'))} | "
                   f"{g(ra.get('stsb_test_spearman'))} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--work", default="runs/h23/work", help="measurement cache")
    ap.add_argument("--out", default="eval/results/scifact-generality.json")
    ap.add_argument("--keep-layers", default="0,3,5")
    ap.add_argument("--sym", default="teacher,default,mix30,mix60,indomain-avgall",
                    help="variants also evaluated symmetrically (comma-separated; 'all' for every one)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from embed_kd.cpu import machine_info
    from embed_kd.data import load_beir, resolve_dataset
    from embed_kd.data.sts import load_sts
    from embed_kd.evaluation.retrieval_eval import EvalOptions, encode_corpus, evaluate_dense
    from embed_kd.evaluation.sts import sts_metrics
    from embed_kd.index.cache import EmbeddingCache
    from embed_kd.io import atomic_write_json
    from embed_kd.models import fingerprint_model, forget_fingerprint, load_sentence_transformer
    from embed_kd.students import cut_layers
    from embed_kd.training.averaging import average_checkpoints, list_checkpoints
    from embed_kd.training.dev_eval import DevRetrievalEvaluator

    runs, work = Path(args.runs), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    folder = resolve_dataset("scifact")
    test, train = load_beir(folder, "test"), load_beir(folder, "train")
    sts_dev, sts_test = load_sts("stsb", "dev"), load_sts("stsb", "test")
    cache = EmbeddingCache(None)
    teacher = load_sentence_transformer("minilm-l6")
    t_doc, t_ids, _ = encode_corpus(teacher, train, cache=cache, normalize=True, show_progress=False)

    dev_ids = None
    for _, run, _ in RUN_VARIANTS:  # every run carves the same 50 dev queries (seed 42): checked
        mf = runs / run / "embed_kd_train.json"
        if mf.is_file():
            ids = json.loads(mf.read_text())["dataset"]["dev_queries"]
            if dev_ids is not None and ids != dev_ids:
                raise SystemExit(f"{mf}: other dev queries than the first run's; not comparable")
            dev_ids = ids
    if dev_ids is None:
        raise SystemExit("no finished run yet (embed_kd_train.json) to take the dev queries from")
    dev_eval = DevRetrievalEvaluator({q: train.queries[q] for q in dev_ids}, {q: train.qrels[q] for q in dev_ids},
                                     t_doc, t_ids, normalize=True)
    sym = set(args.sym.split(","))

    # (variant, description, loader) — loaders build the model only when a measurement is missing
    variants, missing = [], []
    variants.append(("teacher", "MiniLM-L6 (all-MiniLM-L6-v2), the teacher", "minilm-l6", None,
                     lambda: teacher))
    keep = [int(x) for x in args.keep_layers.split(",")]
    variants.append(("cut", f"untrained cut of the teacher, layers {keep}", f"cut{keep}", None,
                     lambda: cut_layers(teacher, keep)))
    for name, run, desc in RUN_VARIANTS:
        out = runs / run
        if not (out / "embed_kd_train.json").is_file():
            missing.append(name)
            continue
        m = json.loads((out / "embed_kd_train.json").read_text())
        ckpts = list_checkpoints(out / "checkpoints")
        n_avg = len(m["averaging"]["checkpoints"])
        variants.append((name, desc + " (as trained)", str(out), m["averaging"]["checkpoints"],
                         lambda out=out: load_sentence_transformer(str(out))))
        for tag, chosen in (("final", ckpts[-1:]), ("last3", ckpts[-3:])):
            if len(chosen) >= n_avg:
                continue  # no averaging to take away, or the run's own output
            names = [c.name for c in chosen]

            def make(chosen=chosen):
                model = load_sentence_transformer(str(chosen[-1]))
                if len(chosen) > 1:
                    average_checkpoints(model, chosen)
                    forget_fingerprint(model)
                return model

            how = f"no averaging ({names[0]})" if tag == "final" else "avg " + ", ".join(n.split("-")[1] for n in names)
            variants.append((f"{name}-{tag}", f"{desc.split(', avg')[0]}, {how}", str(out), names, make))

    rows = []
    for name, desc, spec, averaged, make in variants:
        cached = work / f"{name}.json"
        rec = json.loads(cached.read_text()) if cached.is_file() else {"seconds": {}, "load": {}, "dev": {}, "test": {}}
        # a run re-trained since (other fingerprint) is measured again
        todo = [k for k in ("dev_asym", "stsb_dev", "test_asym", "stsb_test") if k not in rec["seconds"]]
        if name in sym or "all" in sym:
            todo += [] if "test_sym" in rec["seconds"] else ["test_sym"]
        model = None
        if todo or "fingerprint" not in rec:
            model = make()
            fp = fingerprint_model(model)
            if rec.get("fingerprint") not in (None, fp):
                rec = {"seconds": {}, "load": {}, "dev": {}, "test": {}}
                todo = ["dev_asym", "stsb_dev", "test_asym", "stsb_test"] + (
                    ["test_sym"] if name in sym or "all" in sym else [])
            rec["fingerprint"] = fp
        for k in todo:
            before, t0 = _load(), time.perf_counter()
            if k == "dev_asym":
                rec["dev"]["scifact_dev_asym_ndcg_at_10"] = dev_eval(model)["dev_ndcg_at_10"]
            elif k == "stsb_dev":
                rec["dev"]["stsb_dev_spearman"] = sts_metrics(model, sts_dev)["spearman_cosine"]
            elif k == "stsb_test":
                m = sts_metrics(model, sts_test)
                rec["test"]["stsb_test_spearman"], rec["test"]["stsb_test_pearson"] = m["spearman_cosine"], m["pearson_cosine"]
            elif k == "test_asym":
                r = evaluate_dense(test, model, teacher,
                                   options=EvalOptions(show_progress=False))
                rec["test"]["scifact_asym_ndcg_at_10"] = r["metrics"]["ndcg_at_10"]
                rec["test"]["scifact_asym_recall_at_100"] = r["metrics"]["recall_at_100"]
            elif k == "test_sym":
                r = evaluate_dense(test, model, model, options=EvalOptions(show_progress=False))
                rec["test"]["scifact_sym_ndcg_at_10"] = r["metrics"]["ndcg_at_10"]
            rec["seconds"][k] = round(time.perf_counter() - t0, 1)
            rec["load"][k] = [before, _load()]
            atomic_write_json(cached, rec)
            print(f"{name:24s} {k:10s} {rec['seconds'][k]:7.1f}s  {rec['dev'] | rec['test']}", flush=True)
        rows.append({"variant": name, "description": desc, "model": spec, "averaged": averaged, **rec})

    t = next(r for r in rows if r["variant"] == "teacher")["test"]
    ref = {"scifact_asym_ndcg_at_10": t["scifact_asym_ndcg_at_10"], "scifact_asym_recall_at_100": t["scifact_asym_recall_at_100"],
           "scifact_sym_ndcg_at_10": t["scifact_asym_ndcg_at_10"], "stsb_test_spearman": t["stsb_test_spearman"],
           "stsb_test_pearson": t["stsb_test_pearson"]}
    for r in rows:
        r["test"].setdefault("scifact_sym_ndcg_at_10", None)
        r["ratios"] = {k: (v / ref[k] if v is not None else None) for k, v in r["test"].items()}
    doc = {"schema": "embed-kd/bench-generality@1", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": machine_info(args.threads), "dev_queries": len(dev_ids), "rows": rows, "missing": missing}
    atomic_write_json(args.out, doc)
    from embed_kd.io import atomic_write_text

    table = markdown(rows)
    atomic_write_text(str(Path(args.out).with_suffix("")) + ".table.md", table + "\n")
    print(table)
    if missing:
        print("not finished yet:", ", ".join(missing))


if __name__ == "__main__":
    main()
