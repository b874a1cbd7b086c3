r"""``embed-kd score-teacher import``: teacher scores someone already computed, into a score store.

One reader per format; each turns its file(s) into rows of one of two kinds, and
:func:`import_scores` writes them into an ordinary score store (:mod:`embed_kd.teachers.store`,
same schema, same checks) that ``train`` reads like one written by ``score-teacher run``:

- **absolute** rows ``(query_id, doc_id, score)``: one teacher score per (query, document);
- **margin** rows ``(query_id, pos_id, neg_id, margin)``: only the difference
  :math:`s(q, d^+) - s(q, d^-)` is known. They are stored as margins (``score_kind: margin``, one
  row per triple) and trained on as margins — never turned into made-up absolute scores.

Formats (schemas; ``FILE`` may be gzip-compressed where it is a text file):

``margin-mse-tsv``
    Hofstätter et al.'s published teacher files, and what ``score-teacher export --format
    margin-mse-tsv`` writes. No header; five tab-separated fields a line::

        pos_score <TAB> neg_score <TAB> query_id <TAB> pos_doc_id <TAB> neg_doc_id

    Both scores are absolute: each line gives two (query, doc, score) rows. A (query, doc) that
    several lines score gets the mean of their scores (``duplicates`` / ``max_spread`` in the
    manifest say how many and how far apart). Read with pyarrow's CSV reader, block by block.
``st-scores-pkl``
    sentence-transformers' cross-encoder score pickles (``*-scores.pkl[.gz]``): a pickled
    ``{query_id: {doc_id: score}}`` (ids int or str). Unpickled with a restricted unpickler
    (dicts, lists, numbers, strings, numpy scalars — nothing else is constructed). With
    ``--candidates msmarco-hard-negatives.jsonl[.gz]`` (lines ``{"qid", "pos": [ids], "neg":
    {system: [ids]}}``) only the listed (query, doc) pairs are kept and ``pos`` marks positives.
    A pickle is read whole (the format cannot be streamed).
``hf-columns``
    A local Hugging Face dataset (``save_to_disk`` folder), ``hf:NAME[:CONFIG][:SPLIT]``, or
    Parquet file(s), with declared columns (``--columns role=column,...``), either

    - pointwise ``query_id, passage_id, score`` (``passage_id`` also found as ``doc_id``,
      ``corpus_id``, ``pid``), absolute; or
    - triples ``query_id, positive_id, negative_id, score`` where ``score`` is the **margin**
      (as in the ``sentence-transformers/msmarco`` margin subsets).
``listwise``
    One ranked list a row: ``query_id, document_ids[], scores[]`` (lightonai/ms-marco-en-bge's
    layout), as a table source (above) or JSONL; list columns may also be strings holding a JSON /
    Python list (``"[1, 2]"``). Absolute.
``flag-jsonl``
    FlagEmbedding's training files: JSONL ``{"query": text, "pos": [texts], "neg": [texts],
    "pos_scores": [..], "neg_scores": [..]}``. Texts, not ids: an id is made from the text
    (``q`` / ``d`` + the first 16 hex digits of its sha256) and the texts are stored in the store
    (``texts/queries.jsonl``, ``texts/corpus.jsonl``, BEIR format), where ``train`` finds them.
    Absolute. ``--data`` does not apply.

Ids are checked against the dataset given by ``--data`` / ``--corpus`` / ``--queries`` (the store's
query order is that dataset's): rows naming a query or document the dataset lacks are counted and
refused — one error naming the file and line of the first — unless ``--allow-missing-ids`` drops
them (counted in the manifest). Labels are the dataset's qrels when it has judgments, else 1 for
what the file marks as positive (``pos``) and 0 otherwise (``manifest["imported"]["labels"]``).
A malformed row (wrong field count, a score that is not a finite number) or a truncated ``.gz``
is an error naming file and line; the store is written in a temporary folder and renamed into
place, so a failed import leaves nothing behind.

The manifest is a score-store manifest (one teacher, ``kind: imported``, ``spec: "imported from
<format>"``, ``fingerprint``: sha256 of the input files) plus::

    "imported": {"format", "files": [{"path", "sha256", "rows"}], "rows_read", "pairs",
                 "labels": "qrels" | "file positives", "missing_ids": {"queries", "documents",
                 "rows_dropped", "allowed"}, "duplicates", "max_spread", "unscored_candidates"}

>>> flag_id("q", "what is a cat")
'q813bc3adf399fc6c'
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import math
import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from embed_kd.data.lines import GZIP_ERRORS, is_gzip, iter_lines, open_binary
from embed_kd.errors import DataError, EmbedKDError

logger = logging.getLogger(__name__)

FORMATS = ("margin-mse-tsv", "st-scores-pkl", "hf-columns", "listwise", "flag-jsonl")
#: rows per Parquet chunk an import aims at (queries per chunk is derived from it)
CHUNK_ROWS = 1_000_000


@dataclass
class ImportOptions:
    fmt: str
    data: str | None = None
    split: str = "train"
    corpus: str | None = None
    queries: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    candidates: str | None = None          # st-scores-pkl: msmarco-hard-negatives.jsonl(.gz)
    teacher_name: str = "imported"
    allow_missing_ids: bool = False
    overwrite: bool = False
    chunk_rows: int = CHUNK_ROWS


def flag_id(prefix: str, text: str) -> str:
    """The id of a text in a ``flag-jsonl`` import: ``prefix`` + 16 hex digits of its sha256."""
    return prefix + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------ raw rows

@dataclass
class RawRows:
    """One file's rows before the ids are checked: absolute ``(q, d, s, role)`` or margin
    ``(q, p, n, s)`` columns (pyarrow), and ``row`` = the 0-based data row each came from."""

    kind: str                      # absolute | margin
    columns: dict                  # name -> pyarrow (Chunked)Array
    where: "callable"              # row index -> "file:line" text for messages
    n_rows: int                    # data rows read from the file
    extra: dict = field(default_factory=dict)


def _text_row_locator(path: Path):
    def where(row: int) -> str:  # the error path only: count the data (non-blank) lines
        for n, (lineno, _) in enumerate(iter_lines(path)):
            if n == row:
                return f"{path}:{lineno}"
        return f"{path}: row {row + 1}"
    return where


def _table_row_locator(source: str):
    return lambda row: f"{source}: row {row + 1}"


def _check_finite(scores, where, what: str = "score") -> None:
    import pyarrow.compute as pc

    bad = pc.invert(pc.is_finite(scores))
    if pc.any(bad).as_py():
        row = int(pc.index(bad, True).as_py())
        raise DataError(f"{where(row)}: {what} is not a finite number ({scores[row].as_py()})")


# margin-mse-tsv ------------------------------------------------------------------------------

_TSV_NAMES = ["pos_score", "neg_score", "query_id", "pos_id", "neg_id"]


def _diagnose_tsv(path: Path, n_fields: int, float_fields: Sequence[int], exc: Exception) -> DataError:
    """Find the first malformed line of a TSV the fast reader refused (the error path only)."""
    names = _TSV_NAMES
    try:
        for lineno, line in iter_lines(path):
            parts = line.split("\t")
            if len(parts) != n_fields:
                return DataError(f"{path}:{lineno}: expected {n_fields} tab-separated fields "
                                 f"({' '.join(names)}), got {len(parts)}")
            for i in float_fields:
                try:
                    v = float(parts[i])
                except ValueError:
                    return DataError(f"{path}:{lineno}: {names[i]} {parts[i]!r} is not a number")
                if not math.isfinite(v):
                    return DataError(f"{path}:{lineno}: {names[i]} {parts[i]!r} is not a finite number")
            if any(not p.strip() for p in parts):
                return DataError(f"{path}:{lineno}: empty field")
    except DataError as err:
        return err
    return DataError(f"{path}: not a readable {n_fields}-field TSV ({' '.join(str(exc).split())[:300]})")


def read_margin_mse_tsv(path: str | Path, opts: ImportOptions) -> RawRows:
    """``pos_score neg_score qid pos_id neg_id`` lines → absolute rows (two per line)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyarrow import csv

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    types = {"pos_score": pa.float32(), "neg_score": pa.float32(), "query_id": pa.string(),
             "pos_id": pa.string(), "neg_id": pa.string()}
    batches = []
    try:
        stream = pa.input_stream(str(path), compression="gzip" if is_gzip(path) else None)
        reader = csv.open_csv(
            stream, read_options=csv.ReadOptions(column_names=_TSV_NAMES, block_size=32 << 20),
            parse_options=csv.ParseOptions(delimiter="\t", quote_char=False, double_quote=False, escape_char=False,
                                           newlines_in_values=False),
            convert_options=csv.ConvertOptions(column_types=types, null_values=[], strings_can_be_null=False,
                                               quoted_strings_can_be_null=False))
        for batch in reader:
            batches.append(batch)
    except (pa.ArrowInvalid, pa.ArrowException, OSError, *GZIP_ERRORS) as exc:
        raise _diagnose_tsv(path, 5, (0, 1), exc) from None
    if not batches:
        raise DataError(f"{path}: no rows")
    t = pa.Table.from_batches(batches)
    where = _text_row_locator(path)
    for name in ("pos_score", "neg_score"):
        _check_finite(t.column(name), where, name)
    for name in ("query_id", "pos_id", "neg_id"):
        empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(t.column(name))), 0)
        if pc.any(empty).as_py():
            raise DataError(f"{where(int(pc.index(empty, True).as_py()))}: empty {name}")
    n = t.num_rows
    rows = pa.chunked_array([pa.array(np.arange(n, dtype=np.int64))])
    cols = {
        "q": pa.chunked_array(t.column("query_id").chunks + t.column("query_id").chunks),
        "d": pa.chunked_array(t.column("pos_id").chunks + t.column("neg_id").chunks),
        "s": pa.chunked_array(t.column("pos_score").chunks + t.column("neg_score").chunks),
        "role": pa.chunked_array([pa.array(np.ones(n, np.int8)), pa.array(np.zeros(n, np.int8))]),
        "row": pa.chunked_array(rows.chunks + rows.chunks),
    }
    return RawRows("absolute", cols, where, n)


