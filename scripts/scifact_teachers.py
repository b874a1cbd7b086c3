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

ORDER = ["bm25", "minilm", "fusion-equal", "fusion-rrf", "fusion-fit", "ce-rerank", "fusion-fit-ce"]


def main(runs: Path) -> None:
    commands = json.loads((runs / "commands.json").read_text())
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
        rows.append(row)
    doc = {"schema": "embed-kd/teachers-report@1", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "dataset": "BEIR scifact, test split (300 queries, 5,183 docs)",
           "machine": f"{platform.machine()}, 2 CPU cores shared with other jobs (timings are indicative only)",
           "rows": rows, "recipes": json.loads((runs / "recipes.json").read_text()) if (runs / "recipes.json").is_file() else []}
    out = Path("eval/results/scifact-teachers.json")
    out.write_text(json.dumps(doc, indent=2) + "\n")
    lines = ["# SciFact teachers: BM25, MiniLM, fusions, a trained cross-encoder", "",
             f"Measured {doc['created']} on {doc['machine']}. SciFact **test** (300 queries). Ensemble weights are "
             "fitted on a 100-query dev slice of the **train** split (seed 0), never on test.", "",
             "| teacher | nDCG@10 | Recall@100 | MRR@10 | weights | note |", "|---|---|---|---|---|---|"]
    for row in rows:
        w = ", ".join(f"{k} {v:g}" for k, v in row.get("weights", {}).items()) or "—"
        lines.append(f"| {row['key']} | {row['ndcg_at_10']:.4f} | {row['recall_at_100']:.4f} | {row['mrr_at_10']:.4f} "
                     f"| {w} | {row['note']} |")
    lines += ["", "Commands (with `EMBED_KD_DATA=/work/shared/data EMBED_KD_CACHE=/work/cache`):", ""]
    for row in rows:
        lines += [f"- **{row['key']}**: `{row['command']}`"]
    if doc["recipes"]:
        lines += ["", "## Cross-encoder recipes tried (`embed-kd train-teacher`)", "",
                  "| recipe | command | train time | dev nDCG@10 (before → after; first stage) | test | diagnosis |",
                  "|---|---|---|---|---|---|"]
        for rc in doc["recipes"]:
            lines.append(f"| {rc['name']} | `{rc['command']}` | {rc['train']} | {rc['dev']} | {rc['test']} | {rc['diagnosis']} |")
    Path("eval/results/scifact-teachers.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
