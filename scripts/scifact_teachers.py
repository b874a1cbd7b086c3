"""Build eval/results/scifact-teachers.{json,md} from `embed-kd eval -o` result files.

Usage: python scripts/scifact_teachers.py RUNS_DIR   (RUNS_DIR holds <key>.json and commands.json,
written by scripts/scifact_teachers.sh). Only measured numbers are copied; nothing is computed here
except formatting.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

ORDER = ["bm25", "minilm", "fusion-equal", "fusion-rrf", "fusion-fit", "ce-rerank", "fusion-fit-ce", "ce-rerank-r2",
         "fusion-fit-ce-r2"]
BASELINE = "fusion-fit"   # rows with a cross-encoder are compared with it per query (paired bootstrap)


def paired_bootstrap(a: dict, b: dict, n: int = 2000, seed: int = 0) -> dict:
    """Mean per-query nDCG@10 difference b − a with a 95% paired-bootstrap interval."""
    import random

    qs = sorted(a)
    d = [b[q]["ndcg_at_10"] - a[q]["ndcg_at_10"] for q in qs]
    rng = random.Random(seed)
    means = sorted(sum(d[rng.randrange(len(d))] for _ in d) / len(d) for _ in range(n))
    return {"mean_diff": sum(d) / len(d), "ci95": [means[int(0.025 * n)], means[int(0.975 * n) - 1]],
            "better": sum(x > 1e-9 for x in d), "worse": sum(x < -1e-9 for x in d)}


def recipes(runs: Path) -> list[dict]:
    """Recipes tried: ``recipes.json`` (name, folder, command, test keys, diagnosis) + each model's manifest."""
    f = runs / "recipes.json"
    if not f.is_file():
        return []
    out = []
    for rc in json.loads(f.read_text()):
        m = json.loads((Path(rc["folder"]) / "embed_kd_teacher.json").read_text())
        dev = m["dev"]
        evals = [(r["step"], r["eval_dev_ndcg@10"]) for r in m["train"]["log"] if "eval_dev_ndcg@10" in r]
        tests = {k: json.loads((runs / f"{k}.json").read_text())["metrics"]["ndcg_at_10"]
                 for k in rc["test_keys"] if (runs / f"{k}.json").is_file()}
        out.append({**rc, "examples": m["examples"], "steps": m["train"]["steps"], "train_s": m["train"]["seconds"],
                    "best_checkpoint": m["train"]["best_checkpoint"], "dev_curve": evals,
                    "dev_before": dev["before"]["dev_ndcg@10"], "dev_after": dev["after"]["dev_ndcg@10"],
                    "dev_first_stage": dev["after"]["dev_base_ndcg@10"], "dev_eval": f"{dev['eval_queries']} dev queries, "
                    f"top {dev['eval_depth']} of BM25+MiniLM fusion", "test_ndcg_at_10": tests})
    return out


