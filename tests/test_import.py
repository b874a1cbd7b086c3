"""`embed-kd score-teacher import`: a small fixture in each format, imported, checked and trained on end to end;
the export → import round trip; bad input (field count, non-numeric score, unknown ids, truncated .gz)."""

from __future__ import annotations

import gzip
import json
import pickle
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from test_train_e2e import _config, write_tiny_store  # noqa: E402

from embed_kd.cli import main  # noqa: E402
from embed_kd.teachers.store import open_scores  # noqa: E402


@pytest.fixture(scope="module")
def tiny_store(tiny_beir, tiny_model, tmp_path_factory) -> Path:
    return write_tiny_store(tiny_beir, tiny_model, tmp_path_factory.mktemp("scores") / "tiny-train")


def _import(args, out: Path):
    return CliRunner().invoke(main, ["score-teacher", "import", *args, "-o", str(out)])


def _train(tmp_path, tiny_beir, tiny_model, store, cache_dir, sets=(), **extra):
    cfg = _config(tmp_path, tiny_beir, tiny_model, store, average={"enabled": False}, **extra)
    r = CliRunner().invoke(main, ["train", str(cfg), "--cache-dir", str(cache_dir), "--no-progress", "-q",
                                  "--set", "train.max_steps=3", *(x for kv in sets for x in ("--set", kv))])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "student" / "embed_kd_train.json").read_text())
    assert m["training"]["global_step"] == 3 and m["student"]["fingerprint"] != m["student"]["init_fingerprint"]
    losses = [h["loss"] for h in m["training"]["log_history"] if "loss" in h]
    assert losses and all(x == x for x in losses)
    return m


def _rows(store):
    return {q: sorted(rows) for q, rows in store.iter_queries()}


# ------------------------------------------------------------------------------- each format

def test_margin_mse_tsv_round_trip_and_training(tmp_path, tiny_beir, tiny_model, tiny_store, cache_dir):
    tsv = tmp_path / "triples.tsv"
    r = CliRunner().invoke(main, ["score-teacher", "export", str(tiny_store), "--format", "margin-mse-tsv",
                                  "-o", str(tsv)])
    assert r.exit_code == 0, r.output
    r = _import(["--format", "margin-mse-tsv", "--data", str(tiny_beir), str(tsv)], tmp_path / "imp")
    assert r.exit_code == 0, r.output
    orig, back = open_scores(tiny_store), open_scores(tmp_path / "imp")
    # identical: every query, every (doc, score, label), the same dataset fingerprints and query order
    assert _rows(back) == _rows(orig)
    for k in ("corpus_fingerprint", "queries_fingerprint", "qrels_fingerprint", "n_queries", "split"):
        assert back.manifest["dataset"][k] == orig.manifest["dataset"][k]
    imp = back.manifest["imported"]
    assert imp["format"] == "margin-mse-tsv" and imp["labels"] == "qrels" and imp["rows_read"] == len(
        tsv.read_text().splitlines())
    import hashlib

    assert imp["files"][0]["sha256"] == hashlib.sha256(tsv.read_bytes()).hexdigest()
    assert back.manifest["teachers"][0]["spec"] == "imported from margin-mse-tsv"
    # exporting the import gives the same file again
    tsv2 = tmp_path / "again.tsv"
    assert CliRunner().invoke(main, ["score-teacher", "export", str(tmp_path / "imp"), "--format", "margin-mse-tsv",
                                     "-o", str(tsv2)]).exit_code == 0
    assert sorted(tsv2.read_text().splitlines()) == sorted(tsv.read_text().splitlines())
    m = _train(tmp_path, tiny_beir, tiny_model, tmp_path / "imp", cache_dir)
    assert m["examples"]["score"]["examples"] == 2 * 4 and "dev_ndcg_at_10" in m["dev"]["metrics_final"]


def _export(store, fmt, out, *extra):
    r = CliRunner().invoke(main, ["score-teacher", "export", str(store), "--format", fmt, "-o", str(out), *extra])
    assert r.exit_code == 0, r.output


def _same_dataset(back, orig):
    for k in ("corpus_fingerprint", "queries_fingerprint", "qrels_fingerprint", "n_queries", "split"):
        assert back.manifest["dataset"][k] == orig.manifest["dataset"][k]


