"""Static-embedding students (embed_kd.students.static): the teacher init against hand-computed values,
and a tiny static student trained, saved, evaluated (asymmetric) and served end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from conftest import VOCAB, tiny_tokenizer  # noqa: E402
from test_train_e2e import _config, write_tiny_store  # noqa: E402

from embed_kd.cli import main  # noqa: E402


def _zero_layer_teacher(path: Path, hidden: int = 8):
    """A BERT with no transformer layer (output = LayerNorm(word + position + type embedding)), mean pooling,
    normalisation: its per-token vectors can be computed by hand from its weights."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    raw = path.parent / f"{path.name}-hf"
    raw.mkdir(parents=True)
    tiny_tokenizer().save_pretrained(raw)
    BertModel(BertConfig(vocab_size=len(VOCAB), hidden_size=hidden, num_hidden_layers=0, num_attention_heads=1,
                         intermediate_size=hidden, max_position_embeddings=16)).save_pretrained(raw)
    model = SentenceTransformer(modules=[Transformer(str(raw), max_seq_length=12), Pooling(hidden, "mean"), Normalize()],
                                device="cpu")
    model.save(str(path))
    from embed_kd.models import load_sentence_transformer

    return load_sentence_transformer(str(path))


def _by_hand(teacher, token_ids: list[int], positions: list[int]) -> np.ndarray:
    """LayerNorm(word[t] + pos[p] + type[0]) for each (t, p), from the saved weights with numpy."""
    sd = {k: v.detach().numpy().astype(np.float64) for k, v in teacher[0].auto_model.state_dict().items()}
    word, pos, typ = (sd["embeddings.word_embeddings.weight"], sd["embeddings.position_embeddings.weight"],
                      sd["embeddings.token_type_embeddings.weight"])
    gamma, beta = sd["embeddings.LayerNorm.weight"], sd["embeddings.LayerNorm.bias"]
    eps = teacher[0].auto_model.config.layer_norm_eps
    h = word[token_ids] + pos[positions] + typ[0]
    h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + eps)
    return h * gamma + beta


@pytest.fixture(scope="module")
def flat_teacher(tmp_path_factory):
    return _zero_layer_teacher(tmp_path_factory.mktemp("models") / "bert-0")


def test_init_matches_hand_computed_token_vectors(flat_teacher):
    from embed_kd.students.static import teacher_token_vectors, vocabulary

    vocab = vocabulary(flat_teacher)
    assert vocab == VOCAB
    cls, sep, cat = VOCAB.index("[CLS]"), VOCAB.index("[SEP]"), VOCAB.index("cat")
    mean = teacher_token_vectors(flat_teacher, pooling="mean", batch_size=7)  # batches cut the vocabulary
    token = teacher_token_vectors(flat_teacher, pooling="token")
    assert mean.shape == token.shape == (len(VOCAB), 8)
    # mean pooling of [CLS] cat [SEP] at positions 0, 1, 2; token pooling: position 1 alone
    expect_mean = _by_hand(flat_teacher, [cls, cat, sep], [0, 1, 2]).mean(0)
    np.testing.assert_allclose(mean[cat], expect_mean, atol=1e-5)
    np.testing.assert_allclose(token[cat], _by_hand(flat_teacher, [cat], [1])[0], atol=1e-5)
    every = np.stack([_by_hand(flat_teacher, [cls, i, sep], [0, 1, 2]).mean(0) for i in range(len(VOCAB))])
    np.testing.assert_allclose(mean, every, atol=1e-5)


