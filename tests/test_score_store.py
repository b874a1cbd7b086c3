"""The teacher-score store: writer, reader, resume, shards/merge, validation errors."""

from __future__ import annotations

import json

import pytest

from embed_kd.errors import ArtifactError, EmbedKDError
from embed_kd.teachers.store import (
    ScoreStoreWriter,
    chunk_ranges,
    merge_stores,
    new_manifest,
    open_scores,
    write_store,
)

QIDS = ["q0", "q1", "q2", "q3", "q4"]


def _manifest(n=5, ensemble=None, shard=None, teachers=("a", "b"), corpus_fp="c"):
    return new_manifest(
        dataset={"name": "toy", "split": "train", "corpus_fingerprint": corpus_fp, "queries_fingerprint": "q",
                 "qrels_fingerprint": "r", "n_queries": n},
        candidates=[{"source": "bm25", "name": "bm25", "k": 3}, {"source": "dense", "name": "dense", "model": "m",
                                                                 "model_fingerprint": "f", "k": 3}],
        teachers=[{"name": t, "spec": f"/path/{t}", "kind": "cross-encoder", "fingerprint": f"fp-{t}",
                   "activation": None, "max_length": 32, "backend": "torch"} for t in teachers],
        ensemble=ensemble, shard=shard)


def _rows(first, last):
    cols = {k: [] for k in ("query_id", "doc_id", "label", "score", "score__a", "score__b", "rank__bm25", "rank__dense")}
    for qi in range(first, last + 1):
        for j in range(3):
            cols["query_id"].append(QIDS[qi])
            cols["doc_id"].append(f"d{qi}-{j}")
            cols["label"].append(1 if j == 0 else 0)
            cols["score"].append(float(qi * 10 - j))
            cols["score__a"].append(float(-j))
            cols["score__b"].append(float(j))
            cols["rank__bm25"].append(j + 1)
            cols["rank__dense"].append(-1 if j == 2 else j + 1)
    return cols


def _fill(folder, manifest, chunk_size=2, stop_after=None):
    w = ScoreStoreWriter.create(folder, manifest, chunk_size=chunk_size)
    for i, (a, b) in enumerate(w.pending()):
        if stop_after is not None and i >= stop_after:
            w.close()
            return w
        w.write_chunk(a, b, _rows(a, b))
    w.finalize()
    return w


def test_write_read_roundtrip(tmp_path):
    out = tmp_path / "s"
    _fill(out, _manifest())
    store = open_scores(out)
    t = store.table()
    assert t.num_rows == 15
    assert t.schema.names == ["query_id", "doc_id", "label", "score", "score__a", "score__b", "rank__bm25", "rank__dense"]
    assert str(t.schema.field("score").type) == "float" and str(t.schema.field("label").type) == "int32"
    assert t.column("query_id").to_pylist()[::3] == QIDS  # queries contiguous, split order
    bq = store.by_query()
    assert bq["q2"] == [("d2-0", 20.0, 1), ("d2-1", 19.0, 0), ("d2-2", 18.0, 0)]
    assert store.to_run("score__b")["q0"] == {"d0-0": 0.0, "d0-1": 1.0, "d0-2": 2.0}
    m = json.loads((out / "manifest.json").read_text())
    assert m["complete"] and m["progress"] == {"queries_done": 5, "rows": 15, "chunks": 3}
    assert sorted(p.name for p in (out / "shards").iterdir()) == [
        "chunk-000000-000001.parquet", "chunk-000002-000003.parquet", "chunk-000004-000004.parquet"]
    with pytest.raises(EmbedKDError, match="no score column"):
        store.to_run("score__zzz")


def test_resume_skips_done_chunks_and_equals_clean(tmp_path):
    clean, part = tmp_path / "clean", tmp_path / "part"
    _fill(clean, _manifest())
    _fill(part, _manifest(), stop_after=1)
    with pytest.raises(ArtifactError, match="incomplete score store .*1|incomplete score store"):
        open_scores(part)
    w = ScoreStoreWriter.create(part, _manifest(), chunk_size=99)  # existing chunk size wins
    assert w.chunk_size == 2 and w.pending() == [(2, 3), (4, 4)]
    for a, b in w.pending():
        w.write_chunk(a, b, _rows(a, b))
    w.finalize()
    assert open_scores(part).table().equals(open_scores(clean).table())


def test_other_config_refused_and_overwrite(tmp_path):
    out = tmp_path / "s"
    _fill(out, _manifest(), stop_after=1)
    other = _manifest(ensemble={"norm": "zscore", "weights": {"a": 1.0, "b": 1.0}})
    with pytest.raises(ArtifactError, match="another config.*ensemble.*--overwrite"):
        ScoreStoreWriter.create(out, other)
    before = sorted(p.name for p in (out / "shards").iterdir())
    assert before == ["chunk-000000-000001.parquet"]  # untouched by the refused run
    w = ScoreStoreWriter.create(out, other, chunk_size=5, overwrite=True)
    assert w.pending() == [(0, 4)]
    w.close()