# st-scores-pkl -------------------------------------------------------------------------------

class _SafeUnpickler(pickle.Unpickler):
    _ALLOWED = {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("numpy", "dtype"),
                ("builtins", "dict"), ("builtins", "list"), ("builtins", "int"), ("builtins", "float"),
                ("collections", "OrderedDict"), ("collections", "defaultdict")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to construct {module}.{name} (only dicts of numbers are read)")


def _load_pickle(path: Path):
    try:
        with open_binary(path) as fh:
            return _SafeUnpickler(fh).load()
    except DataError:
        raise
    except GZIP_ERRORS as exc:
        raise DataError(f"{path}: the gzip file is truncated or corrupt ({exc})") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as exc:
        raise DataError(f"{path}: not a readable score pickle ({type(exc).__name__}: {exc})") from None


def _read_hard_negatives(path: Path) -> dict[str, tuple[set, set]]:
    out: dict[str, tuple[set, set]] = {}
    for lineno, line in iter_lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict) or "qid" not in obj or not isinstance(obj.get("pos", []), list) \
                or not isinstance(obj.get("neg", {}), (dict, list)):
            raise DataError(f"{path}:{lineno}: expected {{\"qid\", \"pos\": [ids], \"neg\": {{system: [ids]}}}}")
        neg = obj.get("neg", {})
        negs = {str(d) for ds in neg.values() for d in ds} if isinstance(neg, dict) else {str(d) for d in neg}
        pos, old = {str(d) for d in obj.get("pos", [])}, out.get(str(obj["qid"]))
        if old:
            pos |= old[0]
            negs |= old[1]
        out[str(obj["qid"])] = (pos, negs)
    return out


