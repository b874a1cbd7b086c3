"""Export a teacher-score store to the formats distillation code consumes.

**Margin-MSE triples TSV** (Hofstätter et al., 2020, "Improving Efficient Neural Ranking Models
with Cross-Architecture Knowledge Distillation" — their published teacher files), no header::

    pos_score <TAB> neg_score <TAB> query_id <TAB> pos_doc_id <TAB> neg_doc_id

one line per (query, positive, negative): positives are the candidates with ``label > 0``,
negatives those with ``label == 0``, highest teacher score first (``negatives_per_positive`` keeps
the N hardest). Scores come from one store column (``score`` by default), written with 9
significant digits (a float32 reads back exactly: ``score-teacher import`` of the file gives the same scores).

**Hugging Face datasets** (``datasets.Dataset.save_to_disk`` folders, plus ``embed_kd_export.json``
— schema ``embed-kd/score-export@1``: ``kind``, ``column``, ``store``, ``config_fingerprint``,
``rows`` — which marks the folder as embed-kd's for ``--overwrite``), with texts so that
sentence-transformers losses consume them directly:

==============  ===============================================  =====================================
kind            columns                                           loss
==============  ===============================================  =====================================
``margin-mse``  query, positive, negative, label (= s⁺ − s⁻)      ``MarginMSELoss`` (bi- / cross-encoder)
``listwise``    query, positive, negative_1..n, label [s⁺, s⁻…]   ``DistillKLDivLoss``
``scores``      the store's rows as they are (ids, no texts)      your own pipeline
==============  ===============================================  =====================================

Queries without a positive among their candidates, or without negatives, produce no example.

>>> rows = [("d1", 3.0, 1), ("d2", 1.0, 0), ("d3", 2.0, 0)]
>>> list(margin_triples("q", rows))
[(3.0, 2.0, 'q', 'd1', 'd3'), (3.0, 1.0, 'q', 'd1', 'd2')]
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Sequence

from embed_kd.data import load_beir, resolve_dataset
from embed_kd.data.fingerprint import fingerprint_corpus
from embed_kd.data.inputs import load_inputs
from embed_kd.errors import ArtifactError, EmbedKDError
from embed_kd.io import Artifact, atomic_dir, atomic_open, atomic_write_json, claim_output, refuse_existing

logger = logging.getLogger(__name__)


def _is_triples_tsv(path: Path) -> bool:
    """An earlier margin-MSE export: its first line is ``pos_score neg_score qid pos_id neg_id``."""
    with Path(path).open(encoding="utf-8") as fh:
        first = fh.readline().rstrip("\n").split("\t")
    if len(first) != 5:
        return False
    float(first[0]), float(first[1])  # ValueError: not one
    return True


#: the ownership rule (:func:`embed_kd.io.claim_output`) for the two export kinds
TSV_ARTIFACT = Artifact("embed-kd/margin-mse-tsv", None, "margin-MSE triples export", recognise=_is_triples_tsv)
HF_ARTIFACT = Artifact("embed-kd/score-export@1", "embed_kd_export.json", "score-store dataset export")


def margin_triples(qid: str, rows: Sequence[tuple[str, float, int]], negatives_per_positive: int | None = None
                   ) -> Iterator[tuple[float, float, str, str, str]]:
    """``(pos_score, neg_score, qid, pos_id, neg_id)`` for one query's ``(doc_id, score, label)`` rows."""
    pos = sorted((r for r in rows if r[2] > 0), key=lambda r: (-r[1], r[0]))
    neg = sorted((r for r in rows if r[2] <= 0), key=lambda r: (-r[1], r[0]))
    if negatives_per_positive:
        neg = neg[:negatives_per_positive]
    for p in pos:
        for n in neg:
            yield p[1], n[1], qid, p[0], n[0]


def export_margin_mse_tsv(store, path, *, column: str = "score", negatives_per_positive: int | None = None,
                          overwrite: bool = False) -> int:
    """Write the triples TSV atomically, streaming the store (one query at a time in memory); returns
    the number of lines."""
    refuse_existing(path, overwrite, artifact=TSV_ARTIFACT)
    n = 0
    with atomic_open(path, overwrite=overwrite) as fh:
        for qid, rows in store.iter_queries(column):
            lines = [f"{ps:.9g}\t{ns:.9g}\t{q}\t{pid}\t{nid}\n"
                     for ps, ns, q, pid, nid in margin_triples(qid, rows, negatives_per_positive)]
            fh.write("".join(lines))
            n += len(lines)
        if not n:  # raising inside the block removes the temporary file
            raise EmbedKDError(f"{store.path}: no (positive, negative) pair in the store; nothing to export")
    return n