def test_complete_store_not_recomputed_without_overwrite(tmp_path):
    out = tmp_path / "s"
    _fill(out, _manifest())
    with pytest.raises(ArtifactError, match="already complete"):
        ScoreStoreWriter.create(out, _manifest())


def test_not_a_store_refused(tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    with pytest.raises(ArtifactError, match="not written by embed-kd as a teacher-score store"):
        ScoreStoreWriter.create(out, _manifest())
    with pytest.raises(ArtifactError, match="refusing to replace it, even with --overwrite"):
        ScoreStoreWriter.create(out, _manifest(), overwrite=True)
    assert (out / "mine.txt").exists()


def test_edited_manifest_and_corrupt_chunk_detected(tmp_path):
    out = tmp_path / "s"
    _fill(out, _manifest())
    m = json.loads((out / "manifest.json").read_text())
    m["teachers"][0]["activation"] = "sigmoid"
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="config_fingerprint .* does not match"):
        open_scores(out)

    out2 = tmp_path / "s2"
    _fill(out2, _manifest())
    (out2 / "shards" / "chunk-000002-000003.parquet").unlink()
    with pytest.raises(ArtifactError, match="cover 3 of 5|gap"):
        open_scores(out2)

    out3 = tmp_path / "s3"
    _fill(out3, _manifest())
    (out3 / "shards" / "chunk-000002-000003.parquet").write_bytes(b"not parquet")
    with pytest.raises(ArtifactError, match="unreadable chunk"):
        open_scores(out3)


def test_interrupted_temp_file_ignored(tmp_path):
    out = tmp_path / "s"
    _fill(out, _manifest(), stop_after=1)
    (out / "shards" / ".chunk-000002-000003.parquet.abc.tmp").write_bytes(b"half")
    w = ScoreStoreWriter.create(out, _manifest())
    assert w.pending() == [(2, 3), (4, 4)]
    w.close()


def test_shards_and_merge(tmp_path):
    assert chunk_ranges(5, 2, {"index": 0, "count": 2}) == [(0, 1), (4, 4)]
    shards = []
    for i in range(2):
        p = tmp_path / f"shard{i}"
        _fill(p, _manifest(shard={"index": i, "count": 2}))
        shards.append(p)
    with pytest.raises(ArtifactError, match="sharded run.*merge"):
        open_scores(shards[0])
    with pytest.raises(ArtifactError, match="shard\\(s\\) 1/2 missing"):
        merge_stores(shards[:1], tmp_path / "m0")
    assert not (tmp_path / "m0").exists()
    merged = merge_stores(shards, tmp_path / "merged")
    clean = tmp_path / "clean"
    _fill(clean, _manifest())
    assert merged.table().equals(open_scores(clean).table())
    assert merged.manifest["config_fingerprint"] == open_scores(clean).manifest["config_fingerprint"]
    other = tmp_path / "other"
    _fill(other, _manifest(shard={"index": 1, "count": 2}, corpus_fp="zz"))
    with pytest.raises(ArtifactError, match="another config.*dataset"):
        merge_stores([shards[0], other], tmp_path / "m1")


def test_concurrent_writer_refused(tmp_path):
    out = tmp_path / "s"
    w = ScoreStoreWriter.create(out, _manifest())
    with pytest.raises(ArtifactError, match="another score-teacher process"):
        ScoreStoreWriter.create(out, _manifest())
    w.close()


def test_write_store_one_shot(tmp_path):
    store = write_store(tmp_path / "w", _manifest(), _rows(0, 4))
    assert store.table().num_rows == 15 and store.manifest["complete"]
    with pytest.raises(EmbedKDError, match="already exists"):
        write_store(tmp_path / "w", _manifest(), _rows(0, 4))


def test_manifest_validation():
    with pytest.raises(EmbedKDError, match="weights name unknown teacher"):
        _manifest(ensemble={"norm": "zscore", "weights": {"zz": 1.0}})
    with pytest.raises(EmbedKDError, match="not valid"):
        _manifest(teachers=("bad name",))
    with pytest.raises(EmbedKDError, match="unique"):
        _manifest(teachers=("a", "a"))
    # spec (where a model was loaded from) does not enter the fingerprint
    m1, m2 = _manifest(), _manifest()
    m2["teachers"][0]["spec"] = "/elsewhere"
    from embed_kd.teachers.store import config_fingerprint

    assert config_fingerprint(m1) == config_fingerprint(m2)
