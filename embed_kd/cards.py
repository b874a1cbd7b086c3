"""Model cards: the ``README.md`` of a saved student or teacher folder, from its embed-kd manifest.

:func:`write_model_card` reads the folder's manifest — ``embed_kd_train.json`` (a student, schema
``embed-kd/train-run@1``) or ``embed_kd_teacher.json`` (a cross-encoder teacher, schema
``embed-kd/cross-encoder-teacher@1``) — and writes the embed-kd section of ``README.md``: base
model / initialisation, teacher(s), losses and their weights, data and fingerprints, evaluation
numbers (the dev slice from the manifest plus any ``embed-kd eval`` / ``eval --mteb`` results
passed in), and how to load the model, symmetric and asymmetric (queries by the student,
documents by the teacher).

The section sits between two markers, so writing it again (e.g. ``embed-kd publish`` with new
eval numbers) replaces it and keeps the rest: sentence-transformers' own card (written by
``model.save``, with the hub front matter) stays above it. A folder without a card gets a
minimal front matter (``library_name``, ``tags``, ``base_model``) so the hub shows it correctly.

Call it where a model folder is written, inside the temporary folder before the atomic rename::

    from embed_kd.cards import write_model_card
    write_model_card(tmp, manifest=manifest)          # manifest: the dict just written beside it

>>> card = render_card_section({"schema": "embed-kd/train-run@1", "teacher": {"spec": "minilm-l6",
...     "fingerprint": "abc", "dim": 384}, "student": {"init": "layers [0, 2, 4] of minilm-l6",
...     "fingerprint": "def", "dim": 384, "layers": 3, "params": 17000000}, "config": {"losses": {
...     "score": "margin_mse", "score_weight": 1.0, "align": "cosine", "align_weight": 0.5}},
...     "dataset": {"name": "scifact", "split": "train", "corpus_fingerprint": "c0"}}, name="s")
>>> "| score | `margin_mse` | 1.0 |" in card and "| align | `cosine` | 0.5 |" in card
True
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Iterable

from embed_kd.errors import ArtifactError
from embed_kd.io import atomic_write_text, read_json

logger = logging.getLogger(__name__)

BEGIN, END = "<!-- embed-kd:card:begin -->", "<!-- embed-kd:card:end -->"
MANIFESTS = {
    "embed_kd_train.json": "embed-kd/train-run@1",
    "embed_kd_teacher.json": "embed-kd/cross-encoder-teacher@1",
}


def find_manifest(folder: str | os.PathLike) -> tuple[Path, dict]:
    """``(path, manifest)`` of the embed-kd manifest in ``folder``; a clear error when there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: not a model folder")
    for name, schema in MANIFESTS.items():
        path = folder / name
        if path.is_file():
            manifest = read_json(path, "model manifest")
            if not isinstance(manifest, dict) or manifest.get("schema") != schema:
                raise ArtifactError(f"{path}: not an embed-kd manifest (expected schema {schema!r}, "
                                    f"found {manifest.get('schema') if isinstance(manifest, dict) else type(manifest).__name__!r})")
            return path, manifest
    raise ArtifactError(f"{folder}: no embed-kd manifest ({' or '.join(MANIFESTS)}); "
                        f"was it saved by `embed-kd train` / `embed-kd train-teacher`?")


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _eval_rows(results: Iterable[dict]) -> list[str]:
    rows = ["| evaluation | data | queries × docs | nDCG@10 | Recall@100 | MRR@10 | queries/s |",
            "|---|---|---|---|---|---|---|"]
    for r in results:
        if r.get("schema") == "embed-kd/mteb@1":
            qps = (r.get("throughput") or {}).get("queries_per_s")
            for t in r["tasks"]:
                for split, subs in t["scores"].items():
                    for s in subs:
                        ds = t.get("dataset") or {}
                        size = f"{ds['n_queries']} × {ds['n_docs']}" if "n_queries" in ds else "hub"
                        rows.append(f"| MTEB {t['name']} ({r['mode']}) | {ds.get('name', ds.get('hub', '—'))}/{split} | "
                                    f"{size} | {_fmt(s.get('ndcg_at_10'))} | {_fmt(s.get('recall_at_100'))} | "
                                    f"{_fmt(s.get('mrr_at_10'))} | {_fmt(qps, 1)} |")
        else:
            m, ds = r["metrics"], r["dataset"]
            qps = (r.get("throughput") or {}).get("queries_per_s")
            docs_by = (r.get("doc_model") or {}).get("spec", "bm25")
            label = f"{r['mode']}" + (f" (docs: {docs_by})" if r["mode"] == "asymmetric" else "")
            rows.append(f"| {label} | {ds['name']}/{ds['split']} | {ds['n_queries']} × {ds['n_docs']} | "
                        f"{_fmt(m.get('ndcg_at_10'))} | {_fmt(m.get('recall_at_100'))} | {_fmt(m.get('mrr_at_10'))} | "
                        f"{_fmt(qps, 1)} |")
    return rows