def main(runs: Path) -> None:
    commands = json.loads((runs / "commands.json").read_text())
    extra = runs / "commands-extra.json"   # steps run outside scifact_teachers.sh (e.g. a second recipe)
    if extra.is_file():
        commands.update(json.loads(extra.read_text()))
    notes = json.loads((runs / "notes.json").read_text()) if (runs / "notes.json").is_file() else {}
    rows = []
    for key in ORDER + sorted(set(commands) - set(ORDER)):
        f = runs / f"{key}.json"
        if not f.is_file():
            continue
        r = json.loads(f.read_text())
        row = {"key": key, "mode": r["mode"], "ndcg_at_10": r["metrics"]["ndcg_at_10"],
               "recall_at_100": r["metrics"]["recall_at_100"], "mrr_at_10": r["metrics"]["mrr_at_10"],
               "command": commands[key], "total_s": r["timings"].get("total_s"), "note": notes.get(key, "")}
        if "ensemble" in r:
            wd = r["ensemble"]["weights_document"]
            row["weights"] = {**wd["first_stage_weights"], **wd["rerank_weights"]}
            row["fit"] = {k: v for k, v in (wd["fit"] or {}).items() if k in ("split", "dev_queries", "seed",
                                                                              "dev_value", "dev_value_equal_weights")} or None
            row["member_metrics"] = r["ensemble"]["member_metrics"]
        if "rerank" in r:
            row["rerank"] = {k: r["rerank"][k] for k in ("depth", "pairs", "pairs_per_s")}
            row["rerank"]["model"] = r["rerank"]["model"]["spec"]
            row["first_stage_metrics"] = r["first_stage"]["metrics"]
        if key != BASELINE and ("rerank" in r or any(m.get("kind") == "cross-encoder" for m in
                                                     r.get("ensemble", {}).get("weights_document", {}).get("members", []))):
            base = runs / f"{BASELINE}.json"
            if base.is_file():
                row["vs_" + BASELINE.replace("-", "_")] = paired_bootstrap(json.loads(base.read_text())["per_query"],
                                                                          r["per_query"])
        rows.append(row)
    doc = {"schema": "embed-kd/teachers-report@1", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "dataset": "BEIR scifact, test split (300 queries, 5,183 docs)",
           "machine": f"{platform.machine()}, 2 CPU cores shared with other jobs (timings are indicative only)",
           "rows": rows, "recipes": recipes(runs)}
    out = Path("eval/results/scifact-teachers.json")
    from embed_kd.cpu import machine_info  # CPU, flags, threads, load average, commit

    doc["machine"] = machine_info()
    out.write_text(json.dumps(doc, indent=2) + "\n")
    lines = ["# SciFact teachers: BM25, MiniLM, fusions, a trained cross-encoder", "",
             f"Measured {doc['created']} on {doc['machine']}. SciFact **test** (300 queries). Ensemble weights are "
             "fitted on a 100-query dev slice of the **train** split (seed 0), never on test.", "",
             ]
    if (runs / "summary.md").is_file():   # the measured conclusions, written by hand after the runs
        lines += [(runs / "summary.md").read_text().strip(), ""]
    lines += ["| teacher | nDCG@10 | Recall@100 | MRR@10 | weights | note |", "|---|---|---|---|---|---|"]
    for row in rows:
        w = ", ".join(f"{k} {v:g}" for k, v in row.get("weights", {}).items()) or "—"
        note = row["note"]
        cmp = row.get("vs_" + BASELINE.replace("-", "_"))
        if cmp:
            note += (f" Δ vs {BASELINE}: {cmp['mean_diff']:+.4f} (95% CI {cmp['ci95'][0]:+.4f}…{cmp['ci95'][1]:+.4f}; "
                     f"{cmp['better']} queries better, {cmp['worse']} worse)")
        lines.append(f"| {row['key']} | {row['ndcg_at_10']:.4f} | {row['recall_at_100']:.4f} | {row['mrr_at_10']:.4f} "
                     f"| {w} | {note.strip()} |")
    lines += ["", "Commands (with `EMBED_KD_DATA=/work/shared/data EMBED_KD_CACHE=/work/cache`):", ""]
    for row in rows:
        lines += [f"- **{row['key']}**: `{row['command']}`"]
    if doc["recipes"]:
        lines += ["", "## Cross-encoder recipes tried (`embed-kd train-teacher`)", "",
                  "| recipe | command | training | dev nDCG@10 before → after (step: value); first stage | test nDCG@10 | diagnosis |",
                  "|---|---|---|---|---|---|"]
        for rc in doc["recipes"]:
            curve = ", ".join(f"{s}: {v:.3f}" for s, v in rc["dev_curve"])
            test = "; ".join(f"{k} {v:.4f}" for k, v in rc["test_ndcg_at_10"].items())
            lines.append(f"| {rc['name']} | `{rc['command']}` | {rc['steps']} steps, {rc['train_s'] / 60:.1f} min "
                         f"({rc['examples']} lists) | {rc['dev_before']:.4f} → {rc['dev_after']:.4f} "
                         f"(best {rc['best_checkpoint']}; curve {curve}); first stage {rc['dev_first_stage']:.4f} "
                         f"| {test} | {rc['diagnosis']} |")
    Path("eval/results/scifact-teachers.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