def test_hf_scores_round_trip_through_hf_columns(tmp_path, tiny_beir, tiny_store):
    """export hf-scores → import --format hf-columns: the same rows (query, doc, score, label), every score
    column; the export's ids and columns are found without --columns."""
    _export(tiny_store, "hf-scores", tmp_path / "hf")
    orig = open_scores(tiny_store)
    r = _import(["--format", "hf-columns", "--data", str(tiny_beir), str(tmp_path / "hf")], tmp_path / "imp")
    assert r.exit_code == 0, r.output
    back = open_scores(tmp_path / "imp")
    assert back.score_kind == "absolute" and back.manifest["imported"]["rows_read"] == orig.table().num_rows
    assert _rows(back) == _rows(orig)
    assert list(back.to_run()) == list(orig.to_run())  # the dataset's query order
    _same_dataset(back, orig)
    r = _import(["--format", "hf-columns", "--data", str(tiny_beir), "--columns", "score=score__dense",
                 str(tmp_path / "hf")], tmp_path / "dense")
    assert r.exit_code == 0, r.output
    assert _rows(open_scores(tmp_path / "dense")) == {q: sorted(rows) for q, rows in orig.iter_queries("score__dense")}


def _ids_by_text(tiny_beir):
    """The exported texts back to ids (the hf-margin-mse / hf-listwise exports carry texts for the losses)."""
    from embed_kd.data import load_beir

    ds = load_beir(tiny_beir, "train")
    docs, queries = {ds.doc_text(d): d for d in ds.corpus}, {t: q for q, t in ds.queries.items()}
    assert len(docs) == len(ds.corpus) and len(queries) == len(ds.queries)  # texts name ids unambiguously
    return docs, queries


def test_hf_margin_mse_round_trip_through_hf_columns(tmp_path, tiny_beir, tiny_store):
    """export hf-margin-mse → (texts mapped back to ids) → import --format hf-columns as margin triples: the
    store's margins are exactly the exported ones, which are the original store's s+ - s- (in float32)."""
    import datasets
    import numpy as np

    from embed_kd.teachers.export import margin_triples

    _export(tiny_store, "hf-margin-mse", tmp_path / "hf", "--data", str(tiny_beir))
    ex = datasets.load_from_disk(str(tmp_path / "hf"))
    assert ex.column_names == ["query", "positive", "negative", "label"]
    docs, queries = _ids_by_text(tiny_beir)
    ids = datasets.Dataset.from_dict({"query_id": [queries[t] for t in ex["query"]],
                                      "positive_id": [docs[t] for t in ex["positive"]],
                                      "negative_id": [docs[t] for t in ex["negative"]], "margin": ex["label"]})
    ids.save_to_disk(str(tmp_path / "ids"))
    r = _import(["--format", "hf-columns", "--data", str(tiny_beir), str(tmp_path / "ids")], tmp_path / "imp")
    assert r.exit_code == 0, r.output
    back = open_scores(tmp_path / "imp")
    assert back.score_kind == "margin"
    got = {(q, p, n): m for q, rows in back.iter_margins() for p, n, m in rows}
    want = {(q, p, n): float(np.float32(ps - ns)) for q, rows in open_scores(tiny_store).iter_queries()
            for ps, ns, _, p, n in margin_triples(q, rows)}
    assert got == want and len(got) == len(ex)
    _same_dataset(back, open_scores(tiny_store))


def test_hf_listwise_round_trip_through_hf_columns(tmp_path, tiny_beir, tiny_store):
    """export hf-listwise (each positive with the N highest-scored negatives) → pointwise (query, doc, score)
    rows → import --format hf-columns: every exported (query, doc) has its original score and label."""
    import datasets

    _export(tiny_store, "hf-listwise", tmp_path / "hf", "--negatives", "3", "--data", str(tiny_beir))
    ex = datasets.load_from_disk(str(tmp_path / "hf"))
    assert ex.column_names == ["query", "positive", "negative_1", "negative_2", "negative_3", "label"]
    docs, queries = _ids_by_text(tiny_beir)
    pairs = {}
    for row in ex:
        q = queries[row["query"]]
        for text, score in zip([row["positive"], row["negative_1"], row["negative_2"], row["negative_3"]],
                               row["label"]):
            pairs[(q, docs[text])] = score
    datasets.Dataset.from_dict({"query_id": [q for q, _ in pairs], "doc_id": [d for _, d in pairs],
                                "score": list(pairs.values())}).save_to_disk(str(tmp_path / "ids"))
    r = _import(["--format", "hf-columns", "--data", str(tiny_beir), str(tmp_path / "ids")], tmp_path / "imp")
    assert r.exit_code == 0, r.output
    orig = {q: {d: (s, label) for d, s, label in rows} for q, rows in open_scores(tiny_store).iter_queries()}
    back = _rows(open_scores(tmp_path / "imp"))
    assert back == {q: sorted((d, *orig[q][d]) for qq, d in pairs if qq == q) for q in back}
    # what was exported, and so imported: per query its positives and its 3 highest-scored negatives
    hardest = {q: {d for d, _ in sorted(((d, s) for d, (s, label) in docs_.items() if label <= 0),
                                       key=lambda x: (-x[1], x[0]))[:3]} | {d for d, (_, label) in docs_.items()
                                                                          if label > 0}
               for q, docs_ in orig.items()}
    assert {q: {d for d, _, _ in rows} for q, rows in back.items()} == hardest
    assert len(pairs) == sum(map(len, back.values()))


