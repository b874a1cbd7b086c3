"""Bad inputs over the CLI: each → one clear ``Error:`` line naming the file and the problem, exit != 0,
no traceback, no partial output. Fingerprint checks between artifacts. Read-only and full disks.

Most cases run the CLI in-process (click's CliRunner, fast); the cases marked ``subprocess`` run
``python -m embed_kd`` for real, to prove what a user's terminal shows. Full and read-only disks are
real (a tiny tmpfs / a read-only bind mount in a private mount namespace, ``unshare -r -m``) where
the machine allows it; ``ENOSPC`` is also *injected* at the write layer (``os.fsync``) so that the
path is covered everywhere. Each case records its outcome for ``scripts/reliability_report.py``.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from embed_kd.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from reliability_helpers import LISTING, Case, cli, in_tmpfs, namespaces_available, read_only, snapshot  # noqa: E402


def invoke(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r.exit_code, r.stderr if r.stderr_bytes is not None else r.output, r.exception, r


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as fh:
        fh.write(data)


# ----------------------------------------------------------------------------------------- data files

def _doc(**kw) -> bytes:
    return (json.dumps(kw) + "\n").encode()


DATA_CASES = {
    # id: (description, file, mutation(bytes) -> bytes, needles)
    "corpus-malformed-json": ("corpus.jsonl line is not JSON", "corpus.jsonl",
                              lambda b: b + b'{"_id": "x", "text": \n', ["corpus.jsonl:31", "malformed JSON"]),
    "corpus-not-object": ("corpus.jsonl line is a JSON array", "corpus.jsonl", lambda b: b + b"[1, 2]\n",
                          ["corpus.jsonl:31", "expected a JSON object"]),
    "corpus-latin1": ("latin-1 bytes in corpus.jsonl", "corpus.jsonl",
                      lambda b: b + _doc(_id="x", text="caf\u00e9").replace("\\u00e9".encode(), b"\xe9"),
                      ["corpus.jsonl:31", "not valid UTF-8"]),
    "queries-utf16-bom": ("queries.jsonl saved as UTF-16 (BOM)", "queries.jsonl",
                          lambda b: b.decode().encode("utf-16"), ["queries.jsonl", "UTF-16"]),
    "queries-utf32-bom": ("queries.jsonl saved as UTF-32 (BOM)", "queries.jsonl",
                          lambda b: b.decode().encode("utf-32"), ["queries.jsonl", "UTF-32"]),
    "corpus-empty-text": ("document with empty title and text", "corpus.jsonl",
                          lambda b: b + _doc(_id="e", title="", text="   "), ["corpus.jsonl:31", "empty title and text"]),
    "queries-empty-text": ("query with an empty text", "queries.jsonl", lambda b: b + _doc(_id="qe", text=""),
                           ["queries.jsonl:13", "empty text"]),
    "corpus-duplicate-id": ("duplicate document id", "corpus.jsonl",
                            lambda b: b + _doc(_id="cat-0", title="", text="again"),
                            ["corpus.jsonl:31", "duplicate document id 'cat-0'"]),
    "queries-duplicate-id": ("duplicate query id", "queries.jsonl",
                             lambda b: b + _doc(_id="q-cat-test", text="again"),
                             ["queries.jsonl:13", "duplicate query id 'q-cat-test'"]),
    "corpus-missing-id": ("document without _id", "corpus.jsonl", lambda b: b + _doc(title="t", text="x"),
                          ["corpus.jsonl:31", "missing field '_id'"]),
    "corpus-text-not-string": ("document text is a list", "corpus.jsonl", lambda b: b + _doc(_id="n", text=["x"]),
                               ["corpus.jsonl:31", "field 'text' must be a string"]),
    "corpus-empty-file": ("empty corpus.jsonl", "corpus.jsonl", lambda b: b"", ["corpus.jsonl", "no documents"]),
    "qrels-unknown-doc": ("qrels names a document not in the corpus", "qrels/test.tsv",
                          lambda b: b + b"q-cat-test\tnope-1\t1\n", ["test.tsv", "not in corpus.jsonl", "'nope-1'",
                                                                     "--allow-missing-ids"]),
    "qrels-unknown-query": ("qrels names a query not in queries.jsonl", "qrels/test.tsv",
                            lambda b: b + b"q-nope\tcat-0\t1\n", ["test.tsv", "not in queries.jsonl", "'q-nope'"]),
    "qrels-two-fields": ("qrels row with 2 fields", "qrels/test.tsv", lambda b: b + b"q-cat-test\tcat-0\n",
                         ["test.tsv:14", "expected 3 tab-separated fields"]),
    "qrels-score-not-int": ("qrels score is not an integer", "qrels/test.tsv",
                            lambda b: b + b"q-cat-test\tcat-3\thigh\n", ["test.tsv:14", "score must be an integer"]),
    "qrels-conflicting-duplicate": ("the same pair judged twice with different scores", "qrels/test.tsv",
                                    lambda b: b + b"q-cat-test\tcat-0\t0\n", ["test.tsv:14", "judged twice"]),
    "qrels-latin1": ("latin-1 bytes in qrels", "qrels/test.tsv", lambda b: b + b"q-cat-test\tcaf\xe9\t1\n",
                     ["test.tsv:14", "not valid UTF-8"]),
    "qrels-header-only": ("qrels with only a header", "qrels/test.tsv", lambda b: b.split(b"\n")[0] + b"\n",
                          ["test.tsv", "no judgments"]),
}


@pytest.mark.parametrize("case_id", list(DATA_CASES))
def test_bad_data_file(case_id, tiny_beir, tmp_path, record_property):
    description, rel, mutate, needles = DATA_CASES[case_id]
    case = Case(record_property, "data files", f"{description} (`eval`)")
    data = _copy(tiny_beir, tmp_path / "data")
    f = data / rel
    f.write_bytes(mutate(f.read_bytes()))
    out = tmp_path / "out" / "result.json"
    code, err, exc, _ = invoke("eval", "--data", data, "--model", "bm25", "-o", out, "--no-progress")
    case.error(code, err, needles, absent=[out], folders=[tmp_path], exception=exc)


def test_bad_corpus_through_index_build_and_score_teacher(tiny_beir, tiny_model, tmp_path, record_property):
    case = Case(record_property, "data files", "malformed corpus line (`index build`, `score-teacher`)")
    data = _copy(tiny_beir, tmp_path / "data")
    _append(data / "corpus.jsonl", b"{oops\n")
    out = tmp_path / "idx"
    code, err, exc, _ = invoke("index", "build", "--data", data, "--doc-model", tiny_model, "-o", out, "--no-progress",
                               "--no-cache")
    case.error(code, err, ["corpus.jsonl:31", "malformed JSON"], absent=[out], folders=[tmp_path], exception=exc)
    out = tmp_path / "scores"
    code, err, exc, _ = invoke("score-teacher", "--data", data, "--candidates", "bm25:3", "--teacher", "bm25", "-o",
                               out, "--no-progress")
    case.error(code, err, ["corpus.jsonl:31", "malformed JSON"], absent=[out], folders=[tmp_path], exception=exc)


def test_utf8_bom_is_accepted(tiny_beir, tmp_path, record_property):
    case = Case(record_property, "data files", "UTF-8 byte-order mark at the start of corpus/queries/qrels")
    data = _copy(tiny_beir, tmp_path / "data")
    for rel in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        (data / rel).write_bytes(b"\xef\xbb\xbf" + (data / rel).read_bytes())
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    code, err, exc, _ = invoke("eval", "--data", data, "--model", "bm25", "-o", a, "--no-progress")
    assert invoke("eval", "--data", tiny_beir, "--model", "bm25", "-o", b, "--no-progress")[0] == 0
    case.ok("accepted (BOM skipped)", code, err, folders=[tmp_path], exception=exc,
            note="same metrics and corpus fingerprint as without the BOM")
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert ra["metrics"] == rb["metrics"] and ra["dataset"]["corpus_fingerprint"] == rb["dataset"]["corpus_fingerprint"]


def test_unknown_ids_dropped_only_when_asked(tiny_beir, tmp_path, record_property):
    case = Case(record_property, "data files", "qrels with unknown ids + `--allow-missing-ids`: dropped and counted")
    data = _copy(tiny_beir, tmp_path / "data")
    _append(data / "qrels" / "test.tsv", b"q-cat-test\tnope-1\t1\nq-nope\tcat-0\t1\n")
    code, err, exc, _ = invoke("eval", "--data", data, "--model", "bm25", "--allow-missing-ids", "--no-progress")
    case.ok("accepted (2 rows dropped, warned)", code, err, exception=exc)
    assert "dropped 2 qrels row(s)" in err


def test_missing_split_and_data_folder(tiny_beir, tmp_path, record_property):
    case = Case(record_property, "data files", "unknown split; --data path that does not exist")
    code, err, exc, _ = invoke("eval", "--data", tiny_beir, "--split", "dev", "--model", "bm25")
    case.error(code, err, ["dev.tsv", "split 'dev' not found", "available: test, train"], exception=exc)
    code, err, exc, _ = invoke("eval", "--data", tmp_path / "nowhere", "--model", "bm25")
    case.error(code, err, ["nowhere", "no such folder"], exception=exc)


# ----------------------------------------------------------------------------------------- models

def test_unknown_and_broken_models(tiny_beir, tiny_model, tmp_path, record_property):
    case = Case(record_property, "models", "unknown model name; empty folder; truncated weights; malformed modules.json")
    out = tmp_path / "r.json"
    args = ("eval", "--data", tiny_beir, "--no-progress", "--no-cache", "-o", out)
    code, err, exc, _ = invoke(*args, "--model", "no-such-model")
    case.error(code, err, ["model 'no-such-model' not found"], absent=[out], exception=exc)
    (tmp_path / "empty").mkdir()
    code, err, exc, _ = invoke(*args, "--model", tmp_path / "empty")
    case.error(code, err, ["empty", "could not be loaded"], absent=[out], exception=exc)
    trunc = _copy(tiny_model, tmp_path / "trunc")
    weights = next(trunc.rglob("model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:300])
    code, err, exc, _ = invoke(*args, "--model", trunc)
    case.error(code, err, ["trunc", "could not be loaded"], absent=[out], exception=exc)
    garbled = _copy(tiny_model, tmp_path / "garbled")
    (garbled / "modules.json").write_text("{oops")
    code, err, exc, _ = invoke(*args, "--model", garbled)
    case.error(code, err, ["garbled", "could not be loaded"], absent=[out], exception=exc)


def test_dimension_mismatch(tiny_beir, tiny_model, tiny_model_wide, tmp_path, record_property):
    case = Case(record_property, "models", "asymmetric eval with a 32-dim query model and a 48-dim doc model")
    out = tmp_path / "r.json"
    code, err, exc, _ = invoke("eval", "--data", tiny_beir, "--query-model", tiny_model, "--doc-model",
                               tiny_model_wide, "-o", out, "--no-progress", "--no-cache")
    case.error(code, err, ["32-dim", "48-dim"], absent=[out], exception=exc)


def test_ensemble_with_loyalty_teacher_is_refused(tiny_beir, tiny_model, tmp_path, record_property):
    case = Case(record_property, "models", "`eval --ensemble CONFIG --loyalty-teacher M` (crashed before: NameError)")
    cfg = tmp_path / "ens.yaml"
    cfg.write_text(f"members:\n  - {{name: bm25, model: bm25}}\n  - {{name: dense, model: '{tiny_model}'}}\n")
    code, err, exc, _ = invoke("eval", "--data", tiny_beir, "--ensemble", cfg, "--loyalty-teacher", tiny_model,
                               "--no-progress")
    case.error(code, err, ["--loyalty-teacher", "--ensemble"], exception=exc)


def test_malformed_configs(tiny_beir, tmp_path, record_property):
    case = Case(record_property, "configs", "malformed / latin-1 YAML (ensemble and train configs)")
    bad = tmp_path / "bad.yaml"
    bad.write_text("members: [a,\n")
    code, err, exc, _ = invoke("eval", "--data", tiny_beir, "--ensemble", bad)
    case.error(code, err, ["bad.yaml", "not valid YAML", "line "], exception=exc)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"data: caf\xe9\n")
    code, err, exc, _ = invoke("train", latin)
    case.error(code, err, ["latin.yaml", "not valid UTF-8"], exception=exc)


# ----------------------------------------------------------------------------------------- artifacts

@pytest.fixture(scope="module")
def store(tiny_beir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scores") / "bm25-train"
    code, err, _, r = invoke("score-teacher", "--data", tiny_beir, "--split", "train", "--candidates", "bm25:5",
                             "--teacher", "bm25", "--chunk-size", "2", "-o", out, "--no-progress", "-q")
    assert code == 0, r.output
    return out


def _export(src, out):
    return invoke("score-teacher", "export", src, "--format", "margin-mse-tsv", "-o", out)


def test_corrupt_score_stores(store, tmp_path, record_property):
    case = Case(record_property, "artifacts", "score store: truncated Parquet chunk; one flipped byte; edited manifest")
    chunk = "chunk-000002-000003.parquet"
    trunc = _copy(store, tmp_path / "trunc")
    p = trunc / "shards" / chunk
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    out = tmp_path / "triples.tsv"
    code, err, exc, _ = _export(trunc, out)
    case.error(code, err, [chunk, "unreadable chunk"], absent=[out], folders=[tmp_path], exception=exc)
    flipped = _copy(store, tmp_path / "flipped")
    p = flipped / "shards" / chunk
    data = bytearray(p.read_bytes())
    data[len(data) // 3] ^= 0x01
    p.write_bytes(bytes(data))
    code, err, exc, _ = _export(flipped, out)
    case.error(code, err, [chunk, "checksum does not match"], absent=[out], folders=[tmp_path], exception=exc)
    edited = _copy(store, tmp_path / "edited")
    m = json.loads((edited / "manifest.json").read_text())
    m["dataset"]["corpus_fingerprint"] = "0" * 16
    (edited / "manifest.json").write_text(json.dumps(m))
    code, err, exc, _ = _export(edited, out)
    case.error(code, err, ["manifest.json", "config_fingerprint"], absent=[out], folders=[tmp_path], exception=exc)


def _train_args(data, scores, teacher, out):
    return ("train", "--data", data, "--scores", scores, "--teacher", teacher, "--student-from-teacher",
            "--keep-layers", "0", "-o", out, "--no-progress", "--set", "train.max_steps=1")


def test_train_refuses_scores_of_another_corpus_or_split(store, tiny_beir, tiny_model, tmp_path, record_property):
    case = Case(record_property, "fingerprints", "`train` with scores made on another corpus / another split")
    other = _copy(tiny_beir, tmp_path / "other")
    lines = (other / "corpus.jsonl").read_text().splitlines(keepends=True)
    doc = json.loads(lines[3])
    doc["text"] += " edited"
    lines[3] = json.dumps(doc) + "\n"
    (other / "corpus.jsonl").write_text("".join(lines))
    out = tmp_path / "student"
    code, err, exc, _ = invoke(*_train_args(other, store, tiny_model, out))
    case.error(code, err, [str(store), "another dataset", "corpus_fingerprint"], absent=[out, Path(f"{out}.work")],
               folders=[tmp_path], exception=exc)
    test_store = tmp_path / "test-scores"
    assert invoke("score-teacher", "--data", tiny_beir, "--split", "test", "--candidates", "bm25:5", "--teacher",
                  "bm25", "-o", test_store, "--no-progress", "-q")[0] == 0
    code, err, exc, _ = invoke(*_train_args(tiny_beir, test_store, tiny_model, out))
    case.error(code, err, [str(test_store), "split 'test'"], absent=[out], folders=[tmp_path], exception=exc)


def _student_declaring(src: Path, dst: Path, teacher_fp: str) -> Path:
    """A copy of ``src`` with a train-run manifest saying it was trained against ``teacher_fp``."""
    shutil.copytree(src, dst)
    (dst / "embed_kd_train.json").write_text(json.dumps(
        {"schema": "embed-kd/train-run@1", "teacher": {"spec": "teacher-a", "fingerprint": teacher_fp}}))
    return dst


def _fp(model_dir) -> str:
    from embed_kd.models import fingerprint_model, load_sentence_transformer

    return fingerprint_model(load_sentence_transformer(str(model_dir)))


def test_student_of_teacher_a_against_teacher_b(tiny_beir, tiny_model, tiny_model_b, tmp_path, record_property):
    """Asymmetric eval: documents by tiny_model (B), queries by a student declaring tiny_model_b (A)."""
    case = Case(record_property, "fingerprints",
                "student trained against teacher A, asymmetric `eval` against teacher B (+ --allow-teacher-mismatch)")
    student = _student_declaring(tiny_model_b, tmp_path / "student", _fp(tiny_model_b))
    out = tmp_path / "r.json"
    args = ("eval", "--data", tiny_beir, "--query-model", student, "--doc-model", tiny_model, "--no-progress",
            "--cache-dir", tmp_path / "cache", "-o", out)
    code, err, exc, _ = invoke(*args)
    case.error(code, err, ["aligned to a teacher with fingerprint", "embed_kd_train.json", "--allow-teacher-mismatch"],
               absent=[out], exception=exc)
    code, err, exc, _ = invoke(*args, "--allow-teacher-mismatch")
    assert code == 0 and "--allow-teacher-mismatch" in err and json.loads(out.read_text())["alignment"] == "mismatch"
    ok = _student_declaring(tiny_model_b, tmp_path / "aligned", _fp(tiny_model))
    out.unlink()
    code, err, exc, _ = invoke(*args[:4], ok, *args[5:])
    assert code == 0 and json.loads(out.read_text())["alignment"] == "declared"


@pytest.fixture(scope="module")
def index_dir(tiny_beir, tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("index") / "idx"
    code, _, _, r = invoke("index", "build", "--data", tiny_beir, "--doc-model", tiny_model, "-o", out,
                           "--no-progress", "--no-cache", "-q")
    assert code == 0, r.output
    return out


def test_serve_refuses_an_index_of_another_doc_model(index_dir, tiny_model_b, tmp_path, record_property):
    from embed_kd.serve.engine import SearchEngine
    from embed_kd.serve.runner import free_port

    case = Case(record_property, "fingerprints",
                "`serve` a student of teacher A over an index built by teacher B (+ --allow-teacher-mismatch)")
    student = _student_declaring(tiny_model_b, tmp_path / "student", _fp(tiny_model_b))
    code, err, exc, _ = invoke("serve", "--index", index_dir, "--query-model", student, "--port", free_port(), "-q")
    case.error(code, err, ["aligned to a teacher with fingerprint", "--allow-teacher-mismatch"], exception=exc)
    engine = SearchEngine.load(index_dir, str(student), allow_teacher_mismatch=True)
    assert engine.alignment == "mismatch" and engine.info()["alignment"] == "mismatch"


def test_corrupt_index_folders(index_dir, tmp_path, record_property):
    from embed_kd.serve.runner import free_port

    case = Case(record_property, "artifacts", "index: truncated index.faiss (verified, and with --no-verify); edited ids.json")
    trunc = _copy(index_dir, tmp_path / "trunc")
    f = trunc / "index.faiss"
    f.write_bytes(f.read_bytes()[:100])
    code, err, exc, _ = invoke("index", "info", trunc)
    case.error(code, err, ["index.faiss", "checksum does not match"], exception=exc)
    code, err, exc, _ = invoke("serve", "--index", trunc, "--no-verify", "--port", free_port(), "-q")
    case.error(code, err, ["index.faiss", "FAISS cannot read it"], exception=exc)
    edited = _copy(index_dir, tmp_path / "edited")
    ids = json.loads((edited / "ids.json").read_text())
    (edited / "ids.json").write_text(json.dumps(ids[::-1]))
    code, err, exc, _ = invoke("index", "info", edited)
    case.error(code, err, ["ids.json", "checksum does not match"], exception=exc)


def test_index_add_of_another_doc_model_and_duplicates(index_dir, tiny_beir, tiny_model_b, tmp_path, record_property):
    case = Case(record_property, "fingerprints", "`index add` with another doc model / ids already indexed")
    idx = _copy(index_dir, tmp_path / "idx")
    before = snapshot(idx)
    new = tmp_path / "new.jsonl"
    new.write_text(json.dumps({"_id": "new-1", "title": "", "text": "cat dog"}) + "\n")
    code, err, exc, _ = invoke("index", "add", idx, "--docs", new, "--doc-model", tiny_model_b, "--no-progress",
                               "--no-cache")
    case.error(code, err, ["fingerprint", "same model"], unchanged={idx: before}, folders=[tmp_path], exception=exc)
    code, err, exc, _ = invoke("index", "add", idx, "--docs", tiny_beir / "corpus.jsonl", "--no-progress", "--no-cache")
    case.error(code, err, ["already in the index", "'cat-0'"], unchanged={idx: before}, folders=[tmp_path],
               exception=exc)


def test_cache_of_another_tokenizer_length_is_not_reused(tiny_beir, tiny_model, tmp_path, record_property):
    case = Case(record_property, "fingerprints", "doc-embedding cache: a model with another max_seq_length misses")
    short = _copy(tiny_model, tmp_path / "short")
    cfg = short / "sentence_bert_config.json"
    conf = json.loads(cfg.read_text())
    conf["max_seq_length"] = 8
    cfg.write_text(json.dumps(conf))
    cache = tmp_path / "cache"
    results = []
    for i, model in enumerate((tiny_model, short, short)):
        out = tmp_path / f"r{i}.json"
        code, err, exc, _ = invoke("eval", "--data", tiny_beir, "--model", model, "--cache-dir", cache, "-o", out,
                                   "--no-progress")
        assert code == 0, err
        results.append(json.loads(out.read_text()))
    assert [r["cache"]["docs"] for r in results] == ["miss", "miss", "hit"]
    assert results[0]["cache"]["path"] != results[1]["cache"]["path"]
    assert results[0]["metrics"] != results[1]["metrics"]  # a truncation at 8 tokens changes the vectors
    case.ok("refused by design (cache miss, re-encoded)", 0, folders=[cache],
            note="32-token entry not reused for 8 tokens; second 8-token run hits its own entry")


def test_truncated_cache_entry_is_rebuilt(tiny_beir, tiny_model, tmp_path, record_property):
    case = Case(record_property, "artifacts", "doc-embedding cache: truncated embeddings.npy is detected and rebuilt")
    cache = tmp_path / "cache"
    first = tmp_path / "a.json"
    assert invoke("eval", "--data", tiny_beir, "--model", tiny_model, "--cache-dir", cache, "-o", first,
                  "--no-progress")[0] == 0
    npy = next(cache.rglob("embeddings.npy"))
    npy.write_bytes(npy.read_bytes()[:-64])
    second = tmp_path / "b.json"
    code, err, exc, _ = invoke("eval", "--data", tiny_beir, "--model", tiny_model, "--cache-dir", cache, "-o", second,
                               "--no-progress")
    case.ok("recovered (warned, re-encoded)", code, err, folders=[cache], exception=exc,
            note="checksum mismatch logged; metrics equal the first run")
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    assert "checksum mismatch" in err and b["cache"]["docs"] == "miss" and a["metrics"] == b["metrics"]


def test_broken_eval_results_for_report(tmp_path, record_property):
    case = Case(record_property, "artifacts", "`report` of a truncated / incomplete eval result JSON")
    bad = tmp_path / "trunc.json"
    bad.write_text('{"schema": "embed-kd/eval@1", "metr')
    code, err, exc, _ = invoke("report", bad)
    case.error(code, err, ["trunc.json", "not valid JSON"], exception=exc)
    bare = tmp_path / "bare.json"
    bare.write_text('{"schema": "embed-kd/eval@1", "mode": "bm25"}')
    code, err, exc, _ = invoke("report", bare)
    case.error(code, err, ["bare.json", "missing field(s)", "metrics.ndcg_at_10"], exception=exc)


# ----------------------------------------------------------------------------------------- outputs

def test_existing_outputs_are_not_clobbered(tiny_beir, store, tmp_path, record_property):
    case = Case(record_property, "outputs", "output exists (file / store of another config / a file where a folder goes)")
    out = tmp_path / "r.json"
    out.write_text('{"schema": "embed-kd/eval@1", "note": "an earlier result"}')  # a user's file: round 2's cases
    code, err, exc, _ = invoke("eval", "--data", tiny_beir, "--model", "bm25", "-o", out)
    case.error(code, err, ["r.json", "already exists", "--overwrite"], unchanged={out: snapshot(out)}, exception=exc)
    other = _copy(store, tmp_path / "store")
    before = snapshot(other)
    code, err, exc, _ = invoke("score-teacher", "--data", tiny_beir, "--candidates", "bm25:3", "--teacher", "bm25",
                               "-o", other, "--no-progress")
    case.error(code, err, ["another config", "--overwrite"], unchanged={other: before}, folders=[tmp_path],
               exception=exc)
    code, err, exc, _ = invoke("score-teacher", "--data", tiny_beir, "--candidates", "bm25:3", "--teacher", "bm25",
                               "-o", out, "--no-progress")
    case.error(code, err, ["r.json", "is a file"], unchanged={out: snapshot(out)}, exception=exc)
    code, err, exc, _ = invoke("eval", "--data", tiny_beir, "--model", "bm25", "-o", out / "x.json")
    case.error(code, err, ["r.json", "is not a folder"], unchanged={out: snapshot(out)}, exception=exc)


def test_injected_enospc_at_the_write_layer(tiny_beir, tiny_model, tmp_path, monkeypatch, record_property):
    """ENOSPC raised by ``os.fsync`` (where delayed-allocation file systems report a full disk)."""
    import embed_kd.io as io_mod

    case = Case(record_property, "outputs", "disk full, injected: OSError(ENOSPC) from fsync (`eval -o --save-run`)")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io_mod.os, "fsync", full)
    out, run = tmp_path / "out" / "r.json", tmp_path / "out" / "run.json"
    code, err, exc, _ = invoke("eval", "--data", tiny_beir, "--model", "bm25", "-o", out, "--save-run", run)
    case.error(code, err, ["run.json", "No space left on device"], absent=[out, run], folders=[tmp_path],
               exception=exc)


def test_eval_outputs_are_all_or_nothing(tiny_beir, tmp_path, monkeypatch, record_property):
    """--save-run is written first; when -o then fails, the run file is removed too."""
    import embed_kd.io as io_mod

    case = Case(record_property, "outputs", "second of two outputs fails (`eval --save-run R -o O`, ENOSPC on O)")
    real = io_mod.atomic_write_bytes
    out, run = tmp_path / "r.json", tmp_path / "run.json"

    def second_fails(path, data, **kw):
        if Path(path) == out:
            raise io_mod.ArtifactError(f"{path}: write failed (No space left on device)")
        return real(path, data, **kw)

    monkeypatch.setattr(io_mod, "atomic_write_bytes", second_fails)
    code, err, exc, _ = invoke("eval", "--data", tiny_beir, "--model", "bm25", "-o", out, "--save-run", run)
    case.error(code, err, ["r.json", "No space left"], absent=[out, run], folders=[tmp_path], exception=exc)


def _needs_ns():
    if not namespaces_available():
        pytest.skip("no private mount namespace here (unshare -r -m): real full/read-only disks not testable")


@pytest.mark.parametrize("command", ["eval", "index-build", "score-teacher"])
def test_really_full_disk(command, tiny_beir, tiny_model, tmp_path, record_property):
    """A tiny tmpfs: the write fails with ENOSPC for real (subprocess in a private mount namespace)."""
    _needs_ns()
    size = {"eval": "4k", "index-build": "12k", "score-teacher": "12k"}[command]
    case = Case(record_property, "outputs", f"disk full, real ({size} tmpfs): `{command}` (subprocess)")
    disk = tmp_path / "disk"
    disk.mkdir()
    out = disk / "out"
    args = {"eval": ("eval", "--data", tiny_beir, "--model", tiny_model, "--no-cache", "--no-progress", "-o",
                     disk / "r.json", "--save-run", disk / "run.json"),
            "index-build": ("index", "build", "--data", tiny_beir, "--doc-model", tiny_model, "--cache-dir",
                            disk / "cache", "--no-progress", "-o", out),
            "score-teacher": ("score-teacher", "--data", tiny_beir, "--split", "train", "--candidates", "bm25:30",
                              "--teacher", "bm25", "--chunk-size", "1", "--no-progress", "-o", out)}[command]
    p = cli(*args, wrap=in_tmpfs(disk, size))
    err, _, listing = p.stderr.partition(LISTING)
    case.error(p.returncode, err, ["No space left on device"])
    left = [ln for ln in listing.splitlines() if ln.startswith(".") and ".tmp" in ln]
    assert not left, listing
    if command == "eval":  # neither -o nor --save-run
        assert "r.json" not in listing and "run.json" not in listing, listing
    if command == "index-build":
        assert "idx" not in listing.replace(str(disk), ""), listing
    # score-teacher: a resumable store; whole committed chunks may stay (a rerun with space resumes)


@pytest.mark.parametrize("command", ["eval", "index-build", "score-teacher", "train"])
def test_read_only_output_folder(command, tiny_beir, tiny_model, store, tmp_path, record_property):
    case = Case(record_property, "outputs", f"read-only output folder: `{command}`")
    ro = tmp_path / "ro"
    ro.mkdir()
    args = {"eval": ("eval", "--data", tiny_beir, "--model", "bm25", "-o", ro / "r.json"),
            "index-build": ("index", "build", "--data", tiny_beir, "--doc-model", tiny_model, "--no-cache",
                            "--no-progress", "-o", ro / "idx"),
            "score-teacher": ("score-teacher", "--data", tiny_beir, "--candidates", "bm25:3", "--teacher", "bm25",
                              "--no-progress", "-o", ro / "scores"),
            "train": (*_train_args(tiny_beir, store, tiny_model, ro / "student"), "--set",
                      "examples.dev_queries=1")}[command]
    if os.geteuid() != 0:  # an ordinary user: permissions are enough (CliRunner, in-process)
        ro.chmod(0o555)
        try:
            code, err, exc, _ = invoke(*args)
        finally:
            ro.chmod(0o755)
    else:  # root ignores permissions: a read-only bind mount (EROFS), in a subprocess
        _needs_ns()
        p = cli(*args, wrap=read_only(ro))
        code, err, exc = p.returncode, p.stderr, None
    case.error(code, err, [str(ro)], exception=exc)
    assert not list(ro.iterdir())


# ----------------------------------------------------------------------------------------- real subprocesses

@pytest.mark.parametrize("what", ["malformed-jsonl", "unknown-model", "truncated-faiss"])
def test_real_subprocess_shows_one_line(what, tiny_beir, index_dir, tmp_path, record_property):
    case = Case(record_property, "subprocess", f"real terminal: {what} → stderr is one Error line, exit 2")
    if what == "malformed-jsonl":
        data = _copy(tiny_beir, tmp_path / "data")
        _append(data / "queries.jsonl", b'{"_id": "x", "text": "a"\n')
        p = cli("eval", "--data", data, "--model", "bm25", "-o", tmp_path / "r.json")
        needles = ["queries.jsonl:13", "malformed JSON"]
    elif what == "unknown-model":
        p = cli("eval", "--data", tiny_beir, "--model", "nobody/no-such-model-xyz", "-o", tmp_path / "r.json")
        needles = ["nobody/no-such-model-xyz"]
    else:
        idx = _copy(index_dir, tmp_path / "idx")
        (idx / "index.faiss").write_bytes((idx / "index.faiss").read_bytes()[:64])
        p = cli("index", "info", idx)
        needles = ["index.faiss", "checksum"]
    case.error(p.returncode, p.stderr, needles, absent=[tmp_path / "r.json"], folders=[tmp_path])
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr


# ----------------------------------------------------------------------------------------- serve

def test_serve_limits_chunked_bodies(index_dir, record_property):
    from embed_kd.serve.app import ServeSettings, create_app
    from embed_kd.serve.engine import SearchEngine
    from embed_kd.serve.runner import BackgroundServer

    case = Case(record_property, "serve", "chunked request body over max_body_bytes → 413 (was read unbounded)")
    engine = SearchEngine.load(index_dir)
    with BackgroundServer(create_app(engine, ServeSettings(max_body_bytes=4096))) as url:
        def chunks(n):
            yield b'{"query": "'
            for _ in range(n):
                yield b"x" * 1000
            yield b'", "k": 1}'

        big = httpx.post(f"{url}/search", content=chunks(20), headers={"content-type": "application/json"})
        small = httpx.post(f"{url}/search", content=chunks(1), headers={"content-type": "application/json"})
        sized = httpx.post(f"{url}/search", json={"query": "x" * 5000})
        after = httpx.post(f"{url}/search", json={"query": "cat", "k": 1})
    ok = big.status_code == 413 and "the limit is 4096 bytes" in big.json()["error"]
    case._write("413", "413" if ok else f"status {big.status_code}", big.status_code, big.json().get("error", ""),
                False, [], False)
    assert ok, big.text
    assert small.status_code == 200 and len(small.json()["results"][0]["ids"]) == 1  # replayed intact
    assert sized.status_code == 413 and after.status_code == 200


def test_unwritable_cache_is_skipped_not_fatal(tiny_beir, tiny_model, tmp_path, record_property):
    case = Case(record_property, "outputs", "read-only embedding cache: `eval` warns and finishes (cache skipped)")
    cache = tmp_path / "cache"
    cache.mkdir()
    out = tmp_path / "r.json"
    args = ("eval", "--data", tiny_beir, "--model", tiny_model, "--cache-dir", cache, "-o", out, "--no-progress")
    if os.geteuid() != 0:
        cache.chmod(0o555)
        try:
            code, err, exc, _ = invoke(*args)
        finally:
            cache.chmod(0o755)
    else:
        _needs_ns()
        p = cli(*args, wrap=read_only(cache))
        code, err, exc = p.returncode, p.stderr, None
    case.ok("accepted (warned, cache skipped)", code, err, folders=[tmp_path], exception=exc,
            note="WARNING embedding cache not written (… not writable); result written")
    assert "embedding cache not written" in err and json.loads(out.read_text())["metrics"]["ndcg_at_10"] >= 0


def test_full_cache_disk_is_skipped_not_a_bus_error(big_corpus_file, tiny_model, tmp_path, record_property):
    """The memory-mapped cache entry is allocated up front: a full cache disk is a warning, not SIGBUS."""
    _needs_ns()
    case = Case(record_property, "outputs", "embedding cache on a full disk (64 KiB tmpfs), 3000 docs: `index build` "
                                            "(was: Bus error, exit 135)")
    disk = tmp_path / "disk"
    disk.mkdir()
    out = tmp_path / "idx"
    p = cli("index", "build", "--data", big_corpus_file, "--doc-model", tiny_model, "--cache-dir", disk, "-o", out,
            "--no-progress", wrap=in_tmpfs(disk, "64k"))
    case.ok("accepted (warned, cache skipped)", p.returncode, p.stderr.partition(LISTING)[0], folders=[tmp_path],
            note="WARNING embedding cache not written (No space left on device); index written")
    assert "embedding cache not written" in p.stderr and (out / "manifest.json").is_file()


@pytest.fixture(scope="module")
def big_corpus_file(tmp_path_factory) -> Path:
    import random

    rng = random.Random(3)
    words = "cat dog sun sea gene rain kitten puppy solar ocean dna cloud".split()
    path = tmp_path_factory.mktemp("big") / "corpus.jsonl"
    path.write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": " ".join(rng.choice(words)
                                                                                      for _ in range(10))}) + "\n"
                            for i in range(3000)))
    return path


def test_outputs_follow_the_umask(tmp_path, record_property):
    """atomic_dir made 0700 folders and atomic_write 0600 files (tempfile's defaults)."""
    from embed_kd.io import atomic_dir, atomic_write_text

    case = Case(record_property, "outputs", "permissions of written folders/files follow the umask (were 0700/0600)")
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("x")
        atomic_write_text(tmp_path / "f.json", "{}")
    finally:
        os.umask(old)
    modes = ((tmp_path / "d").stat().st_mode & 0o777, (tmp_path / "f.json").stat().st_mode & 0o777)
    case.ok("accepted", 0, note=f"umask 022 → folder {modes[0]:o}, file {modes[1]:o}")
    assert modes == (0o755, 0o644)


def test_leftovers_of_a_killed_writer_are_swept(tmp_path, record_property):
    """What kill -9 leaves (.NAME.pidDEAD-*.tmp, a parked .NAME.old-DEAD) is cleaned by the next write."""
    import subprocess

    from embed_kd.io import atomic_dir, atomic_write_text

    case = Case(record_property, "interruption", "temporaries of a killed writer removed by the next write; a folder "
                                                 "parked mid-overwrite restored")
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale_file = tmp_path / f".r.json.pid{dead.pid}-abcd1234.tmp"
    stale_file.write_text("half")
    stale_dir = tmp_path / f".idx.pid{dead.pid}-abcd1234.tmp"
    stale_dir.mkdir()
    alive = tmp_path / f".r.json.pid{os.getppid()}-zzzz.tmp"  # a running writer's: left alone
    alive.write_text("busy")
    atomic_write_text(tmp_path / "r.json", "{}")
    with atomic_dir(tmp_path / "idx"):
        pass
    from embed_kd.io import Artifact

    parked = tmp_path / f".model.old-{dead.pid}"
    parked.mkdir()
    (parked / "w").write_text("weights")
    (parked / "manifest.json").write_text('{"schema": "embed-kd/test@1"}')
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "model", overwrite=True, artifact=Artifact("embed-kd/test@1", "manifest.json", "t")):
            raise RuntimeError("the new build failed")
    restored = (tmp_path / "model" / "w").read_text() == "weights"
    case.ok("accepted", 0, note="stale temporaries of a dead pid removed, a live writer's kept, parked folder restored")
    assert not stale_file.exists() and not stale_dir.exists() and alive.exists() and restored
    alive.unlink()