def test_student_embeds_the_sif_weighted_mean(flat_teacher, tmp_path):
    from sentence_transformers import SentenceTransformer

    from embed_kd.students.static import StaticSpec, build_static_student, is_static_model

    texts = ["cat cat dog", "the cat"]  # counts: cat 3, dog 1, the 1 (5 tokens)
    a = 0.1
    student = build_static_student(flat_teacher, StaticSpec(weighting="sif", sif_coefficient=a), texts=texts)
    assert is_static_model(student) and student.similarity_fn_name == flat_teacher.similarity_fn_name
    cls, sep = VOCAB.index("[CLS]"), VOCAB.index("[SEP]")
    x = {w: _by_hand(flat_teacher, [cls, VOCAB.index(w), sep], [0, 1, 2]).mean(0) for w in ("cat", "dog", "sun")}
    w = {"cat": a / (a + 3 / 5), "dog": a / (a + 1 / 5), "sun": 1.0}  # sun: never counted
    expect = (w["cat"] * x["cat"] + w["dog"] * x["dog"] + w["sun"] * x["sun"]) / 3
    expect /= np.linalg.norm(expect)
    got = student.encode(["Cat dog sun"], convert_to_numpy=True)[0]
    np.testing.assert_allclose(got, expect, atol=1e-5)
    student.save(str(tmp_path / "s"))
    again = SentenceTransformer(str(tmp_path / "s"), device="cpu")
    np.testing.assert_allclose(again.encode(["Cat dog sun"])[0], got, atol=1e-6)
    with pytest.raises(Exception, match="sif"):
        build_static_student(flat_teacher, StaticSpec(weighting="sif"), texts=None)


def test_pca_dense_maps_back_to_the_teacher_space(flat_teacher):
    from embed_kd.students.static import StaticSpec, build_static_student, teacher_token_vectors

    student = build_static_student(flat_teacher, StaticSpec(pca_dims=3, weighting="none"))
    assert [type(m).__name__ for m in student] == ["StaticEmbedding", "Dense", "Normalize"]
    assert student[0].embedding_dim == 3 and student.get_embedding_dimension() == 8
    x = teacher_token_vectors(flat_teacher).astype(np.float64)
    xc = x - x.mean(0)
    comp = np.linalg.svd(xc, full_matrices=False)[2][:3]
    cat = VOCAB.index("cat")
    expect = xc[cat] @ comp.T @ comp  # the token, centred, on the top-3 principal subspace
    import torch

    with torch.no_grad():
        feats = student[0].preprocess(["cat"])
        got = student[1](student[0](feats))["sentence_embedding"][0].numpy()
    np.testing.assert_allclose(got, expect, atol=1e-4)  # the sign of each component cancels in C^T C


def test_token_vectors_are_cached_by_teacher_fingerprint(flat_teacher, tmp_path, monkeypatch):
    import embed_kd.students.static as static
    from embed_kd.index.cache import EmbeddingCache

    cache = EmbeddingCache(tmp_path / "cache")
    first = static.cached_token_vectors(flat_teacher, cache=cache)
    entries = list((tmp_path / "cache" / "embeddings").iterdir())
    assert len(entries) == 1
    meta = json.loads((entries[0] / "meta.json").read_text())
    assert meta["corpus_fingerprint"].startswith("static-tokens:mean:") and meta["n"] == len(VOCAB)

    def no_encoding(*a, **k):
        raise AssertionError("the cached matrix should have been read")

    monkeypatch.setattr(static, "teacher_token_vectors", no_encoding)
    np.testing.assert_array_equal(static.cached_token_vectors(flat_teacher, cache=cache), first)


def test_static_config_defaults_and_refusals(tmp_path):
    from embed_kd.errors import EmbedKDError
    from embed_kd.students.static import TRAIN_DEFAULTS
    from embed_kd.training.config import TrainConfig, apply_overrides

    base = {"data": "d", "teacher": "t", "output": "o", "scores": "s"}
    cfg = TrainConfig.from_dict({**base, "student": {"type": "static", "from_teacher": True}}).validate()
    assert cfg.train.lr == TRAIN_DEFAULTS["lr"] and cfg.train.weight_decay == 0.0
    dense = TrainConfig.from_dict({**base, "student": {"from_teacher": True, "keep_layers": [0]}})
    assert dense.train.lr == 2e-4
    assert apply_overrides(cfg, ["train.lr=0.2"]).train.batch_size == TRAIN_DEFAULTS["batch_size"]
    path = tmp_path / "c.yaml"
    path.write_text("student: {from_teacher: true}\ntrain: {batch_size: 8}\n")
    from_flag = TrainConfig.from_yaml(path, student_type="static")
    assert (from_flag.student.type, from_flag.train.lr, from_flag.train.batch_size) == ("static", 0.05, 8)
    for bad, msg in (({"keep_layers": [0]}, "keep_layers"), ({"projection_dim": 4}, "projection_dim")):
        with pytest.raises(EmbedKDError, match=msg):
            TrainConfig.from_dict({**base, "student": {"type": "static", "from_teacher": True, **bad}}).validate()
    with pytest.raises(EmbedKDError, match="static.weighting"):
        TrainConfig.from_dict({**base, "student": {"type": "static", "from_teacher": True},
                               "static": {"weighting": "idf"}}).validate()