def test_text_exports_are_refused_by_hf_columns_in_one_line(tmp_path, tiny_beir, tiny_store):
    """hf-margin-mse carries texts, not ids: importing it as is names the missing id column."""
    _export(tiny_store, "hf-margin-mse", tmp_path / "hf", "--data", str(tiny_beir))
    r = _import(["--format", "hf-columns", "--data", str(tiny_beir), str(tmp_path / "hf")], tmp_path / "imp")
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error:") and "query_id" in lines[0], r.output
    assert not (tmp_path / "imp").exists()


def test_st_scores_pkl_with_hard_negative_lists(tmp_path, tiny_beir, tiny_model, tiny_store, cache_dir):
    run = open_scores(tiny_store).to_run("score__dense")
    pkl = tmp_path / "ce-scores.pkl.gz"
    pkl.write_bytes(gzip.compress(pickle.dumps(run)))
    r = _import(["--format", "st-scores-pkl", "--data", str(tiny_beir), str(pkl)], tmp_path / "all")
    assert r.exit_code == 0, r.output
    st = open_scores(tmp_path / "all")
    got = st.to_run()
    assert got.keys() == run.keys() and all(got[q] == pytest.approx(run[q]) for q in run)

    # candidate lists restrict the pairs (and name positives); pairs without a score are counted
    cands = tmp_path / "hard-negatives.jsonl.gz"
    lines = []
    for q, docs in run.items():
        ranked = sorted(docs, key=lambda d: -docs[d])
        lines.append({"qid": q, "pos": ranked[:1], "neg": {"bm25": ranked[1:4], "dense": ranked[2:6] + ["unscored"]}})
    cands.write_bytes(gzip.compress("".join(json.dumps(x) + "\n" for x in lines).encode()))
    r = _import(["--format", "st-scores-pkl", "--data", str(tiny_beir), "--candidates", str(cands), str(pkl)],
                tmp_path / "hn")
    assert r.exit_code == 0, r.output
    hn = open_scores(tmp_path / "hn")
    assert all(len(rows) == 6 for _, rows in hn.iter_queries())
    assert hn.manifest["imported"]["unscored_candidates"] == len(run)
    _train(tmp_path, tiny_beir, tiny_model, tmp_path / "hn", cache_dir)


def test_hf_columns_pointwise_from_a_saved_dataset(tmp_path, tiny_beir, tiny_model, tiny_store, cache_dir):
    import datasets

    t = open_scores(tiny_store).table(["query_id", "doc_id", "score__lex"])
    folder = tmp_path / "hf-scores"
    datasets.Dataset.from_dict({"question": t.column("query_id").to_pylist(), "docno": t.column("doc_id").to_pylist(),
                                "logit": t.column("score__lex").to_pylist()}).save_to_disk(str(folder))
    r = _import(["--format", "hf-columns", "--data", str(tiny_beir), "--columns",
                 "query_id=question,passage_id=docno,score=logit", str(folder)], tmp_path / "imp")
    assert r.exit_code == 0, r.output
    st = open_scores(tmp_path / "imp")
    assert st.score_kind == "absolute" and st.manifest["progress"]["rows"] == t.num_rows
    undeclared = _import(["--format", "hf-columns", "--data", str(tiny_beir), str(folder)], tmp_path / "x")
    assert undeclared.exit_code == 2 and "no column for 'query_id'" in undeclared.output
    assert not (tmp_path / "x").exists()
    _train(tmp_path, tiny_beir, tiny_model, tmp_path / "imp", cache_dir)


