"""Training examples for a dense student, built from a teacher-score store and the embedding teacher.

Two example sets, each a Hugging Face ``datasets.Dataset`` the sentence-transformers trainer reads:

**Score examples** (for Margin-MSE / listwise KL), from ``embed-kd score-teacher`` output on the
**train** split. For each train query (minus the dev slice) and each of ``rounds`` rounds:

- the *positive* is a judged-relevant candidate (cycling through them round by round), or the
  teacher's top candidate when none is judged;
- ``negatives`` other candidates (judged positives excluded) are drawn from the teacher-ranked list
  with the declared ``sampling`` strategy:

  ==============  ==========================================================================
  ``hardest``     the top-N by teacher score (deterministic; rounds only change the positive)
  ``uniform``     N uniformly at random
  ``stratified``  the ranked list is cut into N equal strata and one is drawn from each, so
                  every example mixes hard, middling and easy negatives (default)
  ==============  ==========================================================================

- labels are the teacher's scores after per-query normalisation over the query's *whole*
  candidate list (``score_norm``: zscore | minmax | none, via
  :func:`embed_kd.teachers.fusion.normalize_scores`).

With ``score_documents: teacher`` a row is ``{"query": text, "label": [[doc_row, score], ...]}``
(``doc_row`` indexes the teacher's cached corpus matrix; see
:class:`embed_kd.losses.TeacherDocumentsLoss`); with ``student`` it is
``{"query", "doc_0", ..., "doc_N", "label": [score_0, ..., score_N]}`` (sentence-transformers'
multi-negative Margin-MSE / KL format).

**Alignment examples** (LEAF / EmbedDistill): ``{"text", "label": teacher embedding}`` for the corpus
documents and the train queries (dev slice excluded) — never queries of any other split — and general
text (the STSb *train* sentences, a text file), mixed by declared weights (``examples.align_texts``,
:mod:`embed_kd.training.align_mix`). Teacher
embeddings come from the shared embedding cache (:class:`embed_kd.index.EmbeddingCache`), so they
are computed once per (teacher, texts) and reused by every run and by ``eval``.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Container, Iterator, Mapping

import numpy as np

from embed_kd.data.beir import BeirDataset, doc_text
from embed_kd.errors import ArtifactError, EmbedKDError
from embed_kd.teachers.fusion import normalize_scores
from embed_kd.teachers.store import open_scores
from embed_kd.training.align_mix import mix_align, parse_align_texts

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow

    from embed_kd.teachers.store import ScoreStore

logger = logging.getLogger(__name__)


def split_dev(qids: list[str], n_dev: int, seed: int) -> tuple[list[str], list[str]]:
    """Carve ``n_dev`` queries (seeded) out of ``qids``: returns ``(train, dev)``, both in input order.

    >>> split_dev(["a", "b", "c", "d"], 1, seed=0)
    (['a', 'b', 'c'], ['d'])
    """
    if n_dev <= 0:
        return list(qids), []
    if n_dev >= len(qids):
        raise EmbedKDError(f"examples.dev_queries = {n_dev} leaves no training queries (only {len(qids)} train queries)")
    dev = set(random.Random(seed).sample(list(qids), n_dev))
    return [q for q in qids if q not in dev], [q for q in qids if q in dev]


def sample_negatives(ranked: list[str], n: int, strategy: str, rng: random.Random) -> list[str]:
    """``n`` doc ids from ``ranked`` (teacher order, best first) by ``strategy``; fewer if the list is short.

    >>> sample_negatives(list("abcdefgh"), 2, "hardest", random.Random(0))
    ['a', 'b']
    >>> [len(sample_negatives(list("abcdefgh"), k, "stratified", random.Random(0))) for k in (2, 8, 9)]
    [2, 8, 8]
    >>> sample_negatives(list("abcdefgh"), 2, "stratified", random.Random(0))[0] in "abcd"
    True
    """
    if n >= len(ranked):
        return list(ranked)
    if strategy == "hardest":
        return ranked[:n]
    if strategy == "uniform":
        picked = sorted(rng.sample(range(len(ranked)), n))
        return [ranked[i] for i in picked]
    if strategy == "stratified":
        bounds = [round(i * len(ranked) / n) for i in range(n + 1)]
        return [ranked[rng.randrange(bounds[i], bounds[i + 1])] for i in range(n)]
    raise EmbedKDError(f"unknown negative sampling strategy {strategy!r} (hardest, uniform, stratified)")


@dataclass
class ScoreExamples:
    """The score examples as one Arrow table (columns as in the module docstring) and their stats."""

    table: "pyarrow.Table"
    stats: dict = field(default_factory=dict)

    @property
    def rows(self) -> list[dict]:
        """The examples as a list of dicts (small sets, tests; training reads :meth:`dataset`)."""
        return self.table.to_pylist()

    def dataset(self):
        """A ``datasets.Dataset`` over the table (the trainer's input; no copy into Python objects).

        It gets a random fingerprint: ``datasets`` would otherwise hash the whole table (a pickled
        copy, twice the table's memory at its peak) for a fingerprint an in-memory dataset never uses.
        """
        from datasets import Dataset
        from datasets.fingerprint import generate_random_fingerprint
        from datasets.table import InMemoryTable

        return Dataset(InMemoryTable(self.table), fingerprint=generate_random_fingerprint())


@dataclass
class CandidateStream:
    """Each query's teacher-ranked candidates, streamed from a score store in store order.

    What :func:`build_score_examples` reads at corpus scale instead of a ``{qid: candidates}``
    dict: one Parquet batch and one query's candidates are in memory at a time.
    ``keep_docs`` (a ``--limit-docs`` smoke run) drops candidates outside the sliced corpus.
    """

    store: "ScoreStore"
    keep_docs: Container[str] | None = None
    column: str = "score"

    def query_ids(self) -> list[str]:
        return self.store.query_ids()

    def __iter__(self) -> Iterator[tuple[str, list[tuple[str, float, int]]]]:
        for qid, rows in self.store.iter_ranked(self.column):
            if self.keep_docs is not None:
                rows = [r for r in rows if r[0] in self.keep_docs]
            yield qid, rows


def _in_order(candidates, qids: list[str]) -> Iterator[tuple[str, list | None]]:
    """``(qid, ranked candidates or None)`` for each of ``qids`` in that order.

    A mapping is looked up; a :class:`CandidateStream` is read once, in store order — a query that
    comes before its turn is held until then (none is, when the store follows the split order, as
    ``score-teacher`` writes it), and queries the store lacks are known up front (its query ids).
    """
    if isinstance(candidates, Mapping):
        for q in qids:
            yield q, candidates.get(q)
        return
    want = set(qids)
    present = want & set(candidates.query_ids())
    stream = iter(candidates)
    held: dict[str, list] = {}
    for q in qids:
        if q not in present:
            yield q, None
            continue
        while q not in held:
            sq, rows = next(stream)  # q is in the store: it comes
            if sq in want:
                held[sq] = rows
        yield q, held.pop(q)


#: example rows converted to Arrow at a time (bounds the Python objects alive while building)
_FLUSH_ROWS = 4096


def build_score_examples(candidates: Mapping[str, list[tuple[str, float, int]]] | CandidateStream,
                         dataset: BeirDataset, train_qids: list[str], *, negatives: int, sampling: str,
                         rounds: int, score_norm: str, documents: str, doc_row: dict[str, int] | None, seed: int,
                         min_candidates: int = 2) -> ScoreExamples:
    """Score examples (see the module docstring) for ``train_qids`` from ``store.by_query()`` or a
    :class:`CandidateStream` over the store (same examples, bounded memory)."""
    import pyarrow as pa

    rng = random.Random(seed)
    rows: list[dict] = []
    tables: list = []
    n_rows = 0
    skipped_short, skipped_missing, no_positive = 0, 0, 0
    for qid, cands in _in_order(candidates, train_qids):
        if cands is None:
            skipped_missing += 1
            continue
        if len(cands) < max(2, min_candidates):
            skipped_short += 1
            continue
        ids = [d for d, _, _ in cands]
        unknown = [d for d in ids if d not in dataset.corpus]
        if unknown:
            raise EmbedKDError(f"score store: query {qid!r} has candidate {unknown[0]!r} that is not in the corpus "
                               "(scores made on another corpus?)")
        norm = normalize_scores([s for _, s, _ in cands], score_norm)
        score = dict(zip(ids, norm))
        positives = [d for d, _, lab in cands if lab > 0] or [ids[0]]
        if not any(lab > 0 for _, _, lab in cands):
            no_positive += 1
        pos_set = {d for d, _, lab in cands if lab > 0}
        pool = [d for d in ids if d not in pos_set and d != positives[0]]
        for r in range(rounds):
            pos = positives[r % len(positives)]
            negs = sample_negatives([d for d in pool if d != pos], negatives, sampling, rng)
            if len(negs) < negatives:
                # pad by repeating (keeps a fixed column count); only for very short lists
                negs = (negs * (negatives // max(1, len(negs)) + 1))[:negatives] if negs else []
            if not negs:
                continue
            docs = [pos, *negs]
            if documents == "teacher":
                rows.append({"query": dataset.queries[qid],
                             "label": [[float(doc_row[d]), float(score[d])] for d in docs]})
            else:
                row = {"query": dataset.queries[qid]}
                row.update({f"doc_{i}": doc_text(dataset.corpus[d]) for i, d in enumerate(docs)})
                row["label"] = [float(score[d]) for d in docs]
                rows.append(row)
        if len(rows) >= _FLUSH_ROWS:
            tables.append(pa.Table.from_pylist(rows))
            n_rows += len(rows)
            rows = []
    if rows:
        tables.append(pa.Table.from_pylist(rows))
        n_rows += len(rows)
    if not n_rows:
        raise EmbedKDError("score store: no training examples could be built (no train query has enough "
                           "scored candidates; check that the store was made on the train split)")
    stats = {"queries": len(train_qids) - skipped_short - skipped_missing, "examples": n_rows,
             "skipped_short": skipped_short, "skipped_not_in_store": skipped_missing,
             "queries_without_judged_positive": no_positive, "negatives": negatives, "sampling": sampling,
             "rounds": rounds, "score_norm": score_norm, "documents": documents}
    logger.info("score examples: %d rows from %d queries (%s negatives x %d, %s)", n_rows, stats["queries"],
                negatives, rounds, sampling)
    return ScoreExamples(pa.concat_tables(tables), stats)


def build_align_examples(dataset: BeirDataset, doc_emb: np.ndarray, doc_ids: list[str], train_qids: list[str],
                         query_emb: np.ndarray | None, *, texts: list, max_texts: int | None, seed: int,
                         general: dict[str, tuple[list[str], np.ndarray]] | None = None
                         ) -> tuple[list[str], np.ndarray, dict]:
    """Alignment texts and their teacher embeddings from the ``texts`` sources (``examples.align_texts``:
    corpus documents, train queries, and the ``general`` sources' ``(texts, teacher embeddings)``), mixed by
    their weights (:mod:`embed_kd.training.align_mix`)."""
    parts = []
    for src in parse_align_texts(texts):
        if src.name == "corpus":
            parts.append((src, [doc_text(dataset.corpus[d]) for d in doc_ids], doc_emb))
        elif src.name == "queries":
            if query_emb is not None:
                parts.append((src, [dataset.queries[q] for q in train_qids], query_emb))
        elif general is None or src.name not in general:
            raise EmbedKDError(f"alignment source {src.name!r}: its teacher embeddings were not computed")
        else:
            parts.append((src, *general[src.name]))
    out_texts, emb, mix = mix_align(parts, max_texts=max_texts, seed=seed)
    sizes = {st["source"]: st["available"] for st in mix["sources"]}
    return out_texts, emb, {"texts": len(out_texts), "corpus_docs": sizes.get("corpus", 0),
                            "train_queries": sizes.get("queries", 0), "max_texts": max_texts, **mix}


def load_training_scores(cfg, dataset, full_fps: dict, sliced: bool, *, stream: bool = False):
    """Open ``cfg.scores`` and check it was made on this dataset and split.

    Returns ``(store, candidates)``: ``{qid: ranked candidates}`` in memory, or with ``stream`` a
    :class:`CandidateStream` that reads them from the store when consumed (corpus scale). With
    ``sliced`` (a ``--limit-*`` smoke run) the store is checked against the full dataset's
    fingerprints ``full_fps`` and candidates outside the slice are dropped.
    """
    store = open_scores(cfg.scores)
    split_in_store = store.manifest["dataset"].get("split")
    if split_in_store != cfg.split:
        raise ArtifactError(f"{cfg.scores}: scores were made on split {split_in_store!r}, training uses {cfg.split!r}")
    if sliced:
        ds = store.manifest["dataset"]
        bad = [k for k, v in full_fps.items() if ds.get(k) != v]
        if bad:
            raise ArtifactError(f"{cfg.scores}: scores were made on another dataset ({', '.join(bad)} differ)")
    else:
        store.check_dataset(dataset)
    if stream:
        return store, CandidateStream(store, keep_docs=dataset.corpus if sliced else None)
    by_query = store.by_query()
    if sliced:  # smoke run: keep the candidates inside the sliced corpus
        by_query = {q: [r for r in rows if r[0] in dataset.corpus] for q, rows in by_query.items()}
    return store, by_query
