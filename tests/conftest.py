"""Shared fixtures: tiny config-built models and a tiny BEIR dataset, all offline and made in seconds."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
SHARED_SCIFACT = Path(os.environ.get("EMBED_KD_DATA", REPO.parent / "shared" / "data")) / "beir" / "scifact"

TOPICS = {
    "cat": ["cat", "cats", "kitten", "purr", "whisker", "feline"],
    "dog": ["dog", "dogs", "puppy", "bark", "leash", "canine"],
    "sun": ["sun", "solar", "light", "star", "heat", "photon"],
    "sea": ["sea", "ocean", "wave", "salt", "tide", "coral"],
    "gene": ["gene", "dna", "protein", "cell", "mutation", "rna"],
    "rain": ["rain", "cloud", "storm", "wet", "umbrella", "drop"],
}
FILLER = ["the", "a", "of", "and", "is", "in", "on", "with", "study", "shows", "effect", "new"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted({w for ws in TOPICS.values() for w in ws} | set(FILLER)) + [
    "?", ".", ","]


def write_tiny_beir(root: Path, n_docs_per_topic: int = 5, seed: int = 0) -> Path:
    """A BEIR folder whose queries are answerable by topic words (so retrieval has signal)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    corpus, queries, qrels_test, qrels_train = [], [], [], []
    for t_i, (topic, words) in enumerate(TOPICS.items()):
        for j in range(n_docs_per_topic):
            text = " ".join(rng.choice(words + FILLER) for _ in range(12))
            corpus.append({"_id": f"{topic}-{j}", "title": f"{words[j % len(words)]} {topic}", "text": text})
        for s, split in enumerate(("test", "train")):
            qid = f"q-{topic}-{split}"
            queries.append({"_id": qid, "text": f"{words[s]} {words[s + 2]} {topic} ?"})
            target = qrels_test if split == "test" else qrels_train
            target += [(qid, f"{topic}-{j}", 1) for j in range(s, s + 2)]
    (root / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels").mkdir(exist_ok=True)
    for name, rows in (("test", qrels_test), ("train", qrels_train)):
        (root / "qrels" / f"{name}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{r}\n" for q, d, r in rows))
    return root


def tiny_tokenizer(vocab: list[str] | None = None, **kwargs):
    """A lower-casing WordPiece tokenizer over ``vocab`` (default :data:`VOCAB`).

    Built from a vocabulary dict: transformers 5 ignores ``BertTokenizerFast(vocab_file=...)``
    and would map every word to ``[UNK]``.
    """
    from transformers import BertTokenizerFast

    words = VOCAB if vocab is None else vocab
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True, **kwargs)
    assert tok.convert_tokens_to_ids("cat") != tok.unk_token_id or "cat" not in words, "tokenizer maps words to [UNK]"
    return tok


def build_tiny_bi_encoder(path: Path, *, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A 2-layer BERT bi-encoder (mean pooling + normalise) built from a config, saved as an ST folder."""
    import torch
    from sentence_transformers import SentenceTransformer
    try:
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    raw = path.parent / f"{path.name}-hf"
    raw.mkdir(parents=True, exist_ok=True)
    tiny_tokenizer().save_pretrained(raw)
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=hidden * 2, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(raw)
    transformer = Transformer(str(raw), max_seq_length=32)
    model = SentenceTransformer(modules=[transformer, Pooling(hidden, "mean"), Normalize()], device="cpu")
    model.save(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_beir(tmp_path_factory) -> Path:
    return write_tiny_beir(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_bi_encoder(tmp_path_factory.mktemp("models") / "tiny-bi")


@pytest.fixture(scope="session")
def tiny_model_b(tmp_path_factory) -> Path:
    """Same architecture as ``tiny_model``, other weights (a stand-in student)."""
    return build_tiny_bi_encoder(tmp_path_factory.mktemp("models") / "tiny-bi-b", seed=1)


@pytest.fixture(scope="session")
def tiny_model_wide(tmp_path_factory) -> Path:
    """A 48-dim bi-encoder: a dimension mismatch against ``tiny_model``."""
    return build_tiny_bi_encoder(tmp_path_factory.mktemp("models") / "tiny-bi-48", hidden=48)


@pytest.fixture()
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def scifact_dir() -> Path:
    if not (SHARED_SCIFACT / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact not found at {SHARED_SCIFACT} (set EMBED_KD_DATA)")
    return SHARED_SCIFACT


@pytest.fixture(params=[False, True], ids=["bf16-absent", "bf16-present"])
def cpu_bf16(request, monkeypatch) -> bool:
    """The CPU's native-bfloat16 capability, faked both ways (``EMBED_KD_FAKE_CPU_BF16``): a test that
    depends on the CPU takes this fixture, so both paths run on any machine (x86-64 with or without
    AVX512-BF16/AMX, arm64). Such tests are marked ``cpu_feature`` (see pytest_collection_modifyitems)."""
    from embed_kd.cpu import FAKE_BF16_ENV

    monkeypatch.setenv(FAKE_BF16_ENV, "1" if request.param else "0")
    return request.param


def pytest_configure(config):
    config.addinivalue_line("markers", "cpu_feature: depends on a CPU capability; faked both ways by the "
                                       "cpu_bf16 fixture (.ci/run runs these again with the opposite fake)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "cpu_bf16" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cpu_feature)
