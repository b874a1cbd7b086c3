"""Load and validate a BEIR-format dataset folder.

Layout (Thakur et al., 2021)::

    DATASET/
      corpus.jsonl        one JSON object a line: {"_id": str, "title": str, "text": str, ...}
      queries.jsonl       one JSON object a line: {"_id": str, "text": str, ...}
      qrels/<split>.tsv   header line, then  query-id <TAB> corpus-id <TAB> score (integer)

``corpus.jsonl.gz`` / ``queries.jsonl.gz`` (as BEIR's own downloads ship some datasets) are read
the same way (:mod:`embed_kd.data.lines`; a truncated archive is an error naming file and line).
Data without judgments (a query log, a plain corpus) loads through :mod:`embed_kd.data.inputs`.

Rules enforced here (each violation is a :class:`~embed_kd.errors.DataError` naming file and line):

- every line is a JSON object with a string ``_id`` and the text fields above (``title`` may be
  missing or null: it is then ``""``); ids are unique within a file;
- a document needs a non-empty title or text, a query a non-empty text;
- a qrels row has exactly three tab-separated fields and an integer score;
- every query and document id a qrels file names exists in ``queries.jsonl`` / ``corpus.jsonl``
  (``allow_missing_ids=True`` drops such rows instead and counts them in ``dropped_qrels``);
- a (query-id, corpus-id) pair judged twice must have the same score both times;
- files are UTF-8; a UTF-8 byte-order mark at the start is skipped, a UTF-16/32 file (its BOM) is
  refused with a message saying so.

Only the queries that have judgments in the split are kept, as BEIR does.

>>> import tempfile, pathlib, json
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "title": "", "text": "cats"}) + "\\n")
>>> _ = (d / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "cat?"}) + "\\n")
>>> (d / "qrels").mkdir()
>>> _ = (d / "qrels" / "test.tsv").write_text("query-id\\tcorpus-id\\tscore\\nq1\\td1\\t1\\n")
>>> ds = load_beir(d, "test")
>>> (len(ds.corpus), len(ds.queries), ds.qrels)
(1, 1, {'q1': {'d1': 1}})
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from embed_kd.data.lines import iter_json_objects, iter_lines
from embed_kd.errors import DataError

logger = logging.getLogger(__name__)


@dataclass
class BeirDataset:
    """A BEIR split in memory: ``corpus[id] = {"title", "text"}``, ``queries[id] = text``,
    ``qrels[qid][doc_id] = relevance``."""

    name: str
    path: Path
    split: str
    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    dropped_qrels: int = 0
    notes: list[str] = field(default_factory=list)
    #: where the parts came from when not one BEIR folder: {"data", "corpus", "queries"} (embed_kd.data.inputs)
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def judged(self) -> bool:
        """Whether the queries come with relevance judgments (a BEIR split); false for a query log."""
        return bool(self.qrels)

    def doc_text(self, doc_id: str) -> str:
        """The text a model encodes for a document: ``title + " " + text`` (BEIR's convention)."""
        doc = self.corpus[doc_id]
        return doc_text(doc)

    def sliced(self, max_queries: int | None = None, max_docs: int | None = None) -> "BeirDataset":
        """A smaller copy for smoke runs: the first ``max_queries`` judged queries (in qrels order)
        and a corpus holding every document they judge plus the first documents of the corpus up
        to ``max_docs`` in all. Deterministic: the same arguments give the same slice."""
        order = list(self.qrels) if self.qrels else list(self.queries)  # unjudged: file order
        qids = order[: max_queries] if max_queries else order
        qrels = {q: self.qrels[q] for q in qids if q in self.qrels}
        if max_docs is None:
            corpus = self.corpus
        else:
            judged = {d for q in qids for d in qrels[q]}
            keep = [d for d in self.corpus if d in judged]
            for d in self.corpus:
                if len(keep) >= max(max_docs, len(judged)):
                    break
                if d not in judged:
                    keep.append(d)
            keep_set = set(keep)
            corpus = {d: v for d, v in self.corpus.items() if d in keep_set}
        notes = self.notes + [f"sliced: max_queries={max_queries}, max_docs={max_docs}"]
        return BeirDataset(
            self.name, self.path, self.split, corpus, {q: self.queries[q] for q in qids}, qrels,
            self.dropped_qrels, notes, dict(self.sources),
        )


def doc_text(doc: dict[str, str]) -> str:
    title, text = doc.get("title") or "", doc.get("text") or ""
    return f"{title} {text}".strip() if title else text


def corpus_path(folder: str | Path) -> Path:
    """``corpus.jsonl`` of a BEIR folder, or ``corpus.jsonl.gz`` when only that exists."""
    return _plain_or_gz(Path(folder) / "corpus.jsonl")


def queries_path(folder: str | Path) -> Path:
    """``queries.jsonl`` of a BEIR folder, or ``queries.jsonl.gz`` when only that exists."""
    return _plain_or_gz(Path(folder) / "queries.jsonl")


def _plain_or_gz(p: Path) -> Path:
    gz = p.with_name(p.name + ".gz")
    return gz if not p.is_file() and gz.is_file() else p


def float_id_hint(missing, known, file: str) -> str:
    """A hint when missing ids are there as JSON floats (``4983`` judged, ``"_id": 4983.0`` in ``file``):
    ids are compared as text, and a float id reads as ``'4983.0'``.

    >>> print(float_id_hint(["4983"], {"4983.0": {}}, "corpus.jsonl"))
     — corpus.jsonl has '4983.0': its _id is written as a JSON float (4983.0), read as the text '4983.0'; write ids as strings ("_id": "4983")
    """
    for m in list(missing)[:1000]:
        if f"{m}.0" in known:
            return (f" — {file} has '{m}.0': its _id is written as a JSON float ({m}.0), read as the text '{m}.0'; "
                    f'write ids as strings ("_id": "{m}")')
    return ""


def _string_field(path: Path, lineno: int, obj: dict, name: str, *, required: bool) -> str:
    value = obj.get(name)
    if value is None:
        if required:
            raise DataError(f"{path}:{lineno}: missing field '{name}'")
        return ""
    if isinstance(value, (int, float)) and name == "_id" and not isinstance(value, bool):
        return str(value)  # numeric ids are common in exported corpora; BEIR reads them as text
    if not isinstance(value, str):
        raise DataError(f"{path}:{lineno}: field '{name}' must be a string, got {type(value).__name__}")
    return value


def add_document(corpus: dict[str, dict[str, str]], where: str, doc_id: str, title: str, text: str) -> None:
    """Check one corpus row and add it to ``corpus``: the rule of every corpus reader (BEIR
    ``corpus.jsonl`` here, ``--corpus`` files in :mod:`embed_kd.data.inputs`). ``where`` names the
    row (``file:line``, ``source: row N``) in the :class:`~embed_kd.errors.DataError`.

    >>> c = {}
    >>> add_document(c, "c.jsonl:1", "d1", "", "cats purr"); c
    {'d1': {'title': '', 'text': 'cats purr'}}
    >>> add_document(c, "c.jsonl:2", "d1", "Dogs", "bark")
    Traceback (most recent call last):
    ...
    embed_kd.errors.DataError: c.jsonl:2: duplicate document id 'd1'
    """
    if not doc_id:
        raise DataError(f"{where}: empty document id")
    if doc_id in corpus:
        raise DataError(f"{where}: duplicate document id '{doc_id}'")
    if not (title.strip() or text.strip()):
        raise DataError(f"{where}: document '{doc_id}' has an empty title and text")
    corpus[doc_id] = {"title": title, "text": text}


def add_query(queries: dict[str, str], where: str, qid: str, text: str) -> None:
    """Check one query row and add it to ``queries`` (as :func:`add_document` does for documents).

    >>> q = {}
    >>> add_query(q, "q.tsv:1", "q1", "what is a cat"); q
    {'q1': 'what is a cat'}
    >>> add_query(q, "q.tsv:2", "q2", "  ")
    Traceback (most recent call last):
    ...
    embed_kd.errors.DataError: q.tsv:2: query 'q2' has an empty text
    """
    if not qid:
        raise DataError(f"{where}: empty query id")
    if qid in queries:
        raise DataError(f"{where}: duplicate query id '{qid}'")
    if not text.strip():
        raise DataError(f"{where}: query '{qid}' has an empty text")
    queries[qid] = text


def load_corpus(path: str | Path) -> dict[str, dict[str, str]]:
    """Read ``corpus.jsonl`` into ``{doc_id: {"title": str, "text": str}}`` (file order kept)."""
    path = Path(path)
    corpus: dict[str, dict[str, str]] = {}
    for lineno, obj in iter_json_objects(path):
        add_document(corpus, f"{path}:{lineno}", _string_field(path, lineno, obj, "_id", required=True),
                     _string_field(path, lineno, obj, "title", required=False),
                     _string_field(path, lineno, obj, "text", required=True))
    if not corpus:
        raise DataError(f"{path}: no documents")
    return corpus


def load_queries(path: str | Path) -> dict[str, str]:
    """Read ``queries.jsonl`` into ``{query_id: text}`` (file order kept)."""
    path = Path(path)
    queries: dict[str, str] = {}
    for lineno, obj in iter_json_objects(path):
        add_query(queries, f"{path}:{lineno}", _string_field(path, lineno, obj, "_id", required=True),
                  _string_field(path, lineno, obj, "text", required=True))
    if not queries:
        raise DataError(f"{path}: no queries")
    return queries


def load_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Read a BEIR qrels TSV (header line, then ``query-id corpus-id score``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    qrels: dict[str, dict[str, int]] = {}
    for lineno, line in iter_lines(path):
        parts = line.split("\t")
        if lineno == 1 and parts[0].strip().lower() in {"query-id", "query_id", "qid"}:
            continue
        if len(parts) != 3:
            raise DataError(
                f"{path}:{lineno}: expected 3 tab-separated fields (query-id, corpus-id, score), "
                f"got {len(parts)}"
            )
        qid, doc_id, score = (p.strip() for p in parts)
        if not qid or not doc_id:
            raise DataError(f"{path}:{lineno}: empty query-id or corpus-id")
        try:
            rel = int(score)
        except ValueError:
            raise DataError(f"{path}:{lineno}: score must be an integer, got {score!r}") from None
        docs = qrels.setdefault(qid, {})
        if doc_id in docs and docs[doc_id] != rel:
            raise DataError(f"{path}:{lineno}: ({qid}, {doc_id}) is judged twice with different scores "
                            f"({docs[doc_id]} and {rel})")
        docs[doc_id] = rel
    if not qrels:
        raise DataError(f"{path}: no judgments")
    return qrels


def available_splits(folder: str | Path) -> list[str]:
    qdir = Path(folder) / "qrels"
    return sorted(p.stem for p in qdir.glob("*.tsv")) if qdir.is_dir() else []


def load_beir(
    folder: str | Path,
    split: str = "test",
    *,
    name: str | None = None,
    allow_missing_ids: bool = False,
    corpus: dict[str, dict[str, str]] | None = None,
) -> BeirDataset:
    """Load one split of a BEIR folder and check that its qrels point at known ids.

    ``corpus`` replaces the folder's own corpus (``--data D --corpus FILE``); the qrels are then
    checked against it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        splits = available_splits(folder)
        raise DataError(
            f"{qrels_path}: split '{split}' not found (available: {', '.join(splits) or 'none'})"
        )
    corpus = load_corpus(corpus_path(folder)) if corpus is None else corpus
    queries = load_queries(queries_path(folder))
    qrels = load_qrels(qrels_path)

    dropped = 0
    missing_q = [q for q in qrels if q not in queries]
    missing_d = sorted({d for q in qrels for d in qrels[q] if d not in corpus})
    if missing_q or missing_d:
        what = []
        if missing_q:
            what.append(f"{len(missing_q)} query id(s) not in queries.jsonl (e.g. '{missing_q[0]}')"
                        + float_id_hint(missing_q, queries, "queries.jsonl"))
        if missing_d:
            what.append(f"{len(missing_d)} document id(s) not in corpus.jsonl (e.g. '{missing_d[0]}')"
                        + float_id_hint(missing_d, corpus, "corpus.jsonl"))
        if not allow_missing_ids:
            raise DataError(f"{qrels_path}: " + "; ".join(what) + " (pass --allow-missing-ids to drop them)")
        missing_d_set = set(missing_d)
        cleaned: dict[str, dict[str, int]] = {}
        for q, docs in qrels.items():
            if q not in queries:
                dropped += len(docs)
                continue
            kept = {d: r for d, r in docs.items() if d not in missing_d_set}
            dropped += len(docs) - len(kept)
            if kept:
                cleaned[q] = kept
        qrels = cleaned
        logger.warning("%s: dropped %d qrels row(s): %s", qrels_path, dropped, "; ".join(what))
        if not qrels:
            raise DataError(f"{qrels_path}: no judgments left after dropping unknown ids")

    split_queries = {q: queries[q] for q in qrels}
    return BeirDataset(name or folder.name, folder, split, corpus, split_queries, qrels, dropped)