@pytest.fixture(scope="module")
def static_store(tiny_beir, tiny_model, tmp_path_factory) -> Path:
    return write_tiny_store(tiny_beir, tiny_model, tmp_path_factory.mktemp("scores") / "tiny-train")


def test_static_student_trains_evaluates_and_serves(tmp_path, tiny_beir, tiny_model, static_store, cache_dir):
    from sentence_transformers import SentenceTransformer

    from embed_kd.students.static import is_static_model

    cfg = _config(tmp_path, tiny_beir, tiny_model, static_store, student={"keep_layers": None},
                  train={"lr": 0.1, "batch_size": 4, "epochs": 2})
    r = CliRunner().invoke(main, ["train", str(cfg), "--student-type", "static", "--cache-dir", str(cache_dir),
                                  "--no-progress", "-q"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "student"
    m = json.loads((out / "embed_kd_train.json").read_text())
    assert m["student"]["type"] == "static" and m["student"]["max_seq_length"] is None
    assert m["config"]["train"]["weight_decay"] == 0.0  # the static default (the file sets lr, batch_size)
    assert m["config"]["train"]["lr"] == 0.1
    assert "teacher tokens" in m["student"]["init"]
    assert m["student"]["fingerprint"] != m["student"]["init_fingerprint"]  # it trained
    losses = [h["loss"] for h in m["training"]["log_history"] if "loss" in h]
    assert losses and all(np.isfinite(losses))
    model = SentenceTransformer(str(out), device="cpu")  # a plain sentence-transformers folder
    assert is_static_model(model) and model.encode(["cat ?"]).shape == (1, 32)
    # the Router artifact embed-kd train writes beside every student (embed_kd.students.asym)
    asym = SentenceTransformer(str(out / "asym"), device="cpu")
    assert is_static_model(asym)  # the query route is the static student
    np.testing.assert_allclose(asym.encode_query(["cat ?"]), model.encode(["cat ?"]), atol=1e-6)
    np.testing.assert_allclose(asym.encode_document(["cat ?"]), SentenceTransformer(str(tiny_model), device="cpu")
                               .encode(["cat ?"]), atol=1e-6)  # the document route is the teacher

    res = tmp_path / "eval.json"
    r = CliRunner().invoke(main, ["eval", "--data", str(tiny_beir), "--query-model", str(out), "--doc-model",
                                  str(tiny_model), "--loyalty-teacher", str(tiny_model), "--cache-dir",
                                  str(cache_dir), "--no-progress", "-q", "-o", str(res)])
    assert r.exit_code == 0, r.output
    result = json.loads(res.read_text())
    assert 0.0 <= result["metrics"]["ndcg_at_10"] <= 1.0 and result["query_model"]["max_seq_length"] is None
    assert "top10_overlap" in json.dumps(result)

    from embed_kd.data import load_corpus
    from embed_kd.index.cache import EmbeddingCache
    from embed_kd.index.store import build_index
    from embed_kd.models import load_sentence_transformer
    from embed_kd.serve.app import create_app
    from embed_kd.serve.engine import SearchEngine
    from embed_kd.serve.runner import BackgroundServer

    idx = tmp_path / "idx"
    build_index(idx, load_corpus(tiny_beir / "corpus.jsonl"), load_sentence_transformer(str(tiny_model)),
                cache=EmbeddingCache(cache_dir), show_progress=False)
    engine = SearchEngine.load(idx, str(out))
    assert engine.alignment == "declared"  # the manifest names the index's doc model as its teacher
    with BackgroundServer(create_app(engine)) as url:
        info = httpx.get(f"{url}/info")
        assert info.status_code == 200 and info.json()["query_model"]["max_seq_length"] is None
        hits = httpx.post(f"{url}/search", json={"query": "cat kitten", "k": 3}).json()["results"][0]
    assert len(hits["ids"]) == 3
    expect = engine.index.search(model.encode(["cat kitten"], normalize_embeddings=True), 3)[0][0]
    assert hits["ids"] == list(expect)