def read_st_scores_pkl(path: str | Path, opts: ImportOptions) -> RawRows:
    """``{qid: {pid: score}}`` pickle (+ optional hard-negative candidate lists) → absolute rows."""
    import pyarrow as pa

    path = Path(path)
    obj = _load_pickle(path)
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict {{query_id: {{doc_id: score}}}}, got {type(obj).__name__}")
    cands = _read_hard_negatives(Path(opts.candidates)) if opts.candidates else None
    q, d, s, role = [], [], [], []
    unscored = 0
    for qid, docs in obj.items():
        if not isinstance(docs, dict):
            raise DataError(f"{path}: query {qid!r}: expected a dict {{doc_id: score}}, got {type(docs).__name__}")
        qid = str(qid)
        keep = None
        if cands is not None:
            if qid not in cands:
                continue
            keep = cands[qid]
        for pid, score in docs.items():
            pid = str(pid)
            if keep is not None and pid not in keep[0] and pid not in keep[1]:
                continue
            try:
                val = float(score)
            except (TypeError, ValueError):
                raise DataError(f"{path}: query {qid!r}, doc {pid!r}: score {score!r} is not a number") from None
            if not math.isfinite(val):
                raise DataError(f"{path}: query {qid!r}, doc {pid!r}: score {score!r} is not a finite number")
            q.append(qid)
            d.append(pid)
            s.append(val)
            role.append(1 if keep is not None and pid in keep[0] else 0)
        if keep is not None:
            unscored += len((keep[0] | keep[1]) - {str(p) for p in docs})
    if not q:
        raise DataError(f"{path}: no scores" + (f" for the candidates of {opts.candidates}" if cands is not None else ""))
    n = len(q)
    cols = {"q": pa.chunked_array([pa.array(q, pa.string())]), "d": pa.chunked_array([pa.array(d, pa.string())]),
            "s": pa.chunked_array([pa.array(s, pa.float32())]), "role": pa.chunked_array([pa.array(role, pa.int8())]),
            "row": pa.chunked_array([pa.array(np.arange(n, dtype=np.int64))])}
    return RawRows("absolute", cols, lambda row: f"{path}: query {q[row]!r}, doc {d[row]!r}", n,
                   {"unscored_candidates": unscored})


