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
from typing import Callable, Iterable, Sequence

import numpy as np

from embed_kd.data.beir import BeirDataset
from embed_kd.data.inputs import input_kind, load_inputs
from embed_kd.data.lines import GZIP_ERRORS, is_gzip, iter_json_objects, iter_lines, open_binary
from embed_kd.data.tables import iter_batches, parse_source, resolve_columns
from embed_kd.errors import DataError, EmbedKDError
from embed_kd.io import atomic_dir, atomic_write_text, check_writable, refuse_existing, sha256_file
from embed_kd.teachers.scoring import dataset_entry
from embed_kd.teachers.store import ARTIFACT, check_name, new_manifest, ScoreStoreWriter

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


# ------------------------------------------------------------------------------------ raw rows

@dataclass
class RawRows:
    """One file's rows before the ids are checked, as batches (dicts of pyarrow arrays): absolute
    ``q, d, s[, role]`` or margin ``q, p, n, s``, and ``row`` = the 0-based data row each came from.
    ``batches`` may be a generator (a big TSV is parsed block by block while it is consumed);
    ``n_rows`` is final once it is consumed."""

    kind: str                      # absolute | margin
    batches: Iterable[dict]
    where: Callable[[int], str]    # row index -> "file:line" text for messages
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
    """``pos_score neg_score qid pos_id neg_id`` lines → absolute rows (two per line), block by block."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    raw = RawRows("absolute", [], _text_row_locator(path), 0)
    raw.batches = _tsv_batches(path, raw)
    return raw


def _tsv_batches(path: Path, raw: RawRows) -> Iterator[dict]:
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyarrow import csv

    types = {"pos_score": pa.float32(), "neg_score": pa.float32(), "query_id": pa.string(),
             "pos_id": pa.string(), "neg_id": pa.string()}
    where = raw.where
    row = 0
    try:
        stream = pa.input_stream(str(path), compression="gzip" if is_gzip(path) else None)
        reader = csv.open_csv(
            stream, read_options=csv.ReadOptions(column_names=_TSV_NAMES, block_size=32 << 20),
            parse_options=csv.ParseOptions(delimiter="\t", quote_char=False, double_quote=False, escape_char=False,
                                           newlines_in_values=False),
            convert_options=csv.ConvertOptions(column_types=types, null_values=[], strings_can_be_null=False,
                                               quoted_strings_can_be_null=False))
        while True:
            try:
                t = reader.read_next_batch()
            except StopIteration:
                break
            n = t.num_rows
            for name in ("pos_score", "neg_score"):
                _check_finite(t.column(name), lambda i, r=row: where(r + i), name)
            for name in ("query_id", "pos_id", "neg_id"):
                empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(t.column(name))), 0)
                if pc.any(empty).as_py():
                    raise DataError(f"{where(row + int(pc.index(empty, True).as_py()))}: empty {name}")
            rows = pa.array(np.arange(row, row + n, dtype=np.int64))
            yield {"q": pa.chunked_array([t.column("query_id"), t.column("query_id")]),
                   "d": pa.chunked_array([t.column("pos_id"), t.column("neg_id")]),
                   "s": pa.chunked_array([t.column("pos_score"), t.column("neg_score")]),
                   "role": pa.chunked_array([pa.array(np.ones(n, np.int8)), pa.array(np.zeros(n, np.int8))]),
                   "row": pa.chunked_array([rows, rows])}
            row += n
            raw.n_rows = row
    except (pa.ArrowInvalid, pa.ArrowException, OSError, *GZIP_ERRORS) as exc:
        raise _diagnose_tsv(path, 5, (0, 1), exc) from None
    if not row:
        raise DataError(f"{path}: no rows")


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
    return RawRows("absolute", [cols], lambda row: f"{path}: query {q[row]!r}, doc {d[row]!r}", n,
                   {"unscored_candidates": unscored})


# hf-columns / listwise -----------------------------------------------------------------------

def _table_batches(source: str):
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
    return RawRows(kind, [{k: pa.chunked_array(v) for k, v in parts.items()}], where, row)


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
        for lineno, obj in iter_json_objects(path):
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
    return RawRows("absolute", [cols_out], where, n)


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
    return RawRows("absolute", [cols], lambda row: f"{path}:{lines[row]}", n)


READERS = {"margin-mse-tsv": read_margin_mse_tsv, "st-scores-pkl": read_st_scores_pkl,
           "hf-columns": read_hf_columns, "listwise": read_listwise}


# ------------------------------------------------------------------------------------ assembling

def _positions(values, ids_array) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    idx = pc.index_in(values, value_set=ids_array)
    if isinstance(idx, pa.ChunkedArray):
        idx = idx.combine_chunks() if idx.num_chunks != 1 else idx.chunk(0)
    return idx.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32)


def _group(key_cols: list[np.ndarray], sizes: list[int], seq: np.ndarray, scores: np.ndarray, role: np.ndarray):
    """Merge rows whose key columns (query, doc[, doc]) are all equal: mean score, max role; the merged
    rows in (query, first appearance in the files) order.

    ``seq`` is each row's place in the input (file, row, a line's positive first). Returns
    ``(unique key columns, mean score, role, rows merged away, max spread of merged scores)``.
    One argsort of an int64 composite key when the id space allows (the key columns are freed as
    soon as it is built: ``key_cols`` is emptied), else a lexsort of the columns.
    """
    if float(np.prod([float(x) for x in sizes])) < 2.0 ** 62:
        key = key_cols.pop(0).astype(np.int64)
        for n in sizes[1:]:
            key *= n
            key += key_cols.pop(0)
        order = np.argsort(key)
        key.sort()                                  # in place: no second key-sized array
        new = np.empty(len(key), bool)
        new[0] = True
        np.not_equal(key[1:], key[:-1], out=new[1:])
        starts = np.flatnonzero(new)
        del new
        ukey = key[starts]
        del key
        uniq = []
        for n in reversed(sizes[1:]):
            uniq.insert(0, (ukey % n).astype(np.int32))
            ukey //= n
        uniq.insert(0, ukey.astype(np.int32))
    else:
        order = np.lexsort(key_cols[::-1])
        new = np.zeros(len(order), bool)
        new[0] = True
        for c in key_cols:
            cs = c[order]
            new[1:] |= cs[1:] != cs[:-1]
            del cs
        starts = np.flatnonzero(new)
        del new
        uniq = [c[order][starts] for c in key_cols]
        key_cols.clear()
    counts = np.diff(np.r_[starts, len(order)])
    sc = scores[order]
    mean = (np.add.reduceat(sc, starts, dtype=np.float64) / counts).astype(np.float32)
    spread = 0.0
    if (counts > 1).any():
        spread = float((np.maximum.reduceat(sc, starts) - np.minimum.reduceat(sc, starts)).max())
    del sc
    first_seq = np.minimum.reduceat(seq[order], starts)
    rl = np.maximum.reduceat(role[order], starts)
    del order
    final = np.lexsort((first_seq, uniq[0]))
    return [u[final] for u in uniq], mean[final], rl[final], int(len(seq) - len(starts)), spread


def import_scores(files: Sequence[str | os.PathLike], out: str | os.PathLike, opts: ImportOptions) -> dict:
    """Read ``files`` in format ``opts.fmt`` and write a complete score store at ``out`` (atomic).

    Returns a summary ``{"out", "rows", "queries_with_rows", "n_queries", "score_kind", "imported", "total_s",
    "timings": {"load_s" (dataset + whole-file readers), "read_s" (streamed parsing + id lookup), "group_s",
    "write_s"}}``.
    Raises :class:`~embed_kd.errors.DataError` / :class:`EmbedKDError` before anything is written.
    """
    import pyarrow as pa

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

        dataset = load_inputs(data=opts.data, split=opts.split, corpus=opts.corpus, queries=opts.queries)
        if not dataset.queries:
            raise EmbedKDError("score-teacher import: the dataset has no queries (pass --queries FILE or --data)")
        raws = [READERS[opts.fmt](f, opts) for f in sources]
    t_read = time.perf_counter()
    kinds = {r.kind for r in raws}
    if len(kinds) > 1:
        raise DataError(f"{', '.join(sources)}: some files hold margins and others absolute scores; import them apart")
    kind = kinds.pop()

    qids = list(dataset.queries)
    dids = list(dataset.corpus)
    q_arr, d_arr = pa.array(qids, pa.string()), pa.array(dids, pa.string())
    per_file = []
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("q", *(("p", "n") if kind == "margin" else ("d",)),
                                                          "s", "role", "seq")}
    missing_q = missing_d = dropped = 0
    first_missing = None
    doc_keys = ("p", "n") if kind == "margin" else ("d",)
    for fi, (src, raw) in enumerate(zip(sources, raws)):
        for cols in raw.batches:  # a big TSV: one parsed block at a time, strings dropped once indexed
            qi = _positions(cols["q"], q_arr)
            di = {k: _positions(cols[k], d_arr) for k in doc_keys}
            row = _numpy(cols["row"], np.int64)
            s = _numpy(cols["s"], np.float32)
            role = _numpy(cols["role"], np.int8) if "role" in cols else np.zeros(len(s), np.int8)
            bad_q = qi < 0
            bad = bad_q.copy()
            for k in doc_keys:
                bad |= di[k] < 0
            if bad.any():
                missing_q += len(np.unique(row[bad_q]))
                missing_d += int(sum((di[k] < 0).sum() for k in doc_keys))
                dropped += len(np.unique(row[bad]))
                if first_missing is None:
                    cand = np.flatnonzero(bad)
                    i = int(cand[np.argmin(row[cand])])  # the earliest line (a TSV block lists positives first)
                    what = (f"query id {cols['q'][i].as_py()!r} is not in the dataset's queries" if bad_q[i] else
                            f"document id {next(cols[k][i].as_py() for k in doc_keys if di[k][i] < 0)!r} "
                            "is not in the corpus")
                    first_missing = (raw.where(int(row[i])), what)
                keep = ~bad
                qi, row, s, role = qi[keep], row[keep], s[keep], role[keep]
                di = {k: v[keep] for k, v in di.items()}
            seq = (np.int64(fi) << 40) + row * 2 + (1 - role)  # file, row, a line's positive first
            for k, v in (("q", qi), *di.items(), ("s", s), ("role", role), ("seq", seq)):
                parts[k].append(v)
            del cols
        raw.batches = []
        per_file.append({"path": str(src), "sha256": _source_sha(src), "rows": raw.n_rows})
    if first_missing is not None and not opts.allow_missing_ids:
        where, what = first_missing
        raise DataError(f"{where}: {what} ({dropped} row(s) name ids the dataset lacks: {missing_q} query "
                        f"row(s), {missing_d} document reference(s)); check --data / --corpus / --queries, or pass "
                        "--allow-missing-ids to drop them")
    if dropped:
        logger.warning("dropped %d row(s) naming ids the dataset lacks (--allow-missing-ids)", dropped)

    n_docs = len(dids)
    t_group = time.perf_counter()
    def concat(name):  # one array at a time, each part freed as it is joined
        out = np.concatenate(parts[name]) if parts[name] else np.zeros(0, np.int32)
        parts[name].clear()
        return out

    key_cols = [concat("q")] + [concat(k) for k in doc_keys]
    s, role, seq = concat("s"), concat("role"), concat("seq")
    if not len(s):
        raise DataError(f"{', '.join(sources)}: no rows left after dropping unknown ids")
    uniq, score, role_g, dups, spread = _group(key_cols, [len(qids)] + [n_docs] * len(doc_keys), seq, s, role)
    del s, seq, role
    q_sel = uniq[0].astype(np.int64)
    if kind == "margin":
        cols_idx = {"p": uniq[1], "d": uniq[2]}
    else:
        cols_idx = {"d": uniq[1], "role": role_g}

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
    t_write = time.perf_counter()
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
            "score_kind": kind, "imported": imported, "total_s": time.perf_counter() - t0,
            "timings": {"load_s": t_read - t0, "read_s": t_group - t_read, "group_s": t_write - t_group,
                        "write_s": time.perf_counter() - t_write}}


def _numpy(arr, dtype) -> np.ndarray:
    """A pyarrow (chunked) array or a sequence as a numpy array of ``dtype``."""
    if hasattr(arr, "to_numpy"):
        return np.asarray(arr.to_numpy(), dtype)
    return np.asarray(arr, dtype)


def _source_sha(src: str) -> str:
    """sha256 of an input: the file, or every file of a folder (sorted), or the hub name for ``hf:``."""
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