def _texts(store, data: str | None):
    ds_meta = store.manifest["dataset"]
    src = ds_meta.get("sources") or {}
    texts = getattr(store, "texts_dir", None)
    if data is None and texts is not None:  # an import that stored its texts (flag-jsonl)
        folder = texts
        ds = load_inputs(corpus=texts / "corpus.jsonl", queries=texts / "queries.jsonl", split=ds_meta["split"])
    elif data is None and (src.get("queries") or src.get("corpus")):  # made from --queries / --corpus files
        folder = src.get("corpus") or src.get("data")
        ds = load_inputs(data=src.get("data"), split=ds_meta["split"], corpus=src.get("corpus"),
                         queries=src.get("queries"), allow_missing_ids=True)
    else:
        folder = resolve_dataset(data or ds_meta.get("path") or ds_meta["name"])
        ds = load_beir(folder, ds_meta["split"], allow_missing_ids=True)
    if fingerprint_corpus(ds.corpus) != ds_meta["corpus_fingerprint"]:
        raise ArtifactError(f"{store.path}: scores were made on another corpus than {folder} "
                            "(corpus fingerprints differ); pass --data with the right dataset")
    return ds


def examples(store, dataset, *, kind: str, column: str = "score", negatives: int | None = None) -> dict[str, list]:
    """Columns of the ``margin-mse`` or ``listwise`` dataset (see the module docstring)."""
    cols: dict[str, list] = {"query": [], "positive": []}
    n_neg = negatives or 8
    if kind == "margin-mse":
        cols.update(negative=[], label=[])
    elif kind == "listwise":
        cols.update({f"negative_{i + 1}": [] for i in range(n_neg)}, label=[])
    else:
        raise EmbedKDError(f"unknown export kind {kind!r}")
    for qid, rows in store.iter_queries(column):
        if qid not in dataset.queries:
            raise ArtifactError(f"{store.path}: query '{qid}' is not in {dataset.path}")
        q_text = dataset.queries[qid]
        if kind == "margin-mse":
            for ps, ns, _, pid, nid in margin_triples(qid, rows, negatives):
                cols["query"].append(q_text)
                cols["positive"].append(dataset.doc_text(pid))
                cols["negative"].append(dataset.doc_text(nid))
                cols["label"].append(float(ps - ns))
            continue
        pos = sorted((r for r in rows if r[2] > 0), key=lambda r: (-r[1], r[0]))
        neg = sorted((r for r in rows if r[2] <= 0), key=lambda r: (-r[1], r[0]))[:n_neg]
        if len(neg) < n_neg:
            continue  # a fixed number of columns: queries with fewer negatives are skipped
        for p in pos:
            cols["query"].append(q_text)
            cols["positive"].append(dataset.doc_text(p[0]))
            for i, n in enumerate(neg):
                cols[f"negative_{i + 1}"].append(dataset.doc_text(n[0]))
            cols["label"].append([float(p[1])] + [float(n[1]) for n in neg])
    return cols


def export_hf(store, path, *, kind: str, column: str = "score", negatives: int | None = None,
              data: str | None = None, overwrite: bool = False) -> int:
    """Write a ``datasets`` folder (``load_from_disk``-able) atomically; returns its number of rows."""
    import datasets

    claim_output(path, HF_ARTIFACT, overwrite=overwrite)  # before the work; only an earlier export is replaced
    store._check_column(column)
    if kind == "scores":
        ds = datasets.Dataset(store.table())
    else:
        cols = examples(store, _texts(store, data), kind=kind, column=column, negatives=negatives)
        if not cols["query"]:
            raise EmbedKDError(f"{store.path}: no training example could be made (no positive with enough negatives)")
        ds = datasets.Dataset.from_dict(cols)
    with atomic_dir(Path(path), overwrite=overwrite, artifact=HF_ARTIFACT) as tmp:
        ds.save_to_disk(str(tmp))
        atomic_write_json(tmp / HF_ARTIFACT.marker, {"schema": HF_ARTIFACT.schema, "kind": kind, "column": column,
                                                     "store": str(store.path),
                                                     "config_fingerprint": store.manifest.get("config_fingerprint"),
                                                     "rows": len(ds)})
    logger.info("wrote %d %s examples to %s", len(ds), kind, path)
    return len(ds)
