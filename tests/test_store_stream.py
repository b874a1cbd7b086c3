"""Corpus-scale reading of a score store: streamed queries and examples equal the in-memory ones."""

from __future__ import annotations

import random

import pytest

from embed_kd.data.beir import BeirDataset
from embed_kd.teachers.store import ScoreStoreWriter, new_manifest, open_scores
from embed_kd.training.data import CandidateStream, build_score_examples

N_Q, N_C = 7, 9


def _store(tmp_path, chunk_size=3):
    m = new_manifest(
        dataset={"name": "toy", "split": "train", "corpus_fingerprint": "c", "queries_fingerprint": "q",
                 "qrels_fingerprint": "r", "n_queries": N_Q},
        candidates=[{"source": "bm25", "name": "bm25", "k": N_C}],
        teachers=[{"name": "ce", "spec": "ce", "kind": "cross-encoder", "fingerprint": "f", "activation": None,
                   "max_length": 32, "backend": "torch"}], ensemble=None)
    rng = random.Random(0)
    w = ScoreStoreWriter.create(tmp_path / "s", m, chunk_size=chunk_size)
    for a, b in w.pending():
        cols = {k: [] for k in ("query_id", "doc_id", "label", "score", "score__ce", "rank__bm25")}
        for qi in range(a, b + 1):
            for j in range(N_C):
                s = rng.choice([0.5, 1.0, 1.5, rng.random()])  # ties: the doc id breaks them
                cols["query_id"].append(f"q{qi}")
                cols["doc_id"].append(f"d{(qi * 3 + j) % 20}")
                cols["label"].append(1 if j in (qi % N_C, 4) else 0)
                cols["score"].append(s)
                cols["score__ce"].append(s)
                cols["rank__bm25"].append(j + 1)
        w.write_chunk(a, b, cols)
    w.finalize()
    return open_scores(tmp_path / "s")


def _dataset():
    corpus = {f"d{i}": {"title": "", "text": f"doc {i}"} for i in range(20)}
    queries = {f"q{i}": f"query {i}" for i in range(N_Q)}
    return BeirDataset("toy", ".", "train", corpus, queries, {})


def test_iter_queries_streams_across_batch_boundaries(tmp_path, monkeypatch):
    store = _store(tmp_path)
    whole = store.table(["query_id", "doc_id", "score", "label"]).to_pydict()
    expected: dict = {}
    for q, d, s, lab in zip(whole["query_id"], whole["doc_id"], whole["score"], whole["label"]):
        expected.setdefault(q, []).append((d, s, lab))
    for batch_rows in (2, 5, 10_000):  # a query's candidates split over 2-5 batches, or one batch per chunk
        monkeypatch.setattr(type(store), "BATCH_ROWS", batch_rows)
        got = list(store.iter_queries())
        assert [q for q, _ in got] == [f"q{i}" for i in range(N_Q)]
        assert dict(got) == expected
        assert store.by_query() == {q: sorted(r, key=lambda x: (-x[1], x[0])) for q, r in expected.items()}
    assert store.query_ids() == [f"q{i}" for i in range(N_Q)]


@pytest.mark.parametrize("documents", ["teacher", "student"])
@pytest.mark.parametrize("order", ["store", "shuffled"])
def test_examples_from_a_stream_equal_examples_from_memory(tmp_path, monkeypatch, documents, order):
    store = _store(tmp_path)
    monkeypatch.setattr(type(store), "BATCH_ROWS", 4)
    ds = _dataset()
    train = [f"q{i}" for i in range(N_Q) if i != 2] + ["not-in-store"]
    if order == "shuffled":  # a query the stream meets before its turn is held until then
        random.Random(1).shuffle(train)
    kw = dict(negatives=3, sampling="stratified", rounds=3, score_norm="zscore", documents=documents,
              doc_row={d: i for i, d in enumerate(ds.corpus)}, seed=5)
    mem = build_score_examples(store.by_query(), ds, train, **kw)
    streamed = build_score_examples(CandidateStream(store), ds, train, **kw)
    assert streamed.rows == mem.rows and streamed.stats == mem.stats
    assert mem.stats["skipped_not_in_store"] == 1 and mem.stats["examples"] == 3 * (N_Q - 1)
    assert streamed.dataset()[0] == mem.rows[0]


def test_stream_keeps_only_the_sliced_corpus(tmp_path):
    store = _store(tmp_path)
    keep = {f"d{i}" for i in range(0, 20, 2)}
    got = dict(CandidateStream(store, keep_docs=keep))
    want = {q: [r for r in rows if r[0] in keep] for q, rows in store.by_query().items()}
    assert got == want and any(len(v) < N_C for v in got.values())