def hub_name(spec: str | None) -> str | None:
    """A preset's hub id (``minilm-l6`` → ``sentence-transformers/all-MiniLM-L6-v2``), else ``spec``.

    >>> hub_name("minilm-l6")
    'sentence-transformers/all-MiniLM-L6-v2'
    """
    if not spec:
        return spec
    try:
        from embed_kd.presets import resolve_model_spec

        return resolve_model_spec(spec).hub_id or spec
    except Exception:  # noqa: BLE001 - a card must not fail on an unresolvable name
        return spec


def _usage_student(name: str, teacher: str | None) -> list[str]:
    teacher = hub_name(teacher)
    out = ["## How to load it", "",
           "Symmetric (queries and documents by this model):", "",
           "```python", "from sentence_transformers import SentenceTransformer", "",
           f'model = SentenceTransformer("{name}")',
           'q = model.encode_query(["what does the student keep?"])',
           'd = model.encode_document(["a passage to index"])',
           "print(model.similarity(q, d))", "```", ""]
    if teacher:
        out += ["Asymmetric (the point of an aligned student): documents indexed once by the teacher, "
                "queries encoded by this small model in the teacher's embedding space:", "",
                "```python", "from sentence_transformers import SentenceTransformer", "",
                f'student = SentenceTransformer("{name}")',
                f'teacher = SentenceTransformer("{teacher}")   # the document encoder',
                'd = teacher.encode_document(["a passage to index"])',
                'q = student.encode_query(["what does the student keep?"])',
                "print(student.similarity(q, d))", "```", "",
                "With embed-kd: `embed-kd eval --data DATA --query-model THIS_FOLDER --doc-model "
                f"{teacher}`, or serve it with `embed-kd serve` over a teacher-built index.", ""]
    return out


def _usage_sparse(name: str) -> list[str]:
    return ["## How to load it", "",
            "```python", "from sentence_transformers import SparseEncoder", "",
            f'model = SparseEncoder("{name}")',
            'q = model.encode_query(["what does the student keep?"])      # sparse torch tensors (vocabulary-sized)',
            'd = model.encode_document(["a passage to index"])',
            "print(model.similarity(q, d))                               # dot product",
            'print(model.decode(q[0], top_k=10))                         # the heaviest terms', "```", "",
            f"With embed-kd: `embed-kd eval --data DATA --model {name} [--doc-top-k K]` (exact search on a SciPy "
            "sparse inverted index; non-zeros and FLOPs reported).", ""]