# hf-columns / listwise -----------------------------------------------------------------------

def _table_batches(source: str):
    from embed_kd.data.tables import iter_batches

    return iter_batches(source)


def _cast_scores(arr, where, base_row: int, name: str = "score"):
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        out = pc.cast(arr, pa.float32())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        for i, v in enumerate(arr.to_pylist()):
            try:
                float(v)
            except (TypeError, ValueError):
                raise DataError(f"{where(base_row + i)}: {name} {v!r} is not a number") from None
        raise DataError(f"{where(base_row)}: column {name} is not numeric ({arr.type})") from None
    if out.null_count:
        i = int(pc.index(pc.is_null(out), True).as_py())
        raise DataError(f"{where(base_row + i)}: {name} is empty (null)")
    return out


def read_hf_columns(source: str, opts: ImportOptions) -> RawRows:
    """Pointwise ``query_id, passage_id, score`` or margin ``query_id, positive_id, negative_id, score``."""
    import pyarrow as pa

    from embed_kd.data.tables import parse_source, resolve_columns

    base, declared = parse_source(source)
    declared = {**declared, **opts.columns}
    where = _table_row_locator(base)
    parts: dict[str, list] = {}
    kind, cols, row = None, None, 0
    for batch in _table_batches(source):
        if cols is None:
            names = batch.schema.names
            margin = ("positive_id" in declared or "negative_id" in declared
                      or ({"positive_id", "negative_id"} <= set(names) and "passage_id" not in declared))
            kind = "margin" if margin else "absolute"
            roles = ({"query_id": ("query_id", "qid"), "positive_id": ("positive_id", "pos_id", "positive"),
                      "negative_id": ("negative_id", "neg_id", "negative"), "score": ("score", "margin", "label")}
                     if margin else {"query_id": ("query_id", "qid"),
                                     "passage_id": ("passage_id", "doc_id", "corpus_id", "pid", "document_id"),
                                     "score": ("score", "ce_score", "label")})
            cols = resolve_columns(base, names, declared, roles)
        n = batch.num_rows
        s = _cast_scores(batch.column(cols["score"]), where, row)
        _check_finite(s, lambda i, r=row: where(r + i), "score")
        ids = {}
        for role_name in [r for r in cols if r != "score"]:
            a = batch.column(cols[role_name])
            if a.null_count:
                import pyarrow.compute as pc
                raise DataError(f"{where(row + int(pc.index(pc.is_null(a), True).as_py()))}: empty {role_name}")
            ids[role_name] = a.cast(pa.string())
        if kind == "margin":
            entries = {"q": ids["query_id"], "p": ids["positive_id"], "n": ids["negative_id"], "s": s}
        else:
            entries = {"q": ids["query_id"], "d": ids["passage_id"], "s": s,
                       "role": pa.array(np.zeros(n, np.int8))}
        entries["row"] = pa.array(np.arange(row, row + n, dtype=np.int64))
        for k, v in entries.items():
            parts.setdefault(k, []).append(v)
        row += n
    if not row:
        raise DataError(f"{base}: no rows")
    return RawRows(kind, {k: pa.chunked_array(v) for k, v in parts.items()}, where, row)


def _as_list(value, where: str, what: str) -> list:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                raise DataError(f"{where}: {what} {value[:60]!r} is not a list") from None
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{where}: {what} must be a list, got {type(value).__name__}")
    return list(value)


