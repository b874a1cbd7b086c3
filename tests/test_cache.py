import numpy as np

from embed_kd.data import load_beir
from embed_kd.evaluation.retrieval_eval import encode_corpus
from embed_kd.index.cache import EmbeddingCache
from embed_kd.models import load_sentence_transformer


def _key(cache):
    return cache.make_key("m" * 16, "c" * 16, 32, True)


def test_hit_after_store_and_no_reencode(tmp_path):
    cache = EmbeddingCache(tmp_path)
    calls = []
    emb = np.random.default_rng(0).random((3, 4), dtype=np.float32)

    def enc():
        calls.append(1)
        return emb

    r1 = cache.get_or_encode(_key(cache), ["a", "b", "c"], enc)
    r2 = cache.get_or_encode(_key(cache), ["a", "b", "c"], enc)
    assert (r1.hit, r2.hit, len(calls)) == (False, True, 1)
    np.testing.assert_array_equal(r2.embeddings, emb)


def test_corrupt_entry_is_rebuilt_not_trusted(tmp_path, caplog):
    cache = EmbeddingCache(tmp_path)
    emb = np.ones((3, 4), dtype=np.float32)
    entry = cache.store(_key(cache), ["a", "b", "c"], emb)
    data = (entry / "embeddings.npy").read_bytes()
    (entry / "embeddings.npy").write_bytes(data[:-8])  # truncated
    assert cache.load(_key(cache), ["a", "b", "c"]) is None
    assert "checksum mismatch" in caplog.text
    assert not entry.exists()
    r = cache.get_or_encode(_key(cache), ["a", "b", "c"], lambda: emb * 2)
    assert not r.hit and float(r.embeddings[0, 0]) == 2.0


def test_ids_mismatch_is_a_miss(tmp_path):
    cache = EmbeddingCache(tmp_path)
    cache.store(_key(cache), ["a", "b"], np.zeros((2, 4), dtype=np.float32))
    assert cache.load(_key(cache), ["a", "c"]) is None


def test_key_depends_on_model_corpus_length_norm(tiny_beir, tiny_model, tmp_path):
    model = load_sentence_transformer(tiny_model)
    ds = load_beir(tiny_beir, "test")
    cache = EmbeddingCache(tmp_path)
    emb1, ids, r1 = encode_corpus(model, ds, cache=cache, show_progress=False)
    emb2, _, r2 = encode_corpus(model, ds, cache=cache, show_progress=False)
    assert not r1.hit and r2.hit
    np.testing.assert_array_equal(emb1, emb2)
    model.max_seq_length = 16
    _, _, r3 = encode_corpus(model, ds, cache=cache, show_progress=False)
    assert not r3.hit and r3.path != r1.path
    _, _, r4 = encode_corpus(model, ds.sliced(max_docs=10), cache=cache, show_progress=False)
    assert not r4.hit
