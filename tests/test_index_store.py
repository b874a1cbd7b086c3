"""Persisted FAISS index folders: build, add, verify, refuse — through the library and `embed-kd index`."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from embed_kd.cli import main
from embed_kd.data import fingerprint_corpus, load_beir, load_corpus
from embed_kd.errors import ArtifactError, EmbedKDError
from embed_kd.index import store
from embed_kd.index.store import append_to_index, open_index, read_manifest, write_index


def _index(args, cache_dir):
    return CliRunner().invoke(main, ["index", *args[:1], *args[1:], *(
        ["--no-progress", "-q", "--cache-dir", str(cache_dir)] if args[0] in ("build", "add") else [])])


def _files(path):
    return {p.name: p.read_bytes() for p in path.iterdir()}


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock"))


INFO = {"spec": "toy", "fingerprint": "f" * 16, "dim": 8, "max_seq_length": None}


def _toy(n, seed=0, start=0):
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, 8)).astype("float32")
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    docs = {f"d{i}": {"title": f"t{i}", "text": f"text {i}"} for i in range(start, start + n)}
    return emb, docs


def test_build_cli_writes_a_verified_folder(tiny_beir, tiny_model, cache_dir, tmp_path):
    from embed_kd.models import fingerprint_model, load_sentence_transformer

    out = tmp_path / "idx"
    res = _index(["build", "--data", str(tiny_beir), "--doc-model", str(tiny_model), "-o", str(out)], cache_dir)
    assert res.exit_code == 0, res.output
    assert "flat index of 30 docs × 32 dims" in res.stdout
    assert sorted(p.name for p in out.iterdir()) == ["docs.jsonl", "ids.json", "index.faiss", "manifest.json"]
    m = read_manifest(out)
    corpus = load_corpus(tiny_beir / "corpus.jsonl")
    assert m["schema"] == "embed-kd/index@1" and (m["n"], m["dim"], m["kind"]) == (30, 32, "flat")
    assert m["corpus"]["fingerprint"] == fingerprint_corpus(corpus)
    assert m["doc_model"]["fingerprint"] == fingerprint_model(load_sentence_transformer(str(tiny_model)))
    assert m["normalize"] is True and len(m["batches"]) == 1
    idx = open_index(out)
    assert idx.ids == list(corpus)
    # each document's own embedding finds itself first (exact inner product on normalised vectors)
    own = idx.index.reconstruct_n(0, idx.n)
    ids, scores, rows = idx.search(own[:3], k=30)[0]
    assert scores[ids.index("cat-0")] == pytest.approx(1.0, abs=1e-5) == scores[0]
    assert rows == [idx.ids.index(i) for i in ids]
    assert idx.text(0) == f"{corpus['cat-0']['title']} {corpus['cat-0']['text']}"
    # the same corpus through `embed-kd eval`'s cache: a second build is a cache hit with identical vectors
    out2 = tmp_path / "idx2"
    assert _index(["build", "--data", str(tiny_beir), "--doc-model", str(tiny_model), "-o", str(out2)],
                  cache_dir).exit_code == 0
    assert (out2 / "index.faiss").read_bytes() == (out / "index.faiss").read_bytes()


def test_build_refuses_existing_output_and_overwrite_replaces(tiny_beir, tiny_model, cache_dir, tmp_path):
    """A user's folder is never replaced (even with --overwrite); an embed-kd index is, with --overwrite."""
    out = tmp_path / "idx"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    args = ["build", "--data", str(tiny_beir), "--doc-model", str(tiny_model), "-o", str(out)]
    for extra in ([], ["--overwrite"]):
        res = _index(args + extra, cache_dir)
        assert res.exit_code == 2 and "not written by embed-kd as an index folder" in res.output, res.output
        assert (out / "mine.txt").read_text() == "user data"
    (out / "mine.txt").unlink()
    assert _index(args, cache_dir).exit_code == 0  # an empty folder holds nothing to lose
    res = _index(args, cache_dir)
    assert res.exit_code == 2 and "already exists" in res.output and "--overwrite" in res.output
    res = _index(args + ["--overwrite"], cache_dir)
    assert res.exit_code == 0, res.output
    assert read_manifest(out)["n"] == 30
    assert _leftovers(tmp_path) == []