def read_listwise(source: str, opts: ImportOptions) -> RawRows:
    """``query_id, document_ids[], scores[]`` rows (table source or JSONL) → absolute rows."""
    import pyarrow as pa

    from embed_kd.data.inputs import input_kind
    from embed_kd.data.tables import parse_source, resolve_columns

    base, declared = parse_source(source)
    declared = {**declared, **opts.columns}
    roles = {"query_id": ("query_id", "qid", "_id"), "document_ids": ("document_ids", "doc_ids", "passage_ids"),
             "scores": ("scores", "score")}
    q, d, s, lines = [], [], [], []

    def add(where: str, qid, docs, scores, line: int):
        docs, scores = _as_list(docs, where, "document_ids"), _as_list(scores, where, "scores")
        if len(docs) != len(scores):
            raise DataError(f"{where}: {len(docs)} document_ids but {len(scores)} scores")
        if qid is None or str(qid).strip() == "":
            raise DataError(f"{where}: empty query_id")
        for doc, sc in zip(docs, scores):
            try:
                val = float(sc)
            except (TypeError, ValueError):
                raise DataError(f"{where}: score {sc!r} is not a number") from None
            if not math.isfinite(val):
                raise DataError(f"{where}: score {sc!r} is not a finite number")
            q.append(str(qid))
            d.append(str(doc))
            s.append(val)
            lines.append(line)

    n = 0
    table = input_kind(base) == "table"
    if table:
        cols = None
        for batch in _table_batches(source):
            if cols is None:
                cols = resolve_columns(base, batch.schema.names, declared, roles)
            for qid, docs, scores in zip(*(batch.column(cols[r]).to_pylist() for r in roles)):
                n += 1
                add(f"{base}: row {n}", qid, docs, scores, n)
    else:
        path = Path(base)
        for lineno, line in iter_lines(path):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object")
            cols = resolve_columns(f"{path}:{lineno}", list(obj), declared, roles)
            add(f"{path}:{lineno}", obj[cols["query_id"]], obj[cols["document_ids"]], obj[cols["scores"]], lineno)
            n += 1
    if not q:
        raise DataError(f"{base}: no rows")
    cols_out = {"q": pa.chunked_array([pa.array(q, pa.string())]), "d": pa.chunked_array([pa.array(d, pa.string())]),
                "s": pa.chunked_array([pa.array(s, pa.float32())]),
                "role": pa.chunked_array([pa.array(np.zeros(len(q), np.int8))]),
                "row": pa.chunked_array([pa.array(np.arange(len(q), dtype=np.int64))])}
    where = (lambda row: f"{base}: row {lines[row]}") if table else (lambda row: f"{base}:{lines[row]}")
    return RawRows("absolute", cols_out, where, n)


# flag-jsonl ----------------------------------------------------------------------------------

def read_flag_jsonl(path: str | Path, opts: ImportOptions, texts: dict) -> RawRows:
    """FlagEmbedding JSONL → absolute rows on text-hash ids; fills ``texts`` {"queries", "corpus"}."""
    import pyarrow as pa

    path = Path(path)
    q, d, s, role, lines = [], [], [], [], []
    queries, corpus = texts.setdefault("queries", {}), texts.setdefault("corpus", {})
    n = 0
    for lineno, line in iter_lines(path):
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("query"), str) or not obj["query"].strip():
            raise DataError(f"{where}: expected {{\"query\": text, \"pos\": [texts], \"neg\": [texts], "
                            "\"pos_scores\": [..], \"neg_scores\": [..]}}")
        qid = flag_id("q", obj["query"])
        queries.setdefault(qid, obj["query"])
        for key, is_pos in (("pos", 1), ("neg", 0)):
            docs, scores = obj.get(key, []), obj.get(f"{key}_scores")
            if not isinstance(docs, list) or not all(isinstance(t, str) and t.strip() for t in docs):
                raise DataError(f"{where}: '{key}' must be a list of non-empty texts")
            if scores is None:
                if docs:
                    raise DataError(f"{where}: '{key}_scores' is missing (teacher scores are what is imported)")
                continue
            if not isinstance(scores, list) or len(scores) != len(docs):
                raise DataError(f"{where}: '{key}_scores' must be a list of {len(docs)} numbers (one per '{key}' text)")
            for text, sc in zip(docs, scores):
                if isinstance(sc, bool) or not isinstance(sc, (int, float)) or not math.isfinite(sc):
                    raise DataError(f"{where}: {key}_scores value {sc!r} is not a finite number")
                did = flag_id("d", text)
                corpus.setdefault(did, {"title": "", "text": text})
                q.append(qid)
                d.append(did)
                s.append(float(sc))
                role.append(is_pos)
                lines.append(lineno)
        n += 1
    if not q:
        raise DataError(f"{path}: no scored (query, text) pairs")
    cols = {"q": pa.chunked_array([pa.array(q, pa.string())]), "d": pa.chunked_array([pa.array(d, pa.string())]),
            "s": pa.chunked_array([pa.array(s, pa.float32())]), "role": pa.chunked_array([pa.array(role, pa.int8())]),
            "row": pa.chunked_array([pa.array(np.arange(len(q), dtype=np.int64))])}
    return RawRows("absolute", cols, lambda row: f"{path}:{lines[row]}", n)


READERS = {"margin-mse-tsv": read_margin_mse_tsv, "st-scores-pkl": read_st_scores_pkl,
           "hf-columns": read_hf_columns, "listwise": read_listwise}


# ------------------------------------------------------------------------------------ assembling

def _positions(values, ids_array) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    idx = pc.index_in(values, value_set=ids_array)
    if isinstance(idx, pa.ChunkedArray):
        idx = idx.combine_chunks() if idx.num_chunks != 1 else idx.chunk(0)
    return idx.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


