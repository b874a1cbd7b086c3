import shutil
import zipfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embed_kd.data import load_beir, load_qrels, resolve_dataset
from embed_kd.data import resolve as resolve_mod
from embed_kd.errors import DataError


def _copy(tiny_beir, tmp_path):
    dst = tmp_path / "ds"
    shutil.copytree(tiny_beir, dst)
    return dst


def test_loads_tiny(tiny_beir):
    ds = load_beir(tiny_beir, "test")
    assert len(ds.corpus) == 30 and len(ds.queries) == 6
    assert all(q.endswith("-test") for q in ds.queries)
    assert ds.doc_text("cat-0").startswith("cat cat ")


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "corpus.jsonl:3: malformed JSON"),
        ('["a list"]', "corpus.jsonl:3: expected a JSON object"),
        ('{"title": "t", "text": "x"}', "corpus.jsonl:3: missing field '_id'"),
        ('{"_id": "cat-0", "text": "dup"}', "corpus.jsonl:3: duplicate document id 'cat-0'"),
        ('{"_id": "z", "text": 5}', "corpus.jsonl:3: field 'text' must be a string"),
        ('{"_id": "z", "title": "", "text": "  "}', "corpus.jsonl:3: document 'z' has an empty title and text"),
    ],
)
def test_corpus_errors_name_file_and_line(tiny_beir, tmp_path, line, message):
    ds = _copy(tiny_beir, tmp_path)
    lines = (ds / "corpus.jsonl").read_text().splitlines()
    lines.insert(2, line)
    (ds / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_beir(ds, "test")


@pytest.mark.parametrize("kind, row, message", [
    ("corpus", {"_id": "", "text": "x"}, "empty document id"),
    ("corpus", {"_id": "cat-0", "text": "dup"}, "duplicate document id 'cat-0'"),
    ("corpus", {"_id": "z", "title": " ", "text": ""}, "document 'z' has an empty title and text"),
    ("queries", {"_id": "", "text": "x"}, "empty query id"),
    ("queries", {"_id": "q-cat-test", "text": "dup"}, "duplicate query id 'q-cat-test'"),
    ("queries", {"_id": "qe", "text": "  "}, "query 'qe' has an empty text"),
])
def test_beir_folder_and_user_files_share_one_row_rule(tiny_beir, tmp_path, kind, row, message):
    """A BEIR folder's corpus/queries.jsonl and a --corpus/--queries file (JSONL or TSV) refuse the same bad
    row with the same message, naming file and line (one rule: data.beir.add_document / add_query)."""
    import json

    from embed_kd.data.inputs import read_corpus, read_queries

    ds = _copy(tiny_beir, tmp_path)
    lines = (ds / f"{kind}.jsonl").read_text().splitlines()
    lines.insert(2, json.dumps(row))
    (ds / f"{kind}.jsonl").write_text("\n".join(lines) + "\n")
    tsv = tmp_path / f"{kind}.tsv"
    tsv.write_text("".join(f"{json.loads(x)['_id']}\t{json.loads(x)['text']}\n" for x in lines))
    read = read_corpus if kind == "corpus" else read_queries
    errors = []
    for load in (lambda: load_beir(ds, "test"), lambda: read(ds / f"{kind}.jsonl"), lambda: read(tsv)):
        with pytest.raises(DataError) as err:
            load()
        errors.append(str(err.value))
    assert errors == [f"{ds / f'{kind}.jsonl'}:3: {message}"] * 2 + [f"{tsv}:3: {message}"]


def test_bad_utf8_names_line(tiny_beir, tmp_path):
    ds = _copy(tiny_beir, tmp_path)
    data = (ds / "queries.jsonl").read_bytes().split(b"\n")
    data[1] = b'{"_id": "x", "text": "caf\xe9"}'
    (ds / "queries.jsonl").write_bytes(b"\n".join(data))
    with pytest.raises(DataError, match=r"queries.jsonl:2: not valid UTF-8"):
        load_beir(ds, "test")


@pytest.mark.parametrize(
    "row, message",
    [("q-cat-test\tcat-0", "expected 3 tab-separated fields"), ("q-cat-test\tcat-0\thigh", "score must be an integer")],
)
def test_qrels_errors(tiny_beir, tmp_path, row, message):
    ds = _copy(tiny_beir, tmp_path)
    with (ds / "qrels" / "test.tsv").open("a") as fh:
        fh.write(row + "\n")
    with pytest.raises(DataError, match=rf"test.tsv:14: {message}"):
        load_beir(ds, "test")


def test_unknown_ids_fail_or_are_dropped_and_counted(tiny_beir, tmp_path):
    ds = _copy(tiny_beir, tmp_path)
    with (ds / "qrels" / "test.tsv").open("a") as fh:
        fh.write("q-cat-test\tno-such-doc\t1\nno-such-query\tcat-0\t1\n")
    with pytest.raises(DataError, match=r"1 query id\(s\) not in queries.jsonl .*1 document id\(s\) not in corpus"):
        load_beir(ds, "test")
    loaded = load_beir(ds, "test", allow_missing_ids=True)
    assert loaded.dropped_qrels == 2
    assert "no-such-doc" not in loaded.qrels["q-cat-test"] and "no-such-query" not in loaded.qrels


def test_missing_split_lists_available(tiny_beir):
    with pytest.raises(DataError, match=r"split 'dev' not found \(available: test, train\)"):
        load_beir(tiny_beir, "dev")


def test_slice_keeps_judged_docs(tiny_beir):
    ds = load_beir(tiny_beir, "test").sliced(max_queries=2, max_docs=6)
    assert len(ds.queries) == 2 and len(ds.corpus) == 6
    assert all(d in ds.corpus for q in ds.qrels for d in ds.qrels[q])


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(
    st.text("abcXYZ019-_", min_size=1, max_size=8),
    st.dictionaries(st.text("abcdef0123.:", min_size=1, max_size=8), st.integers(-2, 3), min_size=1, max_size=4),
    min_size=1, max_size=6))
