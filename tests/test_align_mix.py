"""Multi-source alignment texts (``examples.align_texts``): config checks, weighted mixing, STSb train only."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from embed_kd.cli import main
from embed_kd.data import load_beir
from embed_kd.data.beir import doc_text
from embed_kd.errors import EmbedKDError
from embed_kd.training.config import TrainConfig
from embed_kd.training.data import build_align_examples

sys.path.insert(0, str(Path(__file__).parent))
from test_train_e2e import _config, tiny_store  # noqa: E402, F401  (fixture)

BASE = {"data": "d", "scores": "s", "teacher": "t", "output": "o",
        "student": {"from_teacher": True, "keep_layers": [0]}}


def _cfg(align_texts):
    return TrainConfig.from_dict({**BASE, "examples": {"align_texts": align_texts}}).validate()


def test_weighted_and_old_forms_validate():
    old = _cfg(["corpus", "queries"])
    assert old.examples.align_texts == ["corpus", "queries"]
    mix = _cfg([{"source": "corpus", "weight": 0.5}, {"source": "queries", "weight": 0.2},
                {"source": "stsb-train", "weight": 0.3}])
    assert [e["weight"] for e in mix.examples.align_texts] == [0.5, 0.2, 0.3]


@pytest.mark.parametrize("align_texts, message", [
    (["corpus", "wikipedia"], r"examples\.align_texts\[1\] = 'wikipedia' is not a known source"),
    ([{"source": "corpus", "weight": 1}, {"source": "stsb-test", "weight": 1}],
     r"examples\.align_texts\[1\]\.source = 'stsb-test' is an evaluation split"),
    ([{"source": "corpus", "weight": 1}, {"source": "queries"}], "give every source a weight, or none"),
    ([{"source": "corpus", "weight": -1}], r"examples\.align_texts\[0\]\.weight must be a number > 0"),
    ([{"source": "corpus", "share": 1}], r"examples\.align_texts\[0\]: unknown key\(s\) share"),
    (["corpus", "corpus"], "source 'corpus' is listed twice"),
])
def test_bad_sources_are_refused_naming_the_key(align_texts, message):
    with pytest.raises(EmbedKDError, match=message):
        _cfg(align_texts)


def test_unknown_source_is_one_error_line_from_the_cli(tmp_path, tiny_beir, tiny_model, tiny_store):  # noqa: F811
    cfg = _config(tmp_path, tiny_beir, tiny_model, tiny_store)
    res = CliRunner().invoke(main, ["train", str(cfg), "-q", "--set",
                                    "examples.align_texts=[{source: corpus, weight: 1}, {source: news, weight: 1}]"])
    assert res.exit_code == 2
    assert "Error: config: examples.align_texts[1].source = 'news' is not a known source" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "student").exists()


def _parts(tiny_beir):
    """The tiny dataset, and 'teacher embeddings' that name their text (row i of a source = one-hot of a
    per-text id), so that a text's label can be checked after mixing."""
    ds = load_beir(tiny_beir, "train")
    doc_ids, qids = list(ds.corpus), list(ds.queries)
    general = [f"general sentence {i}" for i in range(12)]
    every = [doc_text(ds.corpus[d]) for d in doc_ids] + [ds.queries[q] for q in qids] + general
    index = {t: i for i, t in enumerate(every)}
    onehot = lambda texts: np.eye(len(every), dtype=np.float32)[[index[t] for t in texts]]  # noqa: E731
    return (ds, doc_ids, qids, onehot([doc_text(ds.corpus[d]) for d in doc_ids]),
            onehot([ds.queries[q] for q in qids]), {"file:g.txt": (general, onehot(general))}, index)


