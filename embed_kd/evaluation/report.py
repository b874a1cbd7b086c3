"""Render eval results for people: a markdown table (printed by the CLI, written into reports).

>>> r = {"mode": "symmetric", "query_model": {"spec": "m"}, "doc_model": {"spec": "m"},
...      "dataset": {"name": "scifact", "split": "test"},
...      "metrics": {"ndcg_at_10": 0.64512, "recall_at_100": 0.925, "mrr_at_10": 0.6},
...      "timings": {"total_s": 12.0}}
>>> print(markdown_table([r]))
| mode | query model | doc model | data | nDCG@10 | Recall@100 | MRR@10 | total s |
|---|---|---|---|---|---|---|---|
| symmetric | m | m | scifact/test | 0.6451 | 0.9250 | 0.6000 | 12.0 |
"""

from __future__ import annotations

from typing import Iterable

#: fields the table reads from an ``embed-kd/eval@1`` result (dotted paths)
REQUIRED_EVAL_FIELDS = ("mode", "dataset.name", "dataset.split", "metrics.ndcg_at_10", "metrics.recall_at_100",
                        "metrics.mrr_at_10", "timings.total_s")


def missing_fields(result: dict, fields: Iterable[str] = REQUIRED_EVAL_FIELDS) -> list[str]:
    """The dotted ``fields`` absent from ``result`` (what a hand-edited or truncated result lacks).

    >>> missing_fields({"mode": "bm25", "metrics": {"ndcg_at_10": 0.5}}, ["mode", "metrics.ndcg_at_10", "timings.total_s"])
    ['timings.total_s']
    """
    out = []
    for f in fields:
        value = result
        for key in f.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            out.append(f)
    return out


def _name(info) -> str:
    return info["spec"] if info else "—"


def markdown_table(results: Iterable[dict]) -> str:
    lines = ["| mode | query model | doc model | data | nDCG@10 | Recall@100 | MRR@10 | total s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        m = r["metrics"]
        qm = _name(r.get("query_model")) if r["mode"] != "bm25" else "bm25"
        dm = _name(r.get("doc_model")) if r["mode"] != "bm25" else "bm25"
        lines.append(
            f"| {r['mode']} | {qm} | {dm} | {r['dataset']['name']}/{r['dataset']['split']} | "
            f"{m['ndcg_at_10']:.4f} | {m['recall_at_100']:.4f} | {m['mrr_at_10']:.4f} | "
            f"{r['timings']['total_s']:.1f} |"
        )
    return "\n".join(lines)


def timings_table(result: dict) -> str:
    rows = ["| stage | seconds |", "|---|---|"]
    rows += [f"| {k} | {v:.2f} |" for k, v in result["timings"].items()]
    return "\n".join(rows)
