"""Bring your own data: query logs without judgments, plain corpora, gzipped BEIR folders, HF datasets;
score-teacher → train → eval on unjudged queries, and an alignment-only student on a plain-text corpus."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from embed_kd.cli import main
from embed_kd.data.inputs import load_inputs, read_corpus, read_queries
from embed_kd.errors import DataError


def test_query_files_in_every_format(tmp_path):
    (tmp_path / "q.jsonl").write_text('{"_id": "a", "text": "cat?"}\n{"id": 7, "text": "dog?"}\n')
    (tmp_path / "q.tsv.gz").write_bytes(gzip.compress(b"query_id\ttext\na\tcat?\nb\tdog?\n"))
    (tmp_path / "q.txt").write_text("cat?\n\n  dog?  \n")
    assert read_queries(tmp_path / "q.jsonl") == {"a": "cat?", "7": "dog?"}
    assert read_queries(tmp_path / "q.tsv.gz") == {"a": "cat?", "b": "dog?"}
    assert read_queries(tmp_path / "q.txt") == {"L1": "cat?", "L3": "dog?"}  # ids: line numbers
    (tmp_path / "dup.tsv").write_text("a\tcat?\nb\tdog?\na\tbird?\n")
    with pytest.raises(DataError, match=r"dup.tsv:3: duplicate query id 'a'"):
        read_queries(tmp_path / "dup.tsv")
    (tmp_path / "wide.tsv").write_text("a\tcat?\nb\tdog\textra\n")
    with pytest.raises(DataError, match=r"wide.tsv:2: expected id<TAB>text, got 3"):
        read_queries(tmp_path / "wide.tsv")
    data = gzip.compress(b"".join(b"query %d\n" % i for i in range(5000)))
    (tmp_path / "cut.txt.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut.txt.gz:\d+: the gzip file is truncated or corrupt"):
        read_queries(tmp_path / "cut.txt.gz")


def test_corpus_files_and_hf_datasets_with_declared_columns(tmp_path):
    import datasets

    (tmp_path / "c.tsv").write_text("d1\tCats\tcats purr\nd2\tdogs bark\n")
    assert read_corpus(tmp_path / "c.tsv") == {"d1": {"title": "Cats", "text": "cats purr"},
                                                "d2": {"title": "", "text": "dogs bark"}}
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(b'{"_id": "d1", "title": "T", "text": "x"}\n'))
    assert read_corpus(tmp_path / "c.jsonl.gz") == {"d1": {"title": "T", "text": "x"}}
    # a datasets.save_to_disk folder (the offline path of hf:NAME), columns found by name or declared
    folder = tmp_path / "hf-queries"
    datasets.Dataset.from_dict({"qid": ["a", "b"], "question": ["cat?", "dog?"]}).save_to_disk(str(folder))
    with pytest.raises(DataError, match=r"no column for 'text'.*declare it"):
        read_queries(folder)
    assert read_queries(f"{folder}#text=question") == {"a": "cat?", "b": "dog?"}
    dd = tmp_path / "hf-dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"_id": ["x"], "text": ["t"]}),
                          "dev": datasets.Dataset.from_dict({"_id": ["y"], "text": ["u"]})}).save_to_disk(str(dd))
    assert read_corpus(f"{dd}#split=dev") == {"y": {"title": "", "text": "u"}}
    with pytest.raises(DataError, match="without split 'test'"):
        read_corpus(f"{dd}#split=test")
    with pytest.raises(DataError, match=r"hf:no/such-dataset-embed-kd: could not load"):
        read_queries("hf:no/such-dataset-embed-kd")  # offline here: the hub path fails with one clear error


def test_beir_folder_with_gzipped_files(tmp_path, tiny_beir):
    from embed_kd.data import load_beir, resolve_dataset

    gz = tmp_path / "tiny-gz"
    shutil.copytree(tiny_beir / "qrels", gz / "qrels")
    for name in ("corpus.jsonl", "queries.jsonl"):
        (gz / f"{name}.gz").write_bytes(gzip.compress((tiny_beir / name).read_bytes()))
    a, b = load_beir(tiny_beir, "test"), load_beir(resolve_dataset(gz), "test")
    assert (a.corpus, a.queries, a.qrels) == (b.corpus, b.queries, b.qrels)


def test_unjudged_queries_score_teacher_train_eval(tmp_path, tiny_beir, tiny_model, cache_dir):
    """A query log without judgments → score-teacher (no positives added) → train (dev: loyalty) → eval on test qrels."""
    queries = [json.loads(x) for x in (tiny_beir / "queries.jsonl").read_text().splitlines()]
    log = tmp_path / "log.txt"
    log.write_text("".join(q["text"] + "\n" for q in queries if q["_id"].endswith("-train")))
    store = tmp_path / "scores"
    r = CliRunner().invoke(main, ["score-teacher", "--data", str(tiny_beir), "--queries", str(log),
                                  "--candidates", "bm25:8", "--teacher", f"bi:{tiny_model}", "-o", str(store),
                                  "--cache-dir", str(cache_dir), "--no-progress", "-q"])
    assert r.exit_code == 0, r.output
    from embed_kd.teachers.store import open_scores

    st = open_scores(store)
    ds = st.manifest["dataset"]
    assert ds["judged"] is False and ds["n_queries"] == 6
    rows = dict(st.iter_queries())
    assert set(rows) == {f"L{i}" for i in range(1, 7)}
    assert all(1 <= len(v) <= 8 and all(lab == 0 for _, _, lab in v) for v in rows.values())  # nothing added, no labels

    cfg = {"data": str(tiny_beir), "queries": str(log), "scores": str(store), "teacher": str(tiny_model),
           "output": str(tmp_path / "student"), "student": {"from_teacher": True, "keep_layers": [1]},
           "examples": {"negatives": 3, "rounds": 2, "dev_queries": 2, "min_candidates": 4},
           "train": {"max_steps": 4, "batch_size": 4, "lr": 1e-3, "save_steps": 2, "eval_steps": 2,
                     "logging_steps": 1}, "average": {"enabled": False}}
    import yaml

    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(main, ["train", str(tmp_path / "cfg.yaml"), "--cache-dir", str(cache_dir),
                                  "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "loyalty to the teacher): top-10 overlap" in r.output
    m = json.loads((tmp_path / "student" / "embed_kd_train.json").read_text())
    dev = m["dev"]["metrics_final"]
    assert 0.0 <= dev["dev_top10_overlap"] <= 1.0 and "dev_ndcg_at_10" not in dev
    assert m["examples"]["score"]["queries_without_judged_positive"] == 4  # 6 queries - 2 dev, none judged
    # the store was made on the query log; the judged split is another dataset and is refused
    r = CliRunner().invoke(main, ["train", str(tmp_path / "cfg.yaml"), "--set", "queries=null", "--set",
                                  f"output={tmp_path / 'other'}", "--cache-dir", str(cache_dir), "--no-progress"])
    assert r.exit_code == 2 and "another dataset" in r.output, r.output
    # final evaluation: test qrels, asymmetric (student queries, teacher documents)
    out = tmp_path / "eval.json"
    r = CliRunner().invoke(main, ["eval", "--data", str(tiny_beir), "--split", "test", "--query-model",
                                  str(tmp_path / "student"), "--doc-model", str(tiny_model), "-o", str(out),
                                  "--cache-dir", str(cache_dir), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert 0.0 <= json.loads(out.read_text())["metrics"]["ndcg_at_10"] <= 1.0


def test_alignment_only_student_on_a_plain_text_corpus(tmp_path, tiny_beir, tiny_model, cache_dir):
    docs = [json.loads(x) for x in (tiny_beir / "corpus.jsonl").read_text().splitlines()]
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(f"{d['title']} {d['text']}\n" for d in docs))
    r = CliRunner().invoke(main, ["train", "--corpus", str(texts), "--teacher", str(tiny_model),
                                  "--student-from-teacher", "--keep-layers", "1", "-o", str(tmp_path / "student"),
                                  "--set", "losses.score=none",  # default align_texts: corpus (+ no queries)
                                  "--set", "train.max_steps=3", "--set", "train.batch_size=8",
                                  "--set", "average.enabled=false", "--cache-dir", str(cache_dir), "--no-progress",
                                  "-q"])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "student" / "embed_kd_train.json").read_text())
    assert m["examples"]["score"] is None and m["examples"]["align"]["texts"] == len(docs)
    assert m["training"]["global_step"] == 3 and m["dev"] is None
    assert m["student"]["fingerprint"] != m["student"]["init_fingerprint"]


def test_alignment_only_student_on_raw_text_files_needs_no_dataset(tmp_path, tiny_beir, tiny_model, cache_dir):
    """LEAF's recipe: only `align_texts: [file:PATH]`, no score loss — no data, corpus, queries or scores. The
    student learns from the file's texts; there is no dev slice (nothing to evaluate) and the manifest says so."""
    docs = [json.loads(x) for x in (tiny_beir / "corpus.jsonl").read_text().splitlines()]
    texts = tmp_path / "general.txt"
    texts.write_text("".join(f"{d['text']}\n" for d in docs[:12]) + "\n")  # blank lines are skipped
    cfg = tmp_path / "leaf.yaml"
    cfg.write_text(f"teacher: {tiny_model}\noutput: {tmp_path / 'student'}\n"
                   "student: {from_teacher: true, keep_layers: [1]}\n"
                   f"examples: {{align_texts: ['file:{texts}']}}\n"
                   "losses: {score: none}\ntrain: {max_steps: 2, batch_size: 4}\naverage: {enabled: false}\n")
    r = CliRunner().invoke(main, ["train", str(cfg), "--cache-dir", str(cache_dir), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "no dataset: aligning on the examples.align_texts files only; no dev slice to evaluate" in r.output
    m = json.loads((tmp_path / "student" / "embed_kd_train.json").read_text())
    align = m["examples"]["align"]
    assert m["examples"]["score"] is None and align["texts"] == 12 and align["corpus_docs"] == 0
    assert [s["source"] for s in align["sources"]] == [f"file:{texts}"]
    assert m["dev"] is None and m["dataset"]["dev_queries"] == [] and m["training"]["global_step"] == 2
    assert m["student"]["fingerprint"] != m["student"]["init_fingerprint"]


@pytest.mark.parametrize("extra, message", [
    ({}, "config: data is required"),  # the default align_texts (corpus, queries) needs a dataset
    ({"examples": {"align_texts": ["file:x.txt", "corpus"]}}, "config: data is required"),
    ({"examples": {"align_texts": ["file:x.txt"]}, "losses": {"score": "margin_mse"}, "scores": None},
     "config: losses.score needs a score store"),
    ({"examples": {"align_texts": ["file:x.txt"]}, "student": {"type": "static"}},
     "config: a static student weighs its vocabulary on the training corpus"),
])
def test_no_dataset_is_refused_unless_alignment_is_on_files_only(extra, message):
    from embed_kd.errors import EmbedKDError
    from embed_kd.training.config import TrainConfig

    raw = {"output": "o", "losses": {"score": "none"}, **extra}
    with pytest.raises(EmbedKDError, match=message):
        TrainConfig.from_dict(raw).validate()


def test_eval_with_a_corpus_file_matches_the_folder(tmp_path, tiny_beir, tiny_model, cache_dir):
    docs = [json.loads(x) for x in (tiny_beir / "corpus.jsonl").read_text().splitlines()]
    tsv = tmp_path / "corpus.tsv"
    tsv.write_text("".join(f"{d['_id']}\t{d['title']}\t{d['text']}\n" for d in docs))
    res = []
    for extra in ([], ["--corpus", str(tsv)]):
        out = tmp_path / f"e{len(extra)}.json"
        r = CliRunner().invoke(main, ["eval", "--data", str(tiny_beir), "--model", str(tiny_model), "-o", str(out),
                                      "--no-cache", "--no-progress", *extra])
        assert r.exit_code == 0, r.output
        res.append(json.loads(out.read_text())["metrics"])
    assert res[0] == res[1]
    ds = load_inputs(data=tiny_beir, split="test", corpus=tsv)
    assert ds.judged and ds.sources["corpus"] == str(tsv)


def test_index_build_from_a_plain_text_corpus(tmp_path, tiny_beir, tiny_model, cache_dir):
    docs = [json.loads(x) for x in (tiny_beir / "corpus.jsonl").read_text().splitlines()]
    texts = tmp_path / "texts.txt.gz"
    texts.write_bytes(gzip.compress("".join(f"{d['title']} {d['text']}\n" for d in docs).encode()))
    r = CliRunner().invoke(main, ["index", "build", "--data", str(texts), "--doc-model", str(tiny_model),
                                  "-o", str(tmp_path / "idx"), "--cache-dir", str(cache_dir), "--no-progress"])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert m["n"] == len(docs)