@dataclass
class _Assembled:
    q: np.ndarray          # query index per row (sorted by query, then first appearance)
    cols: dict             # d (doc index) [, p (pos doc index)], s (float32), role
    duplicates: int
    max_spread: float


def _group(keys: np.ndarray, seq: np.ndarray, scores: np.ndarray, role: np.ndarray, q: np.ndarray):
    """Merge rows with the same key (mean score, max role); order by (query, first appearance in the files).

    ``seq`` is each row's place in the input (file, row, positive before negative). Returns
    ``(representative row per key, mean score, role, rows merged away, max spread of merged scores)``.
    """
    order = np.lexsort((seq, keys))
    k_sorted = keys[order]
    starts = np.flatnonzero(np.r_[True, k_sorted[1:] != k_sorted[:-1]])
    counts = np.diff(np.r_[starts, len(k_sorted)])
    s_sorted = scores[order].astype(np.float64)
    mean = (np.add.reduceat(s_sorted, starts) / counts).astype(np.float32)
    spread = 0.0
    if (counts > 1).any():
        spread = float((np.maximum.reduceat(s_sorted, starts) - np.minimum.reduceat(s_sorted, starts)).max())
    first = order[starts]                       # the earliest row of each key
    rl = np.maximum.reduceat(role[order], starts)
    final = np.lexsort((seq[first], q[first]))
    return first[final], mean[final], rl[final], int(len(keys) - len(starts)), spread


