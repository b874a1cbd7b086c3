"""The data a user has, beyond BEIR-with-qrels: query logs without judgments, plain corpora, HF datasets.

``--queries SPEC`` and ``--corpus SPEC`` (and a training config's ``queries:`` / ``corpus:`` /
``align_texts:``) accept:

==========================  ===================================================================
``*.jsonl`` (``.json``)     one JSON object a line: queries ``{"_id", "text"}``, documents
                            ``{"_id", "title"?, "text"}`` (``id`` is accepted for ``_id``)
``*.tsv``                   queries ``id<TAB>text``; documents ``id<TAB>text`` or
                            ``id<TAB>title<TAB>text``; a first line whose first field is a
                            header word (``id``, ``_id``, ``query-id``, ``qid``, ``doc_id``,
                            ``pid``, ...) is skipped
anything else (``*.txt``)   one text a line, ids generated from the line number: ``L<line>``
                            (blank lines are skipped, so ids stay the same when they are added)
``hf:NAME[:CONFIG][:SPLIT]``, a ``datasets.save_to_disk`` folder, ``*.parquet``
                            columns ``id`` / ``text`` / ``title`` found by name (``_id``, ``id``,
                            ``query_id``, ``doc_id``, ... / ``text``, ``query``, ``passage``, ...)
                            or declared: ``SPEC#id=COLUMN,text=COLUMN[,title=COLUMN]``
                            (:mod:`embed_kd.data.tables`)
==========================  ===================================================================

Any of the text files may be gzip-compressed (``.gz``); files are UTF-8. Ids are unique within a
file, texts are not empty; a violation is one :class:`~embed_kd.errors.DataError` naming file and line.

:func:`load_inputs` combines them with ``--data`` into the :class:`~embed_kd.data.beir.BeirDataset`
every stage reads:

==============================  ================================================================
``--data D``                    BEIR folder ``D``, split ``--split`` (qrels required), as before
``--data D --queries Q``        ``D``'s corpus, the queries of ``Q``, **no judgments** (qrels
                                empty: ``dataset.judged`` is false)
``--corpus C --queries Q``      both from files, no judgments
``--data D --corpus C``         ``D``'s queries and qrels of ``--split`` against the corpus ``C``
``--corpus C``                  a corpus and no queries (alignment-only training, indexing)
==============================  ================================================================

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "log.txt").write_text("what is a cat\\n\\nwhy do dogs bark\\n")
>>> read_queries(d / "log.txt")
{'L1': 'what is a cat', 'L3': 'why do dogs bark'}
>>> _ = (d / "docs.tsv").write_text("id\\ttitle\\ttext\\nd1\\tCats\\tcats purr\\n")
>>> read_corpus(d / "docs.tsv")
{'d1': {'title': 'Cats', 'text': 'cats purr'}}
>>> ds = load_inputs(corpus=d / "docs.tsv", queries=d / "log.txt")
>>> ds.judged, len(ds.corpus), len(ds.queries), ds.qrels
(False, 1, 2, {})
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from embed_kd.data.beir import BeirDataset, add_document, add_query, corpus_path, load_beir, load_corpus
from embed_kd.data.lines import base_suffix, iter_json_objects, iter_lines
from embed_kd.data.resolve import resolve_dataset
from embed_kd.data.tables import is_table_source, iter_batches, parse_source, resolve_columns
from embed_kd.errors import DataError

logger = logging.getLogger(__name__)

_HEADER_WORDS = {"id", "_id", "query-id", "query_id", "qid", "doc_id", "docid", "doc-id", "corpus-id", "corpus_id",
                 "pid", "passage_id"}
_ID_COLUMNS = ("_id", "id", "query_id", "qid", "doc_id", "docid", "corpus_id", "passage_id", "pid")
_TEXT_COLUMNS = ("text", "query", "passage", "contents", "document", "sentence")


def input_kind(spec: str | os.PathLike) -> str:
    """``jsonl``, ``tsv``, ``text`` or ``table`` (an HF dataset / Parquet source).

    >>> input_kind("q.jsonl.gz"), input_kind("q.tsv"), input_kind("log.txt"), input_kind("hf:org/q")
    ('jsonl', 'tsv', 'text', 'table')
    """
    text = str(spec)
    if is_table_source(text):
        return "table"
    suffix = base_suffix(text)
    return {".jsonl": "jsonl", ".json": "jsonl", ".tsv": "tsv"}.get(suffix, "text")


def _field(path, lineno, obj: dict, names: tuple[str, ...], what: str, *, required: bool = True) -> str:
    for name in names:
        if name in obj and obj[name] is not None:
            value = obj[name]
            if isinstance(value, (int, float)) and not isinstance(value, bool) and what == "id":
                return str(value)
            if not isinstance(value, str):
                raise DataError(f"{path}:{lineno}: field '{name}' must be a string, got {type(value).__name__}")
            return value
    if required:
        raise DataError(f"{path}:{lineno}: missing field '{names[0]}'")
    return ""


def _records(spec, *, want_title: bool):
    """``(where, id, title, text)`` of every record of a queries/corpus source (file order)."""
    kind = input_kind(spec)
    if kind == "table":
        base, declared = parse_source(str(spec))
        roles = {"id": _ID_COLUMNS, "text": _TEXT_COLUMNS, "title": ("title",)}
        cols = None
        row = 0
        for batch in iter_batches(str(spec)):
            if cols is None:
                cols = resolve_columns(base, batch.schema.names, declared, roles, optional=("title",))
            ids = batch.column(cols["id"]).to_pylist()
            texts = batch.column(cols["text"]).to_pylist()
            titles = batch.column(cols["title"]).to_pylist() if want_title and cols["title"] else [None] * len(ids)
            for i, t, ti in zip(ids, texts, titles):
                row += 1
                where = f"{base}: row {row}"
                if i is None or t is None:
                    raise DataError(f"{where}: null id or text")
                yield where, str(i), "" if ti is None else str(ti), str(t)
        return
    path = Path(spec)
    if kind == "jsonl":
        for lineno, obj in iter_json_objects(path):
            yield (f"{path}:{lineno}", _field(path, lineno, obj, ("_id", "id"), "id"),
                   _field(path, lineno, obj, ("title",), "title", required=False) if want_title else "",
                   _field(path, lineno, obj, ("text",), "text"))
    elif kind == "tsv":
        allowed = (2, 3) if want_title else (2,)
        for lineno, line in iter_lines(path):
            parts = line.split("\t")
            if lineno == 1 and parts[0].strip().lower() in _HEADER_WORDS:
                continue
            if len(parts) not in allowed:
                shape = "id<TAB>text or id<TAB>title<TAB>text" if want_title else "id<TAB>text"
                raise DataError(f"{path}:{lineno}: expected {shape}, got {len(parts)} tab-separated field(s)")
            title = parts[1] if len(parts) == 3 else ""
            yield f"{path}:{lineno}", parts[0].strip(), title, parts[-1]
    else:
        for lineno, line in iter_lines(path):
            yield f"{path}:{lineno}", f"L{lineno}", "", line.strip()


def read_queries(spec: str | os.PathLike) -> dict[str, str]:
    """``{query_id: text}`` of a queries source (see the module docstring), file order kept."""
    queries: dict[str, str] = {}
    for where, qid, _, text in _records(spec, want_title=False):
        add_query(queries, where, qid, text)
    if not queries:
        raise DataError(f"{spec}: no queries")
    return queries


def read_corpus(spec: str | os.PathLike) -> dict[str, dict[str, str]]:
    """``{doc_id: {"title", "text"}}`` of a corpus source (see the module docstring), file order kept."""
    corpus: dict[str, dict[str, str]] = {}
    for where, doc_id, title, text in _records(spec, want_title=True):
        add_document(corpus, where, doc_id, title, text)
    if not corpus:
        raise DataError(f"{spec}: no documents")
    return corpus


def _name(spec) -> str:
    base = parse_source(str(spec))[0]
    if base.startswith("hf:"):
        return base.removeprefix("hf:").split(":")[0].replace("/", "--")
    name = Path(base).name
    for ext in (".gz", ".jsonl", ".json", ".tsv", ".txt", ".parquet"):
        name = name.removesuffix(ext)
    return name or "data"


def load_inputs(*, data: str | os.PathLike | None = None, split: str = "train", corpus: str | os.PathLike | None = None,
                queries: str | os.PathLike | None = None, allow_missing_ids: bool = False) -> BeirDataset:
    """The dataset a command works on, from ``--data`` / ``--corpus`` / ``--queries`` (table above)."""
    if data is None and corpus is None:
        raise DataError("no corpus: pass --data (a BEIR folder or name) or --corpus FILE")
    folder = resolve_dataset(data) if data is not None else None
    sources = {k: str(v) for k, v in (("data", folder), ("corpus", corpus), ("queries", queries)) if v is not None}
    if queries is None and folder is not None:
        ds = load_beir(folder, split, name=folder.name, allow_missing_ids=allow_missing_ids,
                       corpus=read_corpus(corpus) if corpus is not None else None)
        ds.sources = sources
        if corpus is not None:
            ds.notes.append(f"corpus: {corpus}")
        return ds
    if folder is not None and corpus is None:
        docs = load_corpus(corpus_path(folder))
    else:
        docs = read_corpus(corpus)
    qs = read_queries(queries) if queries is not None else {}
    name = folder.name if folder is not None else _name(corpus)
    path = folder if folder is not None else Path(str(corpus)).parent
    notes = [f"queries: {queries} (no judgments)"] if queries is not None else ["no queries"]
    if corpus is not None:
        notes.append(f"corpus: {corpus}")
    ds = BeirDataset(name, Path(path), split, docs, qs, {}, 0, notes)
    ds.sources = sources
    return ds
