"""STS evaluation: cosine Spearman / Pearson of a model on scored sentence pairs, beside its teacher.

The correlations are sentence-transformers' :class:`EmbeddingSimilarityEvaluator` (cosine similarity
of the two sentences' embeddings against the human scores; ``SparseEmbeddingSimilarityEvaluator``
for a SparseEncoder). STS is symmetric, so one model encodes both sentences of every pair: for an
asymmetric student/teacher pair the **student** (the query model) encodes both sides and the
teacher, when given, is evaluated on its own as the reference. ``ratio`` is the model's value over
the teacher's.

``embed-kd eval --sts FILE|stsb`` writes (schema ``embed-kd/sts@1``)::

    {
      "schema": "embed-kd/sts@1",
      "mode": "sts",
      "dataset": {"name", "path", "split" (stsb: train|dev|test; a file: null), "n_pairs", "fingerprint"},
      "model": {"spec", "fingerprint", "dim", "max_seq_length"},
      "encoding": one sentence saying which model encoded what,
      "metrics": {"spearman_cosine", "pearson_cosine"},
      "teacher": null | {"model": {...as above}, "metrics": {"spearman_cosine", "pearson_cosine"}},
      "ratio": null | {"spearman_cosine", "pearson_cosine"},      # model / teacher
      "timings": {"load_models_s", "evaluate_s", "total_s"},
      "versions": {...}, "created": ISO-8601 UTC
    }

With ``--data`` as well, the retrieval result (``embed-kd/eval@1``) carries the same object, less
``schema``/``versions``/``created``, under the key ``"sts"``.

>>> result = {"metrics": {"spearman_cosine": 0.81, "pearson_cosine": 0.82},
...           "teacher": {"metrics": {"spearman_cosine": 0.82, "pearson_cosine": 0.84}}}
>>> round(ratios(result)["spearman_cosine"], 4)
0.9878
"""

from __future__ import annotations

import time

from embed_kd.data.sts import load_sts, StsPairs
from embed_kd.errors import EmbedKDError
from embed_kd.io import utc_now, versions
from embed_kd.models import is_sparse_model, load_sentence_transformer, load_sparse_encoder, model_info

SCHEMA = "embed-kd/sts@1"
METRICS = ("spearman_cosine", "pearson_cosine")


def sts_metrics(model, pairs: StsPairs, *, batch_size: int = 32, show_progress: bool = False) -> dict:
    """``{"spearman_cosine", "pearson_cosine"}`` of ``model`` on ``pairs`` (sentence-transformers' evaluator)."""
    from sentence_transformers import SparseEncoder

    if isinstance(model, SparseEncoder):
        from sentence_transformers.sparse_encoder.evaluation import SparseEmbeddingSimilarityEvaluator as Evaluator
    else:
        from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator as Evaluator
    ev = Evaluator(pairs.sentences1, pairs.sentences2, pairs.scores, batch_size=batch_size, main_similarity="cosine",
                   similarity_fn_names=["cosine"], name="sts", show_progress_bar=show_progress, write_csv=False)
    out = ev(model)
    missing = [m for m in METRICS if f"sts_{m}" not in out]
    if missing:  # pragma: no cover - depends on the evaluator's naming
        raise EmbedKDError(f"STS evaluator returned no {', '.join(missing)} (got {sorted(out)})")
    return {m: float(out[f"sts_{m}"]) for m in METRICS}


def ratios(result: dict) -> dict | None:
    """Model over teacher for each metric, or None without a teacher."""
    t = (result.get("teacher") or {}).get("metrics")
    if not t:
        return None
    return {m: (result["metrics"][m] / t[m] if t.get(m) else None) for m in METRICS}


def evaluate_sts(pairs: StsPairs, model, *, teacher=None, spec: str | None = None, teacher_spec: str | None = None,
                 asymmetric_doc_spec: str | None = None, batch_size: int = 32, show_progress: bool = False,
                 timings: dict | None = None) -> dict:
    """The STS result object (module docstring, without ``schema``/``versions``/``created``).

    ``asymmetric_doc_spec``: the document model of an asymmetric pair, named in ``encoding`` (it does
    not encode anything here; pass it as ``teacher`` to get the reference numbers).
    """
    t0 = time.perf_counter()
    info = model_info(model)
    if spec:
        info["spec"] = spec
    encoding = f"{info['spec']} encodes both sentences of each pair (STS is symmetric)"
    if asymmetric_doc_spec:
        encoding += (f"; the pair's document model {asymmetric_doc_spec} encodes nothing here — the query model "
                     "(the student) is what is measured")
    result = {"mode": "sts",
              "dataset": {"name": pairs.name, "path": str(pairs.path), "split": pairs.split, "n_pairs": len(pairs),
                          "fingerprint": pairs.fingerprint},
              "model": info, "encoding": encoding,
              "metrics": sts_metrics(model, pairs, batch_size=batch_size, show_progress=show_progress),
              "teacher": None, "ratio": None}
    if teacher is not None:
        t_info = model_info(teacher)
        if teacher_spec:
            t_info["spec"] = teacher_spec
        result["teacher"] = {"model": t_info, "metrics": sts_metrics(teacher, pairs, batch_size=batch_size,
                                                                     show_progress=show_progress)}
        result["encoding"] += f"; the teacher {t_info['spec']} encodes both sentences on its own, as the reference"
        result["ratio"] = ratios(result)
    result["timings"] = {**(timings or {}), "evaluate_s": time.perf_counter() - t0}
    result["timings"]["total_s"] = sum(result["timings"].values())
    return result