def _student_section(m: dict, name: str) -> list[str]:
    cfg = m.get("config") or {}
    L = cfg.get("losses") or {}
    teacher, student, ds = m.get("teacher") or {}, m.get("student") or {}, m.get("dataset") or {}
    scores = m.get("scores") or {}
    sparse = student.get("type") == "sparse"
    intro = ("A sparse (SPLADE) retriever distilled with embed-kd from the score teacher(s) below: one weight per "
             "vocabulary term, searched on an inverted index." if sparse else
             f"A query encoder distilled with embed-kd from the embedding teacher "
             f"`{teacher.get('spec', '?')}`" + (" and the score teacher(s) below" if scores else "") + ".")
    lines = [f"# {name}", "", intro, "",
             "## Model", "",
             "| | |", "|---|---|",
             f"| initialisation | {student.get('init', '—')} |",
             f"| layers | {_fmt(student.get('layers'))} |",
             f"| embedding dim | {_fmt(student.get('dim'))} |",
             f"| parameters | {student['params']:,} |" if student.get("params") else "| parameters | — |",
             f"| max sequence length | {_fmt(student.get('max_seq_length'))} |",
             f"| fingerprint (embed-kd) | `{student.get('fingerprint', '—')}` |"]
    if sparse:
        lines[-4] = f"| vocabulary dim (sparse) | {_fmt(student.get('dim'))} |"
        lines += [f"| MLM head | {student.get('head_init', '—')} |",
                  f"| pooling | SpladePooling `{student.get('pooling', 'max')}`, activation `{student.get('activation', 'relu')}` |",
                  f"| query / document max tokens | {_fmt(student.get('query_length'))} / "
                  f"{_fmt(student.get('document_length'))} (training documents: "
                  f"{_fmt(student.get('train_document_length') or student.get('document_length'))}) |"]
    lines += ["", "## Teachers", ""]
    if not sparse:
        lines.append(f"- embedding teacher (documents, alignment targets): `{teacher.get('spec', '—')}` "
                     f"(dim {teacher.get('dim', '—')}, fingerprint `{teacher.get('fingerprint', '—')}`)")
    for t in scores.get("teachers") or []:
        desc = t if isinstance(t, str) else ", ".join(f"{k}: {v}" for k, v in t.items()
                                                       if k in ("name", "spec", "kind", "fingerprint", "weight"))
        lines.append(f"- score teacher: {desc}")
    if scores.get("ensemble"):
        lines.append(f"- ensemble: `{json.dumps(scores['ensemble'], sort_keys=True)[:300]}`")
    if scores:
        lines.append(f"- teacher scores: `{scores.get('path')}` (config fingerprint `{scores.get('config_fingerprint')}`)")
    lines += ["", "## Losses", "", "| loss | kind | weight |", "|---|---|---|"]
    if L.get("score", "none") != "none":
        lines.append(f"| score | `{L['score']}` | {L.get('score_weight', 1.0)} |")
    if L.get("align", "none") != "none":
        lines.append(f"| align | `{L['align']}` | {L.get('align_weight', 1.0)} |")
    if sparse:  # SpladeLoss: FLOPS regularisers on query and document vectors, warmed up from 0
        S = cfg.get("sparse") or {}
        lines += [f"| FLOPS (queries) | `FlopsLoss` | {S.get('query_flops_weight')} |",
                  f"| FLOPS (documents) | `FlopsLoss` | {S.get('doc_flops_weight')} |",
                  "", f"Inside sentence-transformers' `SpladeLoss`; regulariser weights warmed up "
                      f"({S.get('flops_schedule')}) over {S.get('flops_warmup_ratio')} of the steps."]
    extra = {k: L[k] for k in ("score_documents", "score_scale", "kl_temperature") if k in L
             and not (sparse and k == "kl_temperature")}  # sparse KL: SparseDistillKLDivLoss at temperature 1
    if extra:
        lines += ["", "Score loss settings: " + ", ".join(f"`{k}` = {v}" for k, v in extra.items()) + "."]
    tr = m.get("training") or {}
    av = m.get("averaging") or {}
    if tr:
        lines += ["", f"Training: {_fmt(tr.get('global_step'))} steps, {_fmt(tr.get('epochs'), 2)} epochs, "
                      f"{_fmt(tr.get('train_time_s'), 0)} s" + (" (stopped by the time budget)" if tr.get("stopped_by_time_budget") else "")
                  + (f"; weights averaged over {', '.join(av.get('checkpoints') or [])}" if av.get("applied") else "") + "."]
    lines += _phases_lines(m)
    lines += ["", "## Data", "",
              f"- {ds.get('name', '—')}/{ds.get('split', '—')} ({ds.get('path', '')}): "
              f"{_fmt(ds.get('train_queries'))} training queries, "
              f"{len(ds.get('dev_queries') or [])} held out as the dev slice",
              "- fingerprints: " + ", ".join(f"{k.replace('_fingerprint', '')} `{v}`" for k, v in ds.items()
                                            if k.endswith("_fingerprint")), ""]
    dev = (m.get("dev") or {}).get("metrics_final")
    if dev:
        lines += ["Dev slice at the end of training: " + ", ".join(f"{k} {_fmt(v)}" for k, v in dev.items()
                                                                 if isinstance(v, (int, float))) + ".", ""]
    return lines + [*_reproduce(m)]