def test_add_equals_a_fresh_build_of_all_documents(tiny_beir, tiny_model, cache_dir, tmp_path):
    corpus = load_corpus(tiny_beir / "corpus.jsonl")
    new = tmp_path / "new.jsonl"
    new.write_text("".join(json.dumps({"_id": d, **v}) + "\n" for d, v in list(corpus.items())[20:]))
    part, full = tmp_path / "part", tmp_path / "full"
    assert _index(["build", "--data", str(tiny_beir), "--doc-model", str(tiny_model), "-o", str(part),
                   "--limit-docs", "20"], cache_dir).exit_code == 0
    assert read_manifest(part)["n"] == 20
    res = _index(["add", str(part), "--docs", str(new)], cache_dir)  # doc model from the manifest
    assert res.exit_code == 0, res.output
    assert _index(["build", "--data", str(tiny_beir), "--doc-model", str(tiny_model), "-o", str(full)],
                  cache_dir).exit_code == 0
    a, b = open_index(part), open_index(full)
    assert a.ids == b.ids and a.manifest["corpus"]["fingerprint"] == b.manifest["corpus"]["fingerprint"]
    assert [(x["first_row"], x["n"]) for x in a.manifest["batches"]] == [(0, 20), (20, 10)]
    q = b.index.reconstruct_n(0, b.n)[::7]
    ra, rb = a.search(q, k=5), b.search(q, k=5)
    assert [r[0] for r in ra] == [r[0] for r in rb]
    np.testing.assert_allclose([r[1] for r in ra], [r[1] for r in rb], atol=1e-6)
    info = CliRunner().invoke(main, ["index", "info", str(part)])
    assert info.exit_code == 0 and "rows 20..29: 10 docs" in info.stdout


def test_add_refuses_duplicates_and_another_doc_model_leaving_index_intact(tiny_beir, tiny_model, tiny_model_b,
                                                                         cache_dir, tmp_path):
    out = tmp_path / "idx"
    assert _index(["build", "--data", str(tiny_beir), "--doc-model", str(tiny_model), "-o", str(out)],
                  cache_dir).exit_code == 0
    before = _files(out)
    dup = tmp_path / "dup.jsonl"
    dup.write_text(json.dumps({"_id": "new-1", "text": "cat"}) + "\n" + json.dumps({"_id": "dog-3", "text": "dog"}) + "\n")
    res = _index(["add", str(out), "--docs", str(dup)], cache_dir)
    assert res.exit_code == 2 and "already in the index (e.g. 'dog-3')" in res.output
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"_id": "new-1", "text": "cat"}) + "\n")
    res = _index(["add", str(out), "--docs", str(other), "--doc-model", str(tiny_model_b)], cache_dir)
    assert res.exit_code == 2 and "must be encoded by the same model" in res.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"_id": "x", "text": "cat"}) + "\n{oops\n")
    res = _index(["add", str(out), "--docs", str(bad)], cache_dir)
    assert res.exit_code == 2 and "bad.jsonl:2: malformed JSON" in res.output
    assert _files(out) == before and _leftovers(tmp_path) == []
    assert "Traceback" not in res.output


def test_interrupted_build_and_add_leave_nothing_half_written(tmp_path, monkeypatch):
    emb, docs = _toy(50)

    def boom(folder, manifest):
        raise KeyboardInterrupt  # as if killed just before the manifest

    with monkeypatch.context() as m:
        m.setattr(store, "_write_manifest", boom)
        with pytest.raises(KeyboardInterrupt):
            write_index(tmp_path / "idx", emb, docs, doc_model=INFO, normalize=True)
    assert not (tmp_path / "idx").exists() and _leftovers(tmp_path) == []

    write_index(tmp_path / "idx", emb, docs, doc_model=INFO, normalize=True)
    before = _files(tmp_path / "idx")
    emb2, docs2 = _toy(5, seed=1, start=50)
    with monkeypatch.context() as m:
        m.setattr(store, "_write_manifest", boom)
        with pytest.raises(KeyboardInterrupt):
            append_to_index(tmp_path / "idx", emb2, docs2, doc_model_fingerprint="f" * 16)
    assert _files(tmp_path / "idx") == before and _leftovers(tmp_path) == []
    assert open_index(tmp_path / "idx").n == 50


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_approximate_kinds_persist_and_accept_additions(kind, tmp_path):
    from embed_kd.index.faiss_index import build_faiss_index

    emb, docs = _toy(600)
    write_index(tmp_path / "idx", emb, docs, doc_model=INFO, normalize=True, kind=kind)
    emb2, docs2 = _toy(20, seed=3, start=600)
    m = append_to_index(tmp_path / "idx", emb2, docs2, doc_model_fingerprint="f" * 16)
    idx = open_index(tmp_path / "idx")
    assert m["kind"] == kind and idx.n == 620
    assert type(idx.index).__name__ == {"hnsw": "IndexHNSWFlat", "ivfpq": "IndexIVFPQ"}[kind]
    queries = np.concatenate([emb[:10], emb2[:10]])
    hits = idx.search(queries, k=5)
    if kind == "hnsw":  # a graph search over 620 points finds the stored vector itself
        assert [ids[0] for ids, _, _ in hits] == [f"d{i}" for i in range(10)] + [f"d{i}" for i in range(600, 610)]
    else:  # lossy codes: compare with the same index built in memory (k-means is seeded: deterministic)
        ref = build_faiss_index(emb, "ivfpq")
        ref.add(emb2)
        assert idx.index.nprobe == ref.nprobe
        _, rows = ref.search(queries, 5)
        assert [ids for ids, _, _ in hits] == [[f"d{r}" for r in row] for row in rows]