def test_hf_columns_margins_stay_margins(tmp_path, tiny_beir, tiny_model, tiny_store, cache_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embed_kd.teachers.export import margin_triples

    q, p, n, m = [], [], [], []
    for qid, rows in open_scores(tiny_store).iter_queries():
        for ps, ns, _, pid, nid in margin_triples(qid, rows):
            q.append(qid), p.append(pid), n.append(nid), m.append(ps - ns)
    path = tmp_path / "margins.parquet"
    pq.write_table(pa.table({"query_id": q, "positive_id": p, "negative_id": n, "score": m}), path)
    r = _import(["--format", "hf-columns", "--data", str(tiny_beir), str(path)], tmp_path / "imp")
    assert r.exit_code == 0, r.output
    st = open_scores(tmp_path / "imp")
    assert st.score_kind == "margin" and "pos_id" in st.table().schema.names
    triples = {(qq, a, b): mm for qq, rows in st.iter_margins() for a, b, mm in rows}
    assert len(triples) == len(q) and all(triples[(qq, a, b)] == pytest.approx(mm) for qq, a, b, mm in zip(q, p, n, m))
    with pytest.raises(Exception, match="margins"):  # no per-document ranking is made up
        st.to_run()
    for loss in ("margin_mse", "kl"):  # both losses train on margins (KL: the softmax ignores the unknown shift)
        shutil.rmtree(tmp_path / "student", ignore_errors=True)
        mf = _train(tmp_path, tiny_beir, tiny_model, tmp_path / "imp", cache_dir, sets=[f"losses.score={loss}"])
        assert mf["examples"]["score"]["score_kind"] == "margin"

    # the margin examples' labels reproduce the margins exactly (Margin-MSE reads label[0] - label[i])
    from embed_kd.data import load_beir
    from embed_kd.training.margin_examples import build_margin_examples

    ds = load_beir(tiny_beir, "train")
    ex = build_margin_examples(st, ds, list(ds.queries), negatives=2, sampling="hardest", rounds=1, score_norm="none",
                               documents="student", doc_row=None, seed=0)
    texts = {ds.doc_text(d): d for d in ds.corpus}
    qtext = {t: k for k, t in ds.queries.items()}
    for row in ex.rows:
        qid, pos = qtext[row["query"]], texts[row["doc_0"]]
        for i in (1, 2):
            assert row["label"][0] - row["label"][i] == pytest.approx(triples[(qid, pos, texts[row[f"doc_{i}"]])])


def test_listwise_lists_and_lists_as_strings(tmp_path, tiny_beir, tiny_model, tiny_store, cache_dir):
    import datasets

    run = open_scores(tiny_store).to_run()
    qids = list(run)
    as_lists = {"query_id": qids, "document_ids": [list(run[q]) for q in qids],
                "scores": [list(run[q].values()) for q in qids]}
    folder = tmp_path / "listwise-hf"
    datasets.Dataset.from_dict(as_lists).save_to_disk(str(folder))
    jsonl = tmp_path / "listwise.jsonl"
    jsonl.write_text("".join(json.dumps({"query_id": q, "document_ids": str(list(run[q])),
                                         "scores": json.dumps(list(run[q].values()))}) + "\n" for q in qids))
    for i, src in enumerate((folder, jsonl)):
        r = _import(["--format", "listwise", "--data", str(tiny_beir), str(src)], tmp_path / f"imp{i}")
        assert r.exit_code == 0, r.output
        got = open_scores(tmp_path / f"imp{i}").to_run()
        assert all(got[q] == pytest.approx(run[q]) for q in run)
    m = _train(tmp_path, tiny_beir, tiny_model, tmp_path / "imp1", cache_dir, sets=["losses.score=kl"])
    assert m["config"]["losses"]["score"] == "kl"  # listwise KL needs only the teacher's scores


def test_flag_jsonl_texts_stored_alongside(tmp_path, tiny_beir, tiny_model, tiny_store, cache_dir):
    from embed_kd.data import load_beir
    from embed_kd.teachers.importers import flag_id

    ds = load_beir(tiny_beir, "train")
    run = open_scores(tiny_store).to_run()
    path = tmp_path / "flag.jsonl"
    with path.open("w") as fh:
        for q, docs in run.items():
            ranked = sorted(docs, key=lambda d: -docs[d])
            pos, neg = ranked[:1], ranked[1:8]
            fh.write(json.dumps({"query": ds.queries[q], "pos": [ds.doc_text(d) for d in pos],
                                 "neg": [ds.doc_text(d) for d in neg], "pos_scores": [docs[d] for d in pos],
                                 "neg_scores": [docs[d] for d in neg]}) + "\n")
    r = _import(["--format", "flag-jsonl", str(path)], tmp_path / "imp")
    assert r.exit_code == 0, r.output
    st = open_scores(tmp_path / "imp")
    assert st.texts_dir and (st.texts_dir / "corpus.jsonl").is_file()
    assert st.manifest["imported"]["labels"] == "file positives" and st.manifest["dataset"]["judged"] is False
    first_q = next(iter(run))
    rows = dict((d, (s, lab)) for d, s, lab in dict(st.iter_queries())[flag_id("q", ds.queries[first_q])])
    top = max(run[first_q], key=lambda d: run[first_q][d])
    assert rows[flag_id("d", ds.doc_text(top))] == (pytest.approx(run[first_q][top]), 1)
    refused = _import(["--format", "flag-jsonl", "--data", str(tiny_beir), str(path)], tmp_path / "x")
    assert refused.exit_code == 2 and "do not apply" in refused.output
    # no --data: train reads the texts the import stored (dev slice: loyalty, the texts carry no judgments)
    m = _train(tmp_path, tiny_beir, tiny_model, tmp_path / "imp", cache_dir, data="",
               examples={"dev_queries": 1, "min_candidates": 2})
    assert "dev_top10_overlap" in m["dev"]["metrics_final"]


def test_import_onto_unjudged_queries(tmp_path, tiny_beir, tiny_model, tiny_store, cache_dir):
    """Scores for a query log: the store is unjudged, file positives become labels, dev = loyalty."""
    ds_queries = [json.loads(x) for x in (tiny_beir / "queries.jsonl").read_text().splitlines()]
    log = tmp_path / "log.tsv"
    log.write_text("".join(f"{q['_id']}\t{q['text']}\n" for q in ds_queries if q["_id"].endswith("-train")))
    tsv = tmp_path / "t.tsv"
    CliRunner().invoke(main, ["score-teacher", "export", str(tiny_store), "--format", "margin-mse-tsv", "-o", str(tsv)])
    r = _import(["--format", "margin-mse-tsv", "--data", str(tiny_beir), "--queries", str(log), str(tsv)],
                tmp_path / "imp")
    assert r.exit_code == 0, r.output
    st = open_scores(tmp_path / "imp")
    assert st.manifest["dataset"]["judged"] is False and st.manifest["imported"]["labels"] == "file positives"
    m = _train(tmp_path, tiny_beir, tiny_model, tmp_path / "imp", cache_dir, queries=str(log))
    assert "dev_top10_overlap" in m["dev"]["metrics_final"] and "dev_ndcg_at_10" not in m["dev"]["metrics_final"]


# ------------------------------------------------------------------------------- bad input

@pytest.fixture()
def good_tsv(tmp_path, tiny_store) -> Path:
    tsv = tmp_path / "good.tsv"
    CliRunner().invoke(main, ["score-teacher", "export", str(tiny_store), "--format", "margin-mse-tsv", "-o", str(tsv)])
    return tsv


@pytest.mark.parametrize("mutate, message", [
    (lambda ls: ls[:2] + ["1.0\t2.0\tq-cat-train\tcat-0"] + ls[3:], "bad.tsv:3: expected 5 tab-separated fields"),
    (lambda ls: ls[:1] + ["abc\t2.0\tq-cat-train\tcat-0\tcat-1"] + ls[2:], "bad.tsv:2: pos_score 'abc' is not a number"),
    (lambda ls: ls[:4] + ["1.0\tnan\tq-cat-train\tcat-0\tcat-1"] + ls[5:], "bad.tsv:5: neg_score is not a finite number (nan)"),
    (lambda ls: ls[:3] + ["1.0\t2.0\tq-cat-train\tcat-0\tno-such-doc"] + ls[4:],
     "bad.tsv:4: document id 'no-such-doc' is not in the corpus (1 row(s)"),
    (lambda ls: ["1.0\t2.0\tq-unknown\tcat-0\tcat-1"] + ls, "bad.tsv:1: query id 'q-unknown' is not in the dataset"),
])
def test_bad_rows_are_one_clear_error_and_nothing_is_written(tmp_path, tiny_beir, good_tsv, mutate, message):
    bad = tmp_path / "bad.tsv"
    bad.write_text("\n".join(mutate(good_tsv.read_text().splitlines())) + "\n")
    r = _import(["--format", "margin-mse-tsv", "--data", str(tiny_beir), str(bad)], tmp_path / "out")
    assert r.exit_code == 2, r.output
    assert message in r.output and r.output.count("Error:") == 1 and "Traceback" not in r.output
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_missing_ids_allowed_are_dropped_and_counted(tmp_path, tiny_beir, good_tsv):
    lines = good_tsv.read_text().splitlines()
    bad = tmp_path / "bad.tsv"
    bad.write_text("\n".join(lines + ["1.0\t2.0\tq-cat-train\tcat-0\tghost", "1.0\t2.0\tq-ghost\tcat-0\tcat-1"]) + "\n")
    r = _import(["--format", "margin-mse-tsv", "--data", str(tiny_beir), "--allow-missing-ids", str(bad)],
                tmp_path / "out")
    assert r.exit_code == 0, r.output
    miss = open_scores(tmp_path / "out").manifest["imported"]["missing_ids"]
    assert miss == {"queries": 1, "documents": 1, "rows_dropped": 2, "allowed": True}


def test_truncated_gzip_names_file_and_line(tmp_path, tiny_beir, good_tsv):
    gz = tmp_path / "t.tsv.gz"
    data = gzip.compress(good_tsv.read_bytes() * 20)
    gz.write_bytes(data[: len(data) // 2])
    r = _import(["--format", "margin-mse-tsv", "--data", str(tiny_beir), str(gz)], tmp_path / "out")
    assert r.exit_code == 2 and "t.tsv.gz:" in r.output and "truncated or corrupt" in r.output, r.output
    assert not (tmp_path / "out").exists()
    whole = tmp_path / "w.tsv.gz"
    whole.write_bytes(gzip.compress(good_tsv.read_bytes()))
    assert _import(["--format", "margin-mse-tsv", "--data", str(tiny_beir), str(whole)], tmp_path / "ok").exit_code == 0


def test_other_formats_refuse_bad_values(tmp_path, tiny_beir):
    import datasets

    folder = tmp_path / "hf"
    datasets.Dataset.from_dict({"query_id": ["q-cat-train"] * 2, "passage_id": ["cat-0", "cat-1"],
                                "score": ["1.5", "high"]}).save_to_disk(str(folder))
    r = _import(["--format", "hf-columns", "--data", str(tiny_beir), str(folder)], tmp_path / "o1")
    assert r.exit_code == 2 and "row 2: score 'high' is not a number" in r.output, r.output
    lw = tmp_path / "lw.jsonl"
    lw.write_text(json.dumps({"query_id": "q-cat-train", "document_ids": ["cat-0", "cat-1"], "scores": [1.0]}) + "\n")
    r = _import(["--format", "listwise", "--data", str(tiny_beir), str(lw)], tmp_path / "o2")
    assert r.exit_code == 2 and "lw.jsonl:1: 2 document_ids but 1 scores" in r.output, r.output

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(pickle.dumps({"q-cat-train": {"cat-0": Evil()}}))
    r = _import(["--format", "st-scores-pkl", "--data", str(tiny_beir), str(pkl)], tmp_path / "o3")
    assert r.exit_code == 2 and "refusing to construct builtins.print" in r.output, r.output
    assert not any((tmp_path / f"o{i}").exists() for i in (1, 2, 3))


def test_export_hf_of_a_flag_import_reads_the_stored_texts(tmp_path):
    import datasets

    path = tmp_path / "flag.jsonl"
    path.write_text(json.dumps({"query": "cat ?", "pos": ["cats purr"], "neg": ["dogs bark", "sun light"],
                                "pos_scores": [3.0], "neg_scores": [1.0, -2.0]}) + "\n")
    assert _import(["--format", "flag-jsonl", str(path)], tmp_path / "imp").exit_code == 0
    r = CliRunner().invoke(main, ["score-teacher", "export", str(tmp_path / "imp"), "--format", "hf-margin-mse",
                                  "-o", str(tmp_path / "hf")])
    assert r.exit_code == 0, r.output
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert sorted(zip(ds["negative"], ds["label"])) == [("dogs bark", 2.0), ("sun light", 5.0)]
    assert set(ds["query"]) == {"cat ?"} and set(ds["positive"]) == {"cats purr"}