def _phases_lines(m: dict) -> list[str]:
    """A run in phases (embed_kd.training.phases): what each earlier phase did; the tables above are the last's.

    >>> print("\\n".join(_phases_lines({"phases": [{"phase": 1, "name": "base", "set": {}, "global_step": 4,
    ...     "dev": {"dev_ndcg_at_10": 0.5}}], "recipe": {"phases": [{"name": "general",
    ...     "set": {"losses.score": "none"}}]}, "training": {"global_step": 2}})))
    <BLANKLINE>
    Trained in 2 phases (a `phases:` config), each from the previous phase's weights; the losses and the training line above are the last phase's:
    - phase 1 (base): 4 steps, dev nDCG@10 0.5000
    - phase 2 (general): 2 steps, changes `{"losses.score": "none"}`
    """
    earlier = m.get("phases") or []
    if not earlier:
        return []
    out = ["", f"Trained in {len(earlier) + 1} phases (a `phases:` config), each from the previous phase's weights; "
               "the losses and the training line above are the last phase's:"]
    last = ((m.get("recipe") or {}).get("phases") or [{}])[-1]
    rows = [*earlier, {"phase": len(earlier) + 1, "name": last.get("name", f"phase{len(earlier) + 1}"), "set": last.get("set") or {},
                       "global_step": (m.get("training") or {}).get("global_step"), "dev": None}]
    for p in rows:
        dev = (p.get("dev") or {}).get("dev_ndcg_at_10")
        out.append(f"- phase {p['phase']} ({p['name']}): {_fmt(p.get('global_step'))} steps"
                   + (f", dev nDCG@10 {dev:.4f}" if dev is not None else "")
                   + (f", changes `{json.dumps(p['set'])}`" if p.get("set") else ""))
    return out


def _teacher_section(m: dict, name: str) -> list[str]:
    c, ds, dev = m.get("config") or {}, m.get("dataset") or {}, m.get("dev") or {}
    after, before = dev.get("after") or {}, dev.get("before") or {}
    return [f"# {name}", "",
            f"A cross-encoder teacher fine-tuned with embed-kd from `{m.get('base')}` "
            f"(fingerprint `{m.get('base_fingerprint')}` → `{m.get('model_fingerprint')}`).", "",
            "## Training", "",
            f"- loss `{c.get('loss')}`, targets `{c.get('targets')}`, {c.get('negatives')} hard negatives per query "
            f"(top {c.get('neg_depth')} of BM25 and `{c.get('dense_model')}`)",
            f"- data: {ds.get('name')}/{ds.get('split')}, {ds.get('n_train_queries')} training queries, "
            f"{ds.get('n_dev_queries')} dev queries; corpus fingerprint `{ds.get('corpus_fingerprint')}`",
            f"- dev nDCG@10: {_fmt(before.get('dev_ndcg@10'))} before → {_fmt(after.get('dev_ndcg@10'))} after", "",
            "## How to load it", "",
            "```python", "from sentence_transformers import CrossEncoder", "",
            f'model = CrossEncoder("{name}")',
            'scores = model.predict([("a query", "a passage")])   # raw logits, higher = more relevant',
            "```", "",
            f"As a score teacher: `embed-kd score-teacher --teacher {name} ...`.", "",
            *_reproduce(m)]