def test_qrels_roundtrip(tmp_path_factory, qrels):
    path = tmp_path_factory.mktemp("q") / "test.tsv"
    path.write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{r}\n" for q, docs in qrels.items() for d, r in docs.items()))
    assert load_qrels(path) == qrels


def test_resolve_name_under_env(tiny_beir, monkeypatch):
    monkeypatch.setenv("EMBED_KD_DATA", str(tiny_beir.parent))
    assert resolve_dataset("tiny") == tiny_beir


def test_resolve_offline_error_lists_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBED_KD_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setenv("EMBED_KD_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError) as err:
        resolve_dataset("scifoo", download=False)
    msg = str(err.value)
    assert "nowhere/beir/scifoo" in msg and "cache/beir/scifoo" in msg and "scifoo.zip" in msg


def test_download_path_unzips_into_cache(tiny_beir, tmp_path, monkeypatch):
    """The real download code, fed a file:// URL of a BEIR-style zip (no network needed)."""
    zpath = tmp_path / "srv" / "tiny.zip"
    zpath.parent.mkdir()
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in tiny_beir.rglob("*"):
            if f.is_file():
                zf.write(f, f"tiny/{f.relative_to(tiny_beir)}")
    monkeypatch.setenv("EMBED_KD_DATA", "")
    monkeypatch.setenv("EMBED_KD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(resolve_mod, "BEIR_URL", (zpath.parent.as_uri() + "/{name}.zip"))
    got = resolve_dataset("tiny")
    assert got == tmp_path / "cache" / "beir" / "tiny"
    assert load_beir(got, "test").qrels == load_beir(tiny_beir, "test").qrels
    assert not [p for p in got.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_folder_that_is_not_beir(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(DataError, match="not a BEIR folder"):
        resolve_dataset(tmp_path / "x")