def test_weights_decide_the_shares_of_the_built_examples(tiny_beir):
    ds, doc_ids, qids, d_emb, q_emb, general, index = _parts(tiny_beir)
    mix = [{"source": "corpus", "weight": 0.5}, {"source": "queries", "weight": 0.2},
           {"source": "file:g.txt", "weight": 0.3}]
    texts, emb, stats = build_align_examples(ds, d_emb, doc_ids, qids, q_emb, texts=mix, max_texts=200, seed=0,
                                             general=general)
    assert len(texts) == 200 and emb.shape[0] == 200
    origin = Counter("corpus" if t in {doc_text(ds.corpus[d]) for d in doc_ids} else
                     "queries" if t in set(ds.queries.values()) else "file:g.txt" for t in texts)
    assert origin == {"corpus": 100, "queries": 40, "file:g.txt": 60}  # 0.5 / 0.2 / 0.3 of 200
    assert [(s["source"], s["drawn"], s["available"]) for s in stats["sources"]] == [
        ("corpus", 100, len(doc_ids)), ("queries", 40, len(qids)), ("file:g.txt", 60, 12)]
    assert stats["weighted"] and stats["texts"] == 200
    assert all(int(np.argmax(e)) == index[t] for t, e in zip(texts, emb))  # every text keeps its own label
    small = Counter(texts[i] for i in range(len(texts)) if texts[i].startswith("general"))
    assert set(small.values()) == {5}  # 60 drawn from 12: every general text 5 times (whole cycles)


def test_weighted_mix_without_a_cap_has_the_sources_total_size(tiny_beir):
    ds, doc_ids, qids, d_emb, q_emb, general, _ = _parts(tiny_beir)
    texts, _, stats = build_align_examples(ds, d_emb, doc_ids, qids, q_emb, seed=1, general=general, max_texts=None,
                                           texts=[{"source": "corpus", "weight": 1}, {"source": "file:g.txt",
                                                                                       "weight": 1}])
    assert len(texts) == len(doc_ids) + 12
    assert [s["drawn"] for s in stats["sources"]] == [(len(doc_ids) + 12) // 2] * 2


def test_old_list_form_keeps_every_text_once(tiny_beir):
    ds, doc_ids, qids, d_emb, q_emb, _, _ = _parts(tiny_beir)
    texts, emb, stats = build_align_examples(ds, d_emb, doc_ids, qids, q_emb, texts=["corpus", "queries"],
                                             max_texts=None, seed=0)
    assert texts == [doc_text(ds.corpus[d]) for d in doc_ids] + [ds.queries[q] for q in qids]
    assert np.array_equal(emb, np.concatenate([d_emb, q_emb]))
    assert (stats["corpus_docs"], stats["train_queries"], stats["weighted"]) == (len(doc_ids), len(qids), False)


def test_stsb_train_source_reads_the_train_split_only(tmp_path, monkeypatch):
    from embed_kd.training.align_mix import AlignSource, general_texts

    (tmp_path / "stsb").mkdir()
    for split in ("train", "dev", "test"):
        (tmp_path / "stsb" / f"sts-{split}.csv").write_text(
            f"g\tf\ty\t1\t3.0\t{split} one.\t{split} two.\ng\tf\ty\t2\t1.0\t{split} two.\t{split} three.\textra\tcol\n")
    monkeypatch.setenv("EMBED_KD_DATA", str(tmp_path))
    assert general_texts(AlignSource("stsb-train", 1.0)) == ["train one.", "train two.", "train three."]


def test_train_with_a_general_text_file_records_the_mix(tmp_path, tiny_beir, tiny_model, tiny_store,  # noqa: F811
                                                        cache_dir):
    general = tmp_path / "general.txt"
    general.write_text("the sun is a star\n\na cat and a dog\nrain and cloud on the sea\n")
    mix = [{"source": "corpus", "weight": 0.6}, {"source": f"file:{general}", "weight": 0.4}]
    cfg = _config(tmp_path, tiny_beir, tiny_model, tiny_store,
                  examples={"align_texts": mix, "max_align_texts": 20}, train={"max_steps": 4})
    res = CliRunner().invoke(main, ["train", str(cfg), "--cache-dir", str(cache_dir), "--no-progress", "-q"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "student" / "embed_kd_train.json").read_text())
    src = {s["source"]: s for s in m["examples"]["align"]["sources"]}
    assert src["corpus"]["drawn"] == 12 and src[f"file:{general}"]["drawn"] == 8
    assert src[f"file:{general}"]["available"] == 3 and m["examples"]["align"]["texts"] == 20
    assert yaml.safe_load(yaml.safe_dump(m["config"]["examples"]["align_texts"])) == mix