def _reproduce(m: dict) -> list[str]:
    git = m.get("git") or {}
    v = m.get("versions") or {}
    out = ["## Reproduce", ""]
    if m.get("config_file"):
        out.append(f"- config file: `{m['config_file']}`" + (f", overrides {m['overrides']}" if m.get("overrides") else ""))
    out.append(f"- manifest schema `{m.get('schema')}`, created {m.get('created', '—')}")
    if git.get("commit"):
        out.append(f"- embed-kd commit `{git['commit']}`" + (" (with local changes)" if git.get("dirty") else ""))
    if v:
        out.append("- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    return out + [""]


def render_card_section(manifest: dict, *, name: str, eval_results: Iterable[dict] = ()) -> str:
    """The embed-kd card section (markdown, between the markers) for ``manifest``."""
    schema = manifest.get("schema")
    if schema == MANIFESTS["embed_kd_train.json"]:
        lines = _student_section(manifest, name)
        usage = _usage_sparse(name) if (manifest.get("student") or {}).get("type") == "sparse" else \
            _usage_student(name, (manifest.get("teacher") or {}).get("spec"))
    elif schema == MANIFESTS["embed_kd_teacher.json"]:
        lines, usage = _teacher_section(manifest, name), []
    else:
        raise ArtifactError(f"no model card for manifest schema {schema!r}")
    results = list(eval_results)
    if results:
        lines += ["## Evaluation", "", *_eval_rows(results), "",
                  "Numbers from `embed-kd eval` (FAISS + pytrec_eval) and `embed-kd eval --mteb` (mteb); "
                  "queries/s measured on the machine that ran the evaluation.", ""]
    return "\n".join([BEGIN, *lines, *usage, END]) + "\n"


def _front_matter(manifest: dict) -> str:
    base = hub_name(manifest.get("base") or (manifest.get("teacher") or {}).get("spec"))
    is_student = manifest.get("schema") == MANIFESTS["embed_kd_train.json"]
    tags = ["embed-kd", "knowledge-distillation", "sentence-transformers"]
    tags += ["sentence-similarity", "feature-extraction"] if is_student else ["cross-encoder", "text-ranking"]
    lines = ["---", "library_name: sentence-transformers", "tags:", *[f"- {t}" for t in tags]]
    if base and "/" in str(base) and not Path(str(base)).exists():
        lines.append(f"base_model: {base}")
    lines.append(f"pipeline_tag: {'sentence-similarity' if is_student else 'text-ranking'}")
    return "\n".join(lines + ["---", ""])


def write_model_card(folder: str | os.PathLike, *, manifest: dict | None = None, name: str | None = None,
                     eval_results: Iterable[dict] = ()) -> Path:
    """Write (or refresh) the embed-kd section of ``folder/README.md``; returns the card's path.

    ``manifest``: the folder's manifest dict (read from the folder when omitted); ``name``: how the
    usage snippets refer to the model (a hub repo id when publishing; default the folder name);
    ``eval_results``: ``embed-kd/eval@1`` / ``embed-kd/mteb@1`` dicts to tabulate.
    """
    folder = Path(folder)
    if manifest is None:
        _, manifest = find_manifest(folder)
    section = render_card_section(manifest, name=name or folder.name, eval_results=eval_results)
    card = folder / "README.md"
    old = card.read_text(encoding="utf-8") if card.is_file() else ""
    if BEGIN in old and END in old:
        text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", lambda _: section, old, count=1, flags=re.S)
    elif old.strip():
        text = old.rstrip("\n") + "\n\n" + section
    else:
        text = _front_matter(manifest) + "\n" + section
    atomic_write_text(card, text)
    logger.info("model card written to %s", card)
    return card