def sts_document(result: dict) -> dict:
    """The standalone ``embed-kd/sts@1`` file content for a result of :func:`evaluate_sts`."""
    return {"schema": SCHEMA, **result, "versions": versions(),
            "created": utc_now()}


def sts_table(results: list[dict]) -> str:
    """Markdown: one row per STS result (a standalone ``sts@1`` result or an ``eval@1`` one's ``sts`` block).

    The ratio is against the result's own teacher; a result without one is compared with the first
    row (the reference, as in the plot).

    >>> a = {"model": {"spec": "minilm-l6"}, "dataset": {"name": "stsb", "split": "test"},
    ...      "metrics": {"spearman_cosine": 0.8203, "pearson_cosine": 0.8274}, "teacher": None}
    >>> b = {"model": {"spec": "runs/l3"}, "dataset": {"name": "stsb", "split": "test"},
    ...      "metrics": {"spearman_cosine": 0.7761, "pearson_cosine": 0.78}, "teacher": None}
    >>> print(sts_table([a, b]))
    | model | data | Spearman (cos) | Pearson (cos) | teacher Spearman | ratio |
    |---|---|---|---|---|---|
    | minilm-l6 | stsb/test | 0.8203 | 0.8274 | 0.8203 (first row) | 1.000× |
    | runs/l3 | stsb/test | 0.7761 | 0.7800 | 0.8203 (first row) | 0.946× |
    """
    rows = ["| model | data | Spearman (cos) | Pearson (cos) | teacher Spearman | ratio |", "|---|---|---|---|---|---|"]
    ref = results[0]["metrics"]["spearman_cosine"] if results else None
    for r in results:
        m = r["metrics"]
        t = (r.get("teacher") or {}).get("metrics")
        if t:
            t_sp, note = t["spearman_cosine"], ""
        else:
            t_sp, note = ref, " (first row)"
        ratio = f"{m['spearman_cosine'] / t_sp:.3f}×" if t_sp else "—"
        ds = r["dataset"]
        data = f"{ds['name']}/{ds['split']}" if ds.get("split") else ds["name"]
        rows.append(f"| {r['model']['spec']} | {data} | {m['spearman_cosine']:.4f} | {m['pearson_cosine']:.4f} | "
                    f"{t_sp:.4f}{note} | {ratio} |")
    return "\n".join(rows)


def evaluate_sts_specs(sts: str, split: str = "test", *, model: str | None = None, query_model: str | None = None,
                       doc_model: str | None = None, teacher: str | None = None, loaded: dict | None = None,
                       batch_size: int = 32, show_progress: bool = False) -> dict:
    """Load the STS pairs and the models named by spec, and return :func:`evaluate_sts`'s result.

    ``model`` (symmetric) or ``query_model`` (asymmetric; ``doc_model`` only named) is measured;
    the reference is ``teacher``, else an asymmetric pair's ``doc_model``. ``loaded`` maps specs to
    models already in memory (``embed-kd eval --data … --sts …`` reuses the retrieval run's).
    """
    if not model and not query_model:
        raise EmbedKDError("--sts needs a model: --model M, or --query-model STUDENT (with --doc-model TEACHER)")
    if model and query_model:
        raise EmbedKDError("pass either --model (symmetric) or --query-model/--doc-model (asymmetric), not both")
    pairs = load_sts(sts, split)
    loaded = dict(loaded or {})
    t0 = time.perf_counter()

    def get(spec):
        if spec not in loaded:
            if is_sparse_model(spec):
                loaded[spec] = load_sparse_encoder(spec)
            else:
                loaded[spec] = load_sentence_transformer(spec)
        return loaded[spec]

    spec = model or query_model
    ref = teacher or (doc_model if query_model else None)
    if ref == spec:
        ref = None
    m = get(spec)
    t = get(ref) if ref else None
    return evaluate_sts(pairs, m, teacher=t, spec=spec, teacher_spec=ref,
                        asymmetric_doc_spec=doc_model if query_model else None, batch_size=batch_size,
                        show_progress=show_progress, timings={"load_models_s": time.perf_counter() - t0})
