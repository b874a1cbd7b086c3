"""STS evaluation: the reader, the evaluator against a hand-computed Spearman, ``eval --sts`` and ``report``."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from embed_kd.cli import main
from embed_kd.data.sts import load_sts, resolve_sts
from embed_kd.errors import DataError

PAIRS = [  # tiny-vocabulary sentences (tests/conftest.py VOCAB), with made-up human scores (no ties)
    ("cat kitten purr", "feline cats whisker", 4.8),
    ("dog puppy bark", "canine dogs leash", 4.1),
    ("sun solar light", "star heat photon", 3.7),
    ("sea ocean wave", "the cat is on a leash", 0.4),
    ("gene dna protein", "cell mutation rna", 3.2),
    ("rain cloud storm", "sun light heat", 1.6),
    ("cat purr", "dog bark", 2.2),
    ("wave tide coral", "salt sea ocean", 4.4),
]


def write_sts(path, pairs=PAIRS, extra_columns=False):
    lines = []
    for i, (a, b, s) in enumerate(pairs):
        tail = "\tsrc-a\tsrc-b" if extra_columns and i % 3 == 0 else ""
        lines.append(f"main-captions\tMSRvid\t2012test\t{i:04d}\t{s:.3f}\t{a}\t{b}{tail}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _ranks(x):
    r = np.empty(len(x))
    r[np.argsort(x)] = np.arange(1, len(x) + 1)
    return r


def hand_spearman(model_path, pairs):
    """Spearman by hand: cosine of each pair, then 1 - 6 Σd² / (n (n² - 1)) over ranks (no ties here)."""
    from sentence_transformers import SentenceTransformer

    m = SentenceTransformer(str(model_path), device="cpu")
    a = m.encode([p[0] for p in pairs], convert_to_numpy=True)
    b = m.encode([p[1] for p in pairs], convert_to_numpy=True)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    gold = np.array([p[2] for p in pairs])
    assert len(set(np.round(cos, 7))) == len(pairs), "ties in the fixture's cosines: pick other sentences"
    d = _ranks(cos) - _ranks(gold)
    n = len(pairs)
    return 1 - 6 * float((d ** 2).sum()) / (n * (n ** 2 - 1)), float(np.corrcoef(cos, gold)[0, 1])


def test_reader_reads_first_seven_columns_and_three_column_files(tmp_path):
    sts = load_sts(write_sts(tmp_path / "s.csv", extra_columns=True))
    assert sts.sentences1 == [p[0] for p in PAIRS] and sts.sentences2 == [p[1] for p in PAIRS]
    assert sts.scores == pytest.approx([p[2] for p in PAIRS]) and sts.split is None and sts.name == "s"
    three = tmp_path / "three.tsv"
    three.write_text("".join(f"{a}\t{b}\t{s}\n" for a, b, s in PAIRS[:3]))
    assert load_sts(three).sentences2 == [p[1] for p in PAIRS[:3]]


@pytest.mark.parametrize("line, problem", [("a\tb\n", "expected 7 tab-separated columns"),
                                           ("g\tf\ty\t1\thigh\tA\tB\n", "score 'high' is not a finite number")])
def test_reader_refuses_bad_lines_naming_file_and_line(tmp_path, line, problem):
    p = tmp_path / "bad.csv"
    p.write_text("g\tf\ty\t0\t1.0\tA\tB\n" + line)
    with pytest.raises(DataError, match=rf"bad\.csv:2: {problem}"):
        load_sts(p)


def test_stsb_name_resolves_under_embed_kd_data(tmp_path, monkeypatch):
    (tmp_path / "stsb").mkdir()
    write_sts(tmp_path / "stsb" / "sts-dev.csv")
    monkeypatch.setenv("EMBED_KD_DATA", str(tmp_path))
    assert resolve_sts("stsb", "dev") == tmp_path / "stsb" / "sts-dev.csv"
    assert load_sts("stsb", "dev").split == "dev"
    with pytest.raises(DataError, match="sts-test.csv"):
        resolve_sts("stsb", "test")


def test_evaluator_matches_hand_computed_spearman_and_pearson(tmp_path, tiny_model):
    from embed_kd.evaluation.sts import sts_metrics
    from embed_kd.models import load_sentence_transformer

    pairs = load_sts(write_sts(tmp_path / "s.csv"))
    got = sts_metrics(load_sentence_transformer(str(tiny_model)), pairs)
    spearman, pearson = hand_spearman(tiny_model, PAIRS)
    assert got["spearman_cosine"] == pytest.approx(spearman, abs=1e-9)
    assert got["pearson_cosine"] == pytest.approx(pearson, abs=1e-5)


def test_eval_sts_cli_reports_teacher_and_ratio_then_report_table(tmp_path, tiny_model, tiny_model_b):
    sts_file = write_sts(tmp_path / "s.csv")
    out = tmp_path / "sts.json"
    res = CliRunner().invoke(main, ["eval", "--no-progress", "-q", "--sts", str(sts_file), "--query-model",
                                    str(tiny_model_b), "--doc-model", str(tiny_model), "-o", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    student, _ = hand_spearman(tiny_model_b, PAIRS)
    teacher, _ = hand_spearman(tiny_model, PAIRS)
    assert r["schema"] == "embed-kd/sts@1" and r["dataset"]["n_pairs"] == len(PAIRS)
    assert r["metrics"]["spearman_cosine"] == pytest.approx(student, abs=1e-9)
    assert r["teacher"]["metrics"]["spearman_cosine"] == pytest.approx(teacher, abs=1e-9)
    assert r["ratio"]["spearman_cosine"] == pytest.approx(student / teacher, rel=1e-9)
    assert r["model"]["spec"] == str(tiny_model_b) and "encodes both sentences" in r["encoding"]
    rep = CliRunner().invoke(main, ["report", str(out)])
    assert rep.exit_code == 0, rep.output
    assert f"{student:.4f}" in rep.stdout and f"{student / teacher:.3f}×" in rep.stdout


def test_eval_sts_refuses_existing_output_and_bm25(tmp_path, tiny_model):
    sts_file = write_sts(tmp_path / "s.csv")
    out = tmp_path / "sts.json"
    out.write_text("{}")
    res = CliRunner().invoke(main, ["eval", "--sts", str(sts_file), "--model", str(tiny_model), "-o", str(out)])
    assert res.exit_code == 2 and f"Error: {out}" in res.output and out.read_text() == "{}"  # untouched
    res = CliRunner().invoke(main, ["eval", "--sts", str(sts_file), "--model", "bm25"])
    assert res.exit_code == 2 and "--sts measures a bi-encoder" in res.output


def test_eval_data_and_sts_adds_block_and_plot_column(tmp_path, tiny_beir, tiny_model, tiny_model_b, cache_dir):
    sts_file = write_sts(tmp_path / "s.csv")
    outs = []
    for name, args in (("t", ["--model", str(tiny_model)]),
                       ("s", ["--query-model", str(tiny_model_b), "--doc-model", str(tiny_model)])):
        out = tmp_path / f"{name}.json"
        res = CliRunner().invoke(main, ["eval", "--no-progress", "-q", "--cache-dir", str(cache_dir), "--data",
                                        str(tiny_beir), *args, "--sts", str(sts_file), "-o", str(out)])
        assert res.exit_code == 0, res.output
        outs.append(out)
    r = json.loads(outs[1].read_text())
    student, _ = hand_spearman(tiny_model_b, PAIRS)
    assert r["schema"] == "embed-kd/eval@1" and r["sts"]["metrics"]["spearman_cosine"] == pytest.approx(student)
    assert r["sts"]["teacher"]["model"]["spec"] == str(tiny_model)  # an asymmetric pair's doc model is the reference
    png = tmp_path / "p.png"
    rep = CliRunner().invoke(main, ["report", *map(str, outs), "--plot", str(png)])
    assert rep.exit_code == 0, rep.output
    assert "STS Spearman" in rep.stdout and f"{student:.4f}" in rep.stdout and png.stat().st_size > 0
