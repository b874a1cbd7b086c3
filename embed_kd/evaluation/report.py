"""Render eval results for people: a markdown table (printed by the CLI, written into reports).

>>> r = {"mode": "symmetric", "query_model": {"spec": "m"}, "doc_model": {"spec": "m"},
...      "dataset": {"name": "scifact", "split": "test"},
...      "metrics": {"ndcg_at_10": 0.64512, "recall_at_100": 0.925, "mrr_at_10": 0.6},
...      "timings": {"total_s": 12.0}}
>>> print(markdown_table([r]))
| mode | query model | doc model | data | nDCG@10 | Recall@100 | MRR@10 | total s |
|---|---|---|---|---|---|---|---|
| symmetric | m | m | scifact/test | 0.6451 | 0.9250 | 0.6000 | 12.0 |

Given a teacher result, the table adds each row's nDCG@10 ratio to it and the query-encoding speed
measured by that eval (``throughput.queries_per_s``) with its ratio to the teacher's;
:func:`distillation_line` says what a trained student was distilled from (its run manifest).
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

from embed_kd.errors import ArtifactError
from embed_kd.io import read_json

#: the result files ``report`` reads (``eval -o``, ``eval --mteb -o``, ``eval --sts -o``)
RESULT_SCHEMAS = ("embed-kd/eval@1", "embed-kd/mteb@1", "embed-kd/sts@1")
#: the ones a model card tabulates (``publish --eval``, :func:`embed_kd.cards.write_model_card`)
CARD_SCHEMAS = ("embed-kd/eval@1", "embed-kd/mteb@1")
#: fields the table reads from an ``embed-kd/eval@1`` result (dotted paths)
REQUIRED_EVAL_FIELDS = ("mode", "dataset.name", "dataset.split", "metrics.ndcg_at_10", "metrics.recall_at_100",
                        "metrics.mrr_at_10", "timings.total_s")
#: fields the STS table reads from an ``embed-kd/sts@1`` result, or from an eval result's ``sts`` block
STS_FIELDS = ("model.spec", "dataset.name", "metrics.spearman_cosine", "metrics.pearson_cosine")


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


def result_missing_fields(result: dict) -> list[str]:
    """The fields the tables need that ``result`` lacks, by its schema (an eval result with an ``sts``
    block: that block's, as ``sts.<field>``).

    >>> result_missing_fields({"schema": "embed-kd/sts@1", "model": {"spec": "m"}, "dataset": {"name": "stsb"},
    ...                        "metrics": {"spearman_cosine": 0.8}})
    ['metrics.pearson_cosine']
    >>> result_missing_fields({"schema": "embed-kd/mteb@1"})
    []
    """
    schema = result.get("schema")
    missing = (missing_fields(result) if schema == "embed-kd/eval@1" else
               missing_fields(result, STS_FIELDS) if schema == "embed-kd/sts@1" else [])
    if not missing and isinstance(result.get("sts"), dict):
        missing = [f"sts.{f}" for f in missing_fields(result["sts"], STS_FIELDS)]
    return missing


def read_result(path: str | os.PathLike, schemas: Sequence[str] = RESULT_SCHEMAS) -> dict:
    """One result JSON, checked: one of ``schemas``, with every field the tables read
    (:func:`result_missing_fields`); else an :class:`~embed_kd.errors.ArtifactError` naming ``path``.

    >>> import json, pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "r.json"
    >>> _ = p.write_text(json.dumps({"schema": "embed-kd/sts@1", "model": {"spec": "m"}}))
    >>> read_result(p, CARD_SCHEMAS)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    embed_kd.errors.ArtifactError: .../r.json: not an embed-kd eval result (schema embed-kd/eval@1 or embed-kd/mteb@1)
    >>> read_result(p)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    embed_kd.errors.ArtifactError: .../r.json: eval result is missing field(s) dataset.name, metrics.spearman_cosine, ...
    """
    r = read_json(path, "eval result")
    if not isinstance(r, dict) or r.get("schema") not in schemas:
        raise ArtifactError(f"{path}: not an embed-kd eval result (schema {' or '.join(schemas)})")
    missing = result_missing_fields(r)
    if missing:
        raise ArtifactError(f"{path}: eval result is missing field(s) {', '.join(missing)}")
    return r


def read_results(paths: Iterable[str | os.PathLike], schemas: Sequence[str] = RESULT_SCHEMAS) -> list[dict]:
    """:func:`read_result` of each path, in order (the first bad one is the error)."""
    return [read_result(p, schemas) for p in paths]


def read_teacher_result(path: str | os.PathLike) -> dict:
    """``report --teacher``: an ``embed-kd/eval@1`` result with the table's fields."""
    teacher = read_json(path, "eval result")
    bad = missing_fields(teacher) if isinstance(teacher, dict) else ["schema"]
    if bad or teacher.get("schema") != "embed-kd/eval@1":
        raise ArtifactError(f"{path}: --teacher must be an embed-kd/eval@1 result (missing {', '.join(bad) or 'schema'})")
    return teacher


def _name(info) -> str:
    return info["spec"] if info else "—"


def queries_per_s(result: dict) -> float | None:
    """Queries encoded per second in this eval (None for BM25 / ensembles: no query encoder timed).

    >>> queries_per_s({"mode": "asymmetric", "throughput": {"queries_per_s": 210.0}}), queries_per_s({"mode": "bm25"})
    (210.0, None)
    """
    if result.get("mode") in ("bm25", "ensemble"):
        return None
    return (result.get("throughput") or {}).get("queries_per_s")


def default_teacher(results: Sequence[dict]) -> dict | None:
    """The reference row when none is named: the first symmetric (one model both sides) dense result."""
    return next((r for r in results if r.get("mode") == "symmetric"), None)


def markdown_table(results: Iterable[dict], teacher: dict | None = None) -> str:
    """One row per eval result; with ``teacher``, the ×teacher, queries/s and ×speed columns too.

    >>> t = {"mode": "symmetric", "query_model": {"spec": "minilm-l6"}, "doc_model": {"spec": "minilm-l6"},
    ...      "dataset": {"name": "scifact", "split": "test"}, "throughput": {"queries_per_s": 100.0},
    ...      "metrics": {"ndcg_at_10": 0.64, "recall_at_100": 0.92, "mrr_at_10": 0.6}, "timings": {"total_s": 9.0}}
    >>> s = {**t, "mode": "asymmetric", "query_model": {"spec": "out/student"}, "throughput": {"queries_per_s": 210.0},
    ...      "metrics": {"ndcg_at_10": 0.656, "recall_at_100": 0.93, "mrr_at_10": 0.61}}
    >>> print(markdown_table([t, s], teacher=t))
    | mode | query model | doc model | data | nDCG@10 | ×teacher | Recall@100 | MRR@10 | queries/s | ×speed | total s |
    |---|---|---|---|---|---|---|---|---|---|---|
    | symmetric | minilm-l6 | minilm-l6 | scifact/test | 0.6400 | 1.000 | 0.9200 | 0.6000 | 100 | 1.00 | 9.0 |
    | asymmetric | out/student | minilm-l6 | scifact/test | 0.6560 | 1.025 | 0.9300 | 0.6100 | 210 | 2.10 | 9.0 |
    """
    cols = ["mode", "query model", "doc model", "data", "nDCG@10", "Recall@100", "MRR@10", "total s"]
    if teacher is not None:
        cols[5:5] = ["×teacher"]
        cols[-1:-1] = ["queries/s", "×speed"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    t_ndcg = teacher["metrics"]["ndcg_at_10"] if teacher is not None else None
    t_qps = queries_per_s(teacher) if teacher is not None else None
    for r in results:
        m = r["metrics"]
        qm = _name(r.get("query_model")) if r["mode"] != "bm25" else "bm25"
        dm = _name(r.get("doc_model")) if r["mode"] != "bm25" else "bm25"
        cells = [r["mode"], qm, dm, f"{r['dataset']['name']}/{r['dataset']['split']}", f"{m['ndcg_at_10']:.4f}",
                 f"{m['recall_at_100']:.4f}", f"{m['mrr_at_10']:.4f}", f"{r['timings']['total_s']:.1f}"]
        if teacher is not None:
            qps = queries_per_s(r)
            cells[5:5] = [f"{m['ndcg_at_10'] / t_ndcg:.3f}" if t_ndcg else "—"]
            cells[-1:-1] = ["—" if qps is None else f"{qps:.0f}",
                            f"{qps / t_qps:.2f}" if qps is not None and t_qps else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def distillation_line(manifest: dict) -> str:
    """What a trained student was distilled from, in one line, from its run manifest (``embed_kd_train.json``).

    >>> print(distillation_line({"student": {"init": "teacher layers [0, 3, 5]", "layers": 3, "params": 17_400_000},
    ...     "teacher": {"spec": "minilm-l6"}, "config": {"output": "out/student", "losses": {"score": "margin_mse",
    ...     "align": "cosine", "score_documents": "teacher"}},
    ...     "scores": {"teachers": [{"name": "bm25"}, {"name": "minilm-l6"}], "ensemble": {"norm": "zscore"}},
    ...     "examples": {"score": {"queries": 759}, "align": {"texts": 759}},
    ...     "training": {"global_step": 120, "train_time_s": 250.0, "stopped_by_time_budget": False}}))
    distilled: out/student (3 layers, 17.4M params, from teacher layers [0, 3, 5]) ← scores of the bm25 + minilm-l6 zscore ensemble (margin_mse, 759 train queries) + embeddings of minilm-l6 (cosine alignment, 759 texts; minilm-l6 encodes the documents); 120 steps, 4.2 min
    """
    st, cfg, tr, ex = manifest["student"], manifest.get("config") or {}, manifest["training"], manifest["examples"]
    L = cfg.get("losses") or {}
    teacher = (manifest.get("teacher") or {}).get("spec", "?")
    size = ", ".join(x for x in (f"{st['layers']} layers" if st.get("layers") else "",
                                 f"{st['params'] / 1e6:.1f}M params" if st.get("params") else "") if x)
    parts = []
    sc = manifest.get("scores")
    if sc and (ex.get("score") or {}).get("queries"):
        names = [t.get("name", "?") for t in sc.get("teachers") or []]
        ens = sc.get("ensemble")
        src = (f"the {' + '.join(names)} {ens.get('norm', '')} ensemble".replace("  ", " ") if ens and len(names) > 1
               else (names[0] if names else "a score store"))
        parts.append(f"scores of {src} ({L.get('score', '?')}, {ex['score']['queries']} train queries)")
    if ex.get("align"):
        parts.append(f"embeddings of {teacher} ({L.get('align', '?')} alignment, {ex['align'].get('texts', '?')} texts"
                     + (f"; {teacher} encodes the documents)" if L.get("score_documents") == "teacher" else ")"))
    budget = " (stopped by the time budget)" if tr.get("stopped_by_time_budget") else ""
    return (f"distilled: {cfg.get('output') or 'student'} ({size}, from {st.get('init', '?')}) ← "
            f"{' + '.join(parts) or 'nothing recorded'}; {tr['global_step']} steps, {tr['train_time_s'] / 60:.1f} min"
            + budget)


def timings_table(result: dict) -> str:
    rows = ["| stage | seconds |", "|---|---|"]
    rows += [f"| {k} | {v:.2f} |" for k, v in result["timings"].items()]
    return "\n".join(rows)


def distillation_lines(results: Iterable[dict]) -> list[str]:
    """:func:`distillation_line` of each distinct trained student among the results' query models (a
    folder holding ``embed_kd_train.json``); a manifest that cannot be read is skipped."""
    import json
    from pathlib import Path

    out, seen = [], set()
    for r in results:
        spec = (r.get("query_model") or {}).get("spec")
        f = Path(str(spec), "embed_kd_train.json") if spec else None
        if f is None or spec in seen or not f.is_file():
            continue
        seen.add(spec)
        try:
            out.append(distillation_line(json.loads(f.read_text())))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out