def import_scores(files: Sequence[str | os.PathLike], out: str | os.PathLike, opts: ImportOptions) -> dict:
    """Read ``files`` in format ``opts.fmt`` and write a complete score store at ``out`` (atomic).

    Returns a summary ``{"out", "rows", "queries_with_rows", "n_queries", "score_kind", "imported", "total_s"}``.
    Raises :class:`~embed_kd.errors.DataError` / :class:`EmbedKDError` before anything is written.
    """
    import pyarrow as pa

    from embed_kd.data.beir import BeirDataset
    from embed_kd.io import atomic_dir, atomic_write_text, check_writable, refuse_existing
    from embed_kd.teachers.scoring import dataset_entry
    from embed_kd.teachers.store import ARTIFACT, ScoreStoreWriter, check_name, new_manifest

    t0 = time.perf_counter()
    if opts.fmt not in FORMATS:
        raise EmbedKDError(f"--format {opts.fmt!r}: expected one of {', '.join(FORMATS)}")
    if not files:
        raise EmbedKDError("score-teacher import: no input FILE given")
    check_name(opts.teacher_name, "teacher")
    if opts.candidates and opts.fmt != "st-scores-pkl":
        raise EmbedKDError("--candidates (hard-negative lists) applies to --format st-scores-pkl only")
    if opts.columns and opts.fmt not in ("hf-columns", "listwise"):
        raise EmbedKDError("--columns applies to --format hf-columns and listwise only")
    out = Path(out)
    refuse_existing(out, opts.overwrite, artifact=ARTIFACT)
    check_writable(out)
    sources = [str(f) for f in files]
    for f in sources:
        base = f.split("#", 1)[0]
        if not base.startswith("hf:") and not Path(base).exists():
            raise DataError(f"{base}: file not found")

    texts: dict = {}
    if opts.fmt == "flag-jsonl":
        if opts.data or opts.corpus or opts.queries:
            raise EmbedKDError("--format flag-jsonl carries its own texts: --data / --corpus / --queries do not apply")
        raws = [read_flag_jsonl(f, opts, texts) for f in sources]
        dataset = BeirDataset("flag-jsonl", Path(sources[0]).parent, opts.split, texts["corpus"], texts["queries"], {},
                              0, [f"texts from {', '.join(sources)} (ids: sha256 of the text)"])
    else:
        if not (opts.data or opts.corpus):
            raise EmbedKDError(f"--format {opts.fmt}: pass --data (or --corpus [--queries]): the ids are checked "
                               "against it and the store's query order is its split's")
        from embed_kd.data.inputs import load_inputs

        dataset = load_inputs(data=opts.data, split=opts.split, corpus=opts.corpus, queries=opts.queries)
        if not dataset.queries:
            raise EmbedKDError("score-teacher import: the dataset has no queries (pass --queries FILE or --data)")
        raws = [READERS[opts.fmt](f, opts) for f in sources]
    kinds = {r.kind for r in raws}
    if len(kinds) > 1:
        raise DataError(f"{', '.join(sources)}: some files hold margins and others absolute scores; import them apart")
    kind = kinds.pop()

    qids = list(dataset.queries)
    dids = list(dataset.corpus)
    q_arr, d_arr = pa.array(qids, pa.string()), pa.array(dids, pa.string())
    per_file, parts = [], []
    missing_q = missing_d = dropped = 0
    first_missing = None
    for fi, (src, raw) in enumerate(zip(sources, raws)):
        cols = raw.columns
        qi = _positions(cols["q"], q_arr)
        doc_keys = ("p", "n") if kind == "margin" else ("d",)
        di = {k: _positions(cols[k], d_arr) for k in doc_keys}
        row = cols["row"].to_numpy() if hasattr(cols["row"], "to_numpy") else np.asarray(cols["row"])
        bad_q = qi < 0
        bad_d = np.zeros(len(qi), bool)
        for k in doc_keys:
            bad_d |= di[k] < 0
        bad = bad_q | bad_d
        if bad.any():
            missing_q += len(np.unique(row[bad_q])) if bad_q.any() else 0
            missing_d += int(bad_d.sum())
            dropped += len(np.unique(row[bad]))
            if first_missing is None:
                i = int(np.flatnonzero(bad)[0])
                what = (f"query id {cols['q'][i].as_py()!r} is not in the dataset's queries" if bad_q[i] else
                        f"document id {next(cols[k][i].as_py() for k in doc_keys if di[k][i] < 0)!r} "
                        "is not in the corpus")
                first_missing = (raw.where(int(row[i])), what)
            keep = ~bad
            qi, row = qi[keep], row[keep]
            di = {k: v[keep] for k, v in di.items()}
        else:
            keep = None
        s = cols["s"].to_numpy() if hasattr(cols["s"], "to_numpy") else np.asarray(cols["s"])
        s = np.asarray(s, np.float32)
        role = np.asarray(cols["role"].to_numpy(), np.int8) if "role" in cols else np.zeros(len(s), np.int8)
        if keep is not None:
            s, role = s[keep], role[keep]
        parts.append((fi, qi, di, s, role, row))
        per_file.append({"path": str(src), "sha256": _source_sha(src), "rows": raw.n_rows})
    if first_missing is not None and not opts.allow_missing_ids:
        where, what = first_missing
        raise DataError(f"{where}: {what} ({dropped} row(s) name ids the dataset lacks: {missing_q} query "
                        f"row(s), {missing_d} document reference(s)); check --data / --corpus / --queries, or pass "
                        "--allow-missing-ids to drop them")
    if dropped:
        logger.warning("dropped %d row(s) naming ids the dataset lacks (--allow-missing-ids)", dropped)

    fi_all = np.concatenate([np.full(len(p[1]), p[0], np.int64) for p in parts])
    q = np.concatenate([p[1] for p in parts])
    s = np.concatenate([p[3] for p in parts])
    role = np.concatenate([p[4] for p in parts])
    row = np.concatenate([p[5] for p in parts])
    seq = (fi_all << 40) + row * 2 + (1 - role)     # file order, row order, a line's positive first
    if not len(q):
        raise DataError(f"{', '.join(sources)}: no rows left after dropping unknown ids")
    n_docs = len(dids)
    if kind == "margin":
        p_idx = np.concatenate([p[2]["p"] for p in parts])
        n_idx = np.concatenate([p[2]["n"] for p in parts])
        if n_docs < (1 << 20) and len(qids) < (1 << 22):  # (q, pos, neg) fits one int64 key
            keys = (q * n_docs + p_idx) * n_docs + n_idx
        else:  # big id spaces: number the distinct triples instead
            keys = np.unique(np.stack([q, p_idx, n_idx], 1), axis=0, return_inverse=True)[1].ravel()
        sel, score, _, dups, spread = _group(keys, seq, s, role, q)
        cols_idx = {"d": n_idx[sel], "p": p_idx[sel]}
    else:
        d_idx = np.concatenate([p[2]["d"] for p in parts])
        keys = q * n_docs + d_idx
        sel, score, role_g, dups, spread = _group(keys, seq, s, role, q)
        cols_idx = {"d": d_idx[sel], "role": role_g}
    q_sel = q[sel]
    del keys, s, row, seq, fi_all

    # labels: the qrels when the dataset is judged, else the file's positives
    if dataset.qrels:
        labels_kind = "qrels"
        label = np.zeros(len(q_sel), np.int32)
        doc_pos = {d: i for i, d in enumerate(dids)}
        qpos = {qq: i for i, qq in enumerate(qids)}
        jk, jv = [], []
        for qq, docs in dataset.qrels.items():
            for dd, rel in docs.items():
                if qq in qpos and dd in doc_pos:
                    jk.append(qpos[qq] * n_docs + doc_pos[dd])
                    jv.append(rel)
        if jk:
            jk, jv = np.asarray(jk, np.int64), np.asarray(jv, np.int32)
            o = np.argsort(jk)
            jk, jv = jk[o], jv[o]
            key = q_sel * n_docs + cols_idx["d"]
            pos = np.clip(np.searchsorted(jk, key), 0, len(jk) - 1)
            hit = jk[pos] == key
            label[hit] = jv[pos[hit]]
    else:
        labels_kind = "file positives"
        label = cols_idx["role"].astype(np.int32) if kind == "absolute" else np.zeros(len(q_sel), np.int32)

    imported = {"format": opts.fmt, "files": per_file, "rows_read": int(sum(r.n_rows for r in raws)),
                "pairs": int(len(q_sel)), "labels": labels_kind,
                "missing_ids": {"queries": int(missing_q), "documents": int(missing_d), "rows_dropped": int(dropped),
                                "allowed": bool(opts.allow_missing_ids)},
                "duplicates": int(dups), "max_spread": float(spread),
                "unscored_candidates": int(sum(r.extra.get("unscored_candidates", 0) for r in raws))}
    if opts.candidates:
        imported["candidates"] = {"path": str(opts.candidates), "sha256": sha256_file(opts.candidates)}
    fp = hashlib.sha256("".join(f["sha256"] for f in per_file).encode()
                        + (imported.get("candidates", {}).get("sha256", "").encode())).hexdigest()[:16]
    teacher = {"name": opts.teacher_name, "spec": f"imported from {opts.fmt}", "kind": "imported", "fingerprint": fp,
               "activation": None, "max_length": None, "backend": "import"}
    ds_entry = dataset_entry(dataset)
    manifest = new_manifest(dataset=ds_entry, candidates=[], teachers=[teacher], ensemble=None,
                            include_positives=False, score_kind=kind)
    manifest["imported"] = imported
    if texts:
        manifest["texts"] = "texts"

    n_q = len(qids)
    chunk_size = max(1, int(n_q * opts.chunk_rows / max(len(q_sel), 1)))
    bounds = np.searchsorted(q_sel, np.arange(0, n_q + chunk_size, chunk_size))
    score_col = pa.array(score, pa.float32())
    with atomic_dir(out, overwrite=opts.overwrite, artifact=ARTIFACT) as tmp:
        writer = ScoreStoreWriter.create(tmp, manifest, chunk_size=chunk_size)
        try:
            for ci, (a, b) in enumerate(writer.owned()):
                lo, hi = int(bounds[ci]), int(bounds[ci + 1])
                cols = {"query_id": q_arr.take(pa.array(q_sel[lo:hi])),
                        "doc_id": d_arr.take(pa.array(cols_idx["d"][lo:hi])),
                        "label": pa.array(label[lo:hi], pa.int32()), "score": score_col.slice(lo, hi - lo)}
                if kind == "margin":
                    cols["pos_id"] = d_arr.take(pa.array(cols_idx["p"][lo:hi]))
                cols[f"score__{opts.teacher_name}"] = score_col.slice(lo, hi - lo)
                writer.write_chunk(a, b, pa.table(cols, schema=writer.schema))
            writer.finalize()
        finally:
            writer.close()
        if texts:
            (tmp / "texts").mkdir()
            atomic_write_text(tmp / "texts" / "queries.jsonl", "".join(
                json.dumps({"_id": k, "text": v}, ensure_ascii=False) + "\n" for k, v in texts["queries"].items()))
            atomic_write_text(tmp / "texts" / "corpus.jsonl", "".join(
                json.dumps({"_id": k, "title": "", "text": v["text"]}, ensure_ascii=False) + "\n"
                for k, v in texts["corpus"].items()))
    with_rows = int(len(np.unique(q_sel)))
    logger.info("imported %d %s rows (%d of %d queries) from %d file(s) into %s", len(q_sel), kind, with_rows, n_q,
                len(sources), out)
    return {"out": str(out), "rows": int(len(q_sel)), "queries_with_rows": with_rows, "n_queries": n_q,
            "score_kind": kind, "imported": imported, "total_s": time.perf_counter() - t0}


def _source_sha(src: str) -> str:
    """sha256 of an input: the file, or every file of a folder (sorted), or the hub name for ``hf:``."""
    from embed_kd.data.tables import parse_source

    base = parse_source(src)[0]
    if base.startswith("hf:"):
        return hashlib.sha256(base.encode()).hexdigest()
    p = Path(base)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            h.update(f.relative_to(p).as_posix().encode())
            h.update(sha256_file(f).encode())
        return h.hexdigest()
    return sha256_file(p)
