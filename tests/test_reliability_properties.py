"""Property-based tests (hypothesis) for the parsers: BEIR JSONL corpus/queries, qrels TSV, score store.

Two kinds of property: round trips (what a well-formed file holds is what the parser returns) and
totality (any bytes at all → either a result or a :class:`DataError` / :class:`ArtifactError`
naming the file — never another exception). Seeds are derandomised so that CI is reproducible.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embed_kd.data.beir import load_corpus, load_qrels, load_queries
from embed_kd.errors import ArtifactError, DataError

sys.path.insert(0, str(Path(__file__).parent))
from reliability_helpers import Case  # noqa: E402

SETTINGS = settings(max_examples=150, derandomize=True, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

ids = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"),
              min_size=1, max_size=12).filter(lambda s: s.strip() == s and s)
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
nonblank = texts.filter(lambda s: s.strip())


_RECORDED: set[str] = set()


def _record(record_property, what: str, examples: int = SETTINGS.max_examples) -> None:
    """One row in the report per property (the report marks it failed if the test fails)."""
    if what in _RECORDED:
        return
    _RECORDED.add(what)
    case = Case(record_property, "parsers (hypothesis)", what)
    case._write("property holds", "property holds", 0, f"up to {examples} generated examples, derandomized",
                False, [], False)


@SETTINGS
@given(docs=st.dictionaries(ids, st.tuples(texts, nonblank), min_size=1, max_size=8), ascii_only=st.booleans())
def test_corpus_round_trip(record_property, tmp_path_factory, docs, ascii_only):
    _record(record_property, 'corpus.jsonl round trip (unicode ids/titles/texts, ASCII-escaped or not)')
    path = tmp_path_factory.mktemp("c") / "corpus.jsonl"
    path.write_text("".join(json.dumps({"_id": d, "title": t, "text": x}, ensure_ascii=ascii_only) + "\n"
                            for d, (t, x) in docs.items()), encoding="utf-8")
    assert load_corpus(path) == {d: {"title": t, "text": x} for d, (t, x) in docs.items()}


@SETTINGS
@given(queries=st.dictionaries(ids, nonblank, min_size=1, max_size=8), bom=st.booleans())
def test_queries_round_trip(record_property, tmp_path_factory, queries, bom):
    _record(record_property, 'queries.jsonl round trip (with/without UTF-8 BOM)')
    path = tmp_path_factory.mktemp("q") / "queries.jsonl"
    body = "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()).encode()
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + body)
    assert load_queries(path) == queries


@SETTINGS
@given(qrels=st.dictionaries(ids, st.dictionaries(ids, st.integers(-2, 3), min_size=1, max_size=4),
                             min_size=1, max_size=6), header=st.booleans(), crlf=st.booleans())
def test_qrels_round_trip(record_property, tmp_path_factory, qrels, header, crlf):
    _record(record_property, 'qrels TSV round trip (header or not, CRLF or LF, negative grades)')
    path = tmp_path_factory.mktemp("r") / "test.tsv"
    nl = "\r\n" if crlf else "\n"
    rows = [f"{q}\t{d}\t{r}" for q, docs in qrels.items() for d, r in docs.items()]
    if not header and rows and rows[0].split("\t")[0].strip().lower() in {"query-id", "query_id", "qid"}:
        header = True  # a first row whose query id looks like a header is read as one, by design
    path.write_text(nl.join((["query-id\tcorpus-id\tscore"] if header else []) + rows) + nl, encoding="utf-8")
    assert load_qrels(path) == qrels


@SETTINGS
@given(data=st.binary(max_size=300) | st.lists(
    st.sampled_from([b'{"_id": "a", "text": "x"}', b'{"_id": "a", "text": ""}', b"{", b"[]", b"null", b"\xff\xfe",
                     b'{"_id": 1, "text": "y"}', b'{"text": "z"}', b"\xef\xbb\xbf", b"\xe9", b"", b"\t",
                     b'{"_id": "b", "title": null, "text": "w"}']), max_size=6).map(lambda xs: b"\n".join(xs)))
def test_jsonl_parsers_are_total(record_property, tmp_path_factory, data):
    _record(record_property, 'JSONL parsers total: any bytes -> data or a one-line DataError naming the file')
    path = tmp_path_factory.mktemp("j") / "corpus.jsonl"
    path.write_bytes(data)
    for loader in (load_corpus, load_queries):
        try:
            out = loader(path)
        except DataError as exc:
            assert str(exc).startswith(str(path)), exc
            assert "\n" not in str(exc)
        else:
            assert out and all(isinstance(k, str) and k for k in out)


@SETTINGS
@given(data=st.binary(max_size=200) | st.lists(
    st.sampled_from([b"query-id\tcorpus-id\tscore", b"q\td\t1", b"q\td\t2", b"q\td", b"q\td\tx", b"\tq\t1",
                     b"q\td\t1\textra", b"\xe9\td\t1", b"\xff\xfe", b"", b"  ", b"q\td\t-1"]), max_size=6
).map(lambda xs: b"\n".join(xs)))
def test_qrels_parser_is_total(record_property, tmp_path_factory, data):
    _record(record_property, 'qrels parser total: any bytes -> data or a one-line DataError naming the file')
    path = tmp_path_factory.mktemp("t") / "test.tsv"
    path.write_bytes(data)
    try:
        out = load_qrels(path)
    except DataError as exc:
        assert str(exc).startswith(str(path)) and "\n" not in str(exc), exc
    else:
        assert out and all(isinstance(r, int) for docs in out.values() for r in docs.values())


def _write_store(folder: Path, rows: dict[str, list[tuple[str, float, int]]], chunk_size: int):
    from embed_kd.teachers.store import ScoreStoreWriter, new_manifest

    qids = list(rows)
    m = new_manifest(dataset={"name": "toy", "split": "train", "corpus_fingerprint": "c", "queries_fingerprint": "q",
                              "qrels_fingerprint": "r", "n_queries": len(qids)},
                     candidates=[{"source": "bm25", "name": "bm25", "k": 5}],
                     teachers=[{"name": "t", "spec": "t", "kind": "bm25", "fingerprint": "f", "activation": None,
                                "max_length": None, "backend": "python"}], ensemble=None)
    w = ScoreStoreWriter.create(folder, m, chunk_size=chunk_size)
    for a, b in w.pending():
        cols = {"query_id": [], "doc_id": [], "label": [], "score": [], "score__t": [], "rank__bm25": []}
        for q in qids[a:b + 1]:
            for i, (d, s, lab) in enumerate(rows[q]):
                for k, v in (("query_id", q), ("doc_id", d), ("label", lab), ("score", s), ("score__t", s),
                             ("rank__bm25", i + 1)):
                    cols[k].append(v)
        w.write_chunk(a, b, cols)
    w.finalize()


store_rows = st.dictionaries(
    ids, st.lists(st.tuples(ids, st.floats(-1e6, 1e6, width=32), st.integers(0, 2)), min_size=1, max_size=5,
                  unique_by=lambda r: r[0]), min_size=1, max_size=6)


@settings(SETTINGS, max_examples=40)
@given(rows=store_rows, chunk_size=st.integers(1, 4))
def test_score_store_round_trip(record_property, tmp_path_factory, rows, chunk_size):
    _record(record_property, 'score store round trip (random queries/docs/scores, chunk sizes 1-4)', 40)
    from embed_kd.teachers.store import open_scores

    folder = tmp_path_factory.mktemp("s") / "store"
    _write_store(folder, rows, chunk_size)
    run = open_scores(folder).to_run()
    assert run == {q: {d: pytest.approx(s) for d, s, _ in r} for q, r in rows.items()}


@settings(SETTINGS, max_examples=60)
@given(cut=st.floats(0.0, 0.999), which=st.integers(0, 10), mode=st.sampled_from(["truncate", "flip", "manifest"]))
def test_damaged_score_store_is_refused(record_property, tmp_path_factory, cut, which, mode):
    """Any truncation or flipped byte of a chunk, or a truncated manifest → ArtifactError (never wrong rows)."""
    _record(record_property, 'score store: any truncation / flipped byte of a chunk, or a truncated manifest -> ArtifactError', 60)
    from embed_kd.teachers.store import open_scores

    rows = {f"q{i}": [(f"d{j}", float(i * 10 + j), int(j == 0)) for j in range(4)] for i in range(5)}
    folder = tmp_path_factory.mktemp("s") / "store"
    _write_store(folder, rows, 2)
    chunks = sorted((folder / "shards").iterdir())
    target = folder / "manifest.json" if mode == "manifest" else chunks[which % len(chunks)]
    data = bytearray(target.read_bytes())
    pos = int(cut * len(data))
    if mode == "flip":
        data[pos] ^= 0x01
        target.write_bytes(bytes(data))
    else:
        target.write_bytes(bytes(data[:pos]))
    with pytest.raises(ArtifactError) as info:
        open_scores(folder).to_run()
    assert str(target.parent if mode == "manifest" else target) in str(info.value) or target.name in str(info.value)
    shutil.rmtree(folder.parent, ignore_errors=True)