def test_corrupt_or_foreign_folders_are_refused_clearly(tmp_path):
    emb, docs = _toy(40)
    out = tmp_path / "idx"
    write_index(out, emb, docs, doc_model=INFO, normalize=True)
    raw = (out / "index.faiss").read_bytes()
    (out / "index.faiss").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ArtifactError, match="index.faiss: checksum does not match"):
        open_index(out)
    with pytest.raises(ArtifactError, match="index.faiss: FAISS cannot read it"):
        open_index(out, verify=False)
    res = CliRunner().invoke(main, ["index", "info", str(out)])
    assert res.exit_code == 2 and res.output.startswith("Error: ") and "Traceback" not in res.output
    (out / "index.faiss").write_bytes(raw)
    assert open_index(out).n == 40
    (out / "ids.json").unlink()
    with pytest.raises(ArtifactError, match="ids.json: missing"):
        open_index(out)
    m = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**m, "schema": "embed-kd/embeddings@1"}))
    with pytest.raises(ArtifactError, match="not an embed-kd index manifest"):
        read_manifest(out)
    with pytest.raises(ArtifactError, match="index folder not found"):
        read_manifest(tmp_path / "nope")


def test_write_index_validates_inputs(tmp_path):
    emb, docs = _toy(10)
    with pytest.raises(EmbedKDError, match=r"shape \(9, 8\); expected \(10, dim\)"):
        write_index(tmp_path / "a", emb[:9], docs, doc_model=INFO, normalize=True)
    bad = emb.copy()
    bad[3, 2] = np.nan
    with pytest.raises(EmbedKDError, match="NaN"):
        write_index(tmp_path / "b", bad, docs, doc_model=INFO, normalize=True)
    with pytest.raises(EmbedKDError, match="unknown index kind"):
        write_index(tmp_path / "c", emb, docs, doc_model=INFO, normalize=True, kind="annoy")
    write_index(tmp_path / "d", emb, docs, doc_model=INFO, normalize=True)
    with pytest.raises(EmbedKDError, match="fingerprint"):
        append_to_index(tmp_path / "d", *_toy(2, start=10), doc_model_fingerprint="0" * 16)
    with pytest.raises(EmbedKDError, match="4-dim; the index is 8-dim"):
        append_to_index(tmp_path / "d", np.ones((1, 4), "float32"), {"z": {"title": "", "text": "z"}},
                        doc_model_fingerprint="f" * 16)
    assert not any((tmp_path / n).exists() for n in "abc")


def test_index_search_matches_eval_dense_run(tiny_beir, tiny_model, cache_dir, tmp_path):
    """The index folder ranks exactly like `embed-kd eval` (same vectors, same FAISS flat search)."""
    from embed_kd.encode import encode_texts
    from embed_kd.evaluation.retrieval_eval import dense_run, encode_corpus
    from embed_kd.index.cache import EmbeddingCache
    from embed_kd.models import load_sentence_transformer

    model = load_sentence_transformer(str(tiny_model))
    ds = load_beir(tiny_beir, "test")
    store.build_index(tmp_path / "idx", ds.corpus, model, cache=EmbeddingCache(cache_dir), show_progress=False)
    doc_emb, doc_ids, _ = encode_corpus(model, ds, cache=EmbeddingCache(cache_dir), show_progress=False)
    qids = list(ds.queries)
    q = encode_texts(model, [ds.queries[x] for x in qids], show_progress=False, role="query")
    expected = dense_run(q, qids, doc_emb, doc_ids, k=10)
    got = open_index(tmp_path / "idx").search(q, k=10)
    for qid, (ids, scores, _) in zip(qids, got):
        assert ids == list(expected[qid]) and scores == pytest.approx(list(expected[qid].values()))
