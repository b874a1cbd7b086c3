"""Quality against query-encoding speed: the points, a markdown table and a PNG (matplotlib, Agg).

Each ``embed-kd eval`` (``embed-kd/eval@1``) or ``eval --mteb`` (``embed-kd/mteb@1``) result is
one point: y = nDCG@10 (``metrics.ndcg_at_10``), x = queries encoded per second
(``throughput.queries_per_s``, else ``n_queries / timings.encode_queries_s``). Only the query
side is timed because that is what a distilled query encoder speeds up: documents are indexed
once, offline, by the teacher.

Each point gets a role, which decides its colour and marker:

===========  ==============================================================================
``teacher``  the same model encodes queries and documents (symmetric, or query = doc model)
``cut``      the query model's folder has no training run (no ``embed_kd_train.json``, or
             one with 0 steps), or its name contains ``cut``: a layer cut before training
``student``  any other query model (a trained student)
``bm25``     BM25: no query encoder, drawn as a horizontal reference line
===========  ==============================================================================

Retention is nDCG@10 relative to the teacher point (the first one when several), speed-up is
its queries/s relative to the teacher's.

A point also carries the STS Spearman of its query model when known — from the result's own
``sts`` block (``eval --data … --sts …``) or from an ``embed-kd/sts@1`` result of the same model
(fingerprint, else spec) passed beside it — and the table then gains STS and STS-retention columns; the PNG labels
such points with it.

>>> pts = points([
...     {"mode": "symmetric", "query_model": {"spec": "minilm-l6"}, "doc_model": {"spec": "minilm-l6"},
...      "metrics": {"ndcg_at_10": 0.6451}, "throughput": {"queries_per_s": 100.0}},
...     {"mode": "asymmetric", "query_model": {"spec": "runs/l3"}, "doc_model": {"spec": "minilm-l6"},
...      "metrics": {"ndcg_at_10": 0.6200}, "dataset": {"n_queries": 300}, "timings": {"encode_queries_s": 1.5}}])
>>> print(speed_table(pts))
| point | role | nDCG@10 | retention | queries/s | speed-up |
|---|---|---|---|---|---|
| minilm-l6 | teacher | 0.6451 | 100.0% | 100.0 | 1.00× |
| l3 | student | 0.6200 | 96.1% | 200.0 | 2.00× |
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from embed_kd.errors import EmbedKDError
from embed_kd.evaluation.outputs import PLOT, PLOT_SOFTWARE
from embed_kd.io import atomic_write_bytes, refuse_existing

logger = logging.getLogger(__name__)
COLORS = {"teacher": "tab:blue", "cut": "tab:orange", "student": "tab:green", "bm25": "tab:gray"}
MARKERS = {"teacher": "s", "cut": "v", "student": "o"}


@dataclass
class Point:
    label: str
    role: str
    ndcg_at_10: float
    queries_per_s: float | None
    doc_model: str | None = None
    sts_spearman: float | None = None


def _queries_per_s(r: dict) -> float | None:
    qps = (r.get("throughput") or {}).get("queries_per_s")
    if qps:
        return float(qps)
    t = (r.get("timings") or {}).get("encode_queries_s")
    n = (r.get("dataset") or {}).get("n_queries")
    return n / t if t and n else None


def _role(r: dict) -> str:
    if r.get("mode") == "bm25":
        return "bm25"
    q, d = (r.get("query_model") or {}).get("spec"), (r.get("doc_model") or {}).get("spec")
    if r.get("mode") == "symmetric" or q == d:
        return "teacher"
    name = Path(str(q)).name.lower()
    folder = Path(str(q))
    if "cut" in name:
        return "cut"
    manifest = folder / "embed_kd_train.json"
    if folder.is_dir():
        if not manifest.is_file():
            return "cut"
        try:
            import json

            steps = (json.loads(manifest.read_text(encoding="utf-8")).get("training") or {}).get("global_step")
            if steps == 0:
                return "cut"
        except (OSError, ValueError):
            pass
    return "student"


def points(results: list[dict], labels: list[str | None] | None = None, sts: dict | None = None) -> list[Point]:
    """One :class:`Point` per result (``labels[i]`` overrides the default label, the query model's name);
    ``sts`` maps a model fingerprint or spec to its STS Spearman (used when the result has no ``sts`` block)."""
    out = []
    for i, r in enumerate(results):
        role = _role(r)
        q = (r.get("query_model") or {}).get("spec")
        label = (labels[i] if labels and labels[i] else None) or ("bm25" if role == "bm25" else Path(str(q)).name)
        m = r.get("metrics") or {}
        if "ndcg_at_10" not in m:
            raise EmbedKDError(f"result {i + 1} ({label}) has no nDCG@10 (an MTEB run without a retrieval task?)")
        block = r.get("sts") if isinstance(r.get("sts"), dict) else None
        fp = (r.get("query_model") or {}).get("fingerprint")
        sts_sp = block["metrics"]["spearman_cosine"] if block else (sts or {}).get(fp, (sts or {}).get(q))
        out.append(Point(label, role, float(m["ndcg_at_10"]), _queries_per_s(r) if role != "bm25" else None,
                         (r.get("doc_model") or {}).get("spec"), None if sts_sp is None else float(sts_sp)))
    return out


def _teacher(pts: list[Point]) -> Point | None:
    return next((p for p in pts if p.role == "teacher"), None)


def speed_table(pts: list[Point]) -> str:
    """Markdown: nDCG@10, retention vs the teacher, queries/s and speed-up per point."""
    t = _teacher(pts)
    with_sts = any(p.sts_spearman is not None for p in pts)
    rows = ["| point | role | nDCG@10 | retention | queries/s | speed-up |" + (" STS Spearman | STS retention |"
                                                                              if with_sts else ""),
            "|---|---|---|---|---|---|" + ("---|---|" if with_sts else "")]
    for p in pts:
        ret = f"{100 * p.ndcg_at_10 / t.ndcg_at_10:.1f}%" if t and t.ndcg_at_10 else "—"
        qps = f"{p.queries_per_s:.1f}" if p.queries_per_s else "—"
        up = f"{p.queries_per_s / t.queries_per_s:.2f}×" if t and t.queries_per_s and p.queries_per_s else "—"
        row = f"| {p.label} | {p.role} | {p.ndcg_at_10:.4f} | {ret} | {qps} | {up} |"
        if with_sts:
            sp = f"{p.sts_spearman:.4f}" if p.sts_spearman is not None else "—"
            sret = (f"{100 * p.sts_spearman / t.sts_spearman:.1f}%" if t and t.sts_spearman
                    and p.sts_spearman is not None else "—")
            row += f" {sp} | {sret} |"
        rows.append(row)
    return "\n".join(rows)


def plot_quality_speed(pts: list[Point], path: str | os.PathLike, *, title: str | None = None,
                       overwrite: bool = False) -> Path:
    """Write a PNG scatter of nDCG@10 against queries/s (log x), points labelled, BM25 as a line."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    refuse_existing(path, overwrite, artifact=PLOT)
    dense = [p for p in pts if p.role != "bm25" and p.queries_per_s]
    skipped = [p.label for p in pts if p.role != "bm25" and not p.queries_per_s]
    if skipped:
        logger.warning("no query-encoding timing for %s: left out of the plot", ", ".join(skipped))
    if not dense:
        raise EmbedKDError("nothing to plot: no result has a query-encoding speed (throughput.queries_per_s)")
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    try:
        for role in ("teacher", "cut", "student"):
            group = [p for p in dense if p.role == role]
            if group:
                ax.scatter([p.queries_per_s for p in group], [p.ndcg_at_10 for p in group], s=60,
                           c=COLORS[role], marker=MARKERS[role], label=role, zorder=3)
        for i, p in enumerate(dense):  # alternate offsets so that labels of close points do not overlap
            text = f"{p.label}\n{p.ndcg_at_10:.4f}" + (f" · STS {p.sts_spearman:.3f}" if p.sts_spearman is not None else "")
            ax.annotate(text, (p.queries_per_s, p.ndcg_at_10), textcoords="offset points",
                        xytext=(6, 4 if i % 2 == 0 else -22), fontsize=8)
        for p in pts:
            if p.role == "bm25":
                ax.axhline(p.ndcg_at_10, color=COLORS["bm25"], ls="--", lw=1, label=f"BM25 ({p.ndcg_at_10:.4f})")
        ax.set_xscale("log")
        from matplotlib.ticker import FuncFormatter

        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("query encoding speed (queries/s, log scale)")
        ax.set_ylabel("nDCG@10")
        ax.set_title(title or "Retrieval quality vs query-encoding speed")
        ax.grid(True, which="both", alpha=0.3)
        ys = [p.ndcg_at_10 for p in pts]
        pad = max(0.02, (max(ys) - min(ys)) * 0.15)
        ax.set_ylim(min(ys) - pad, max(ys) + pad)
        xs = [p.queries_per_s for p in dense]
        ax.set_xlim(min(xs) / 1.6, max(xs) * 2.2)
        ax.legend(loc="lower left", fontsize=8)
        fig.tight_layout()
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": PLOT_SOFTWARE})  # how a rerun recognises it
    finally:
        plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue(), overwrite=True)
