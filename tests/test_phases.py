"""Training in phases (``phases:`` in a train config, embed_kd.training.phases): config checks, the chain, reuse."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from embed_kd.cli import main
from embed_kd.errors import EmbedKDError
from embed_kd.training.config import TrainConfig, phase_configs

sys.path.insert(0, str(Path(__file__).parent))
from test_train_e2e import _config, tiny_store  # noqa: E402, F401  (fixture)

BASE = {"data": "d", "scores": "s", "teacher": "t", "output": "runs/st",
        "student": {"from_teacher": True, "keep_layers": [0, 2]}}


def _cfg(phases, **extra):
    return TrainConfig.from_dict({**BASE, **extra, "phases": phases}).validate()


def test_each_phase_is_the_base_config_with_its_own_keys():
    cfg = _cfg([{"name": "general", "set": {"losses.score": "none", "examples.align_texts": ["stsb-train"],
                                            "train.max_steps": 100}},
                {"set": {"train.lr": 1e-5}}])
    plans = phase_configs(cfg)
    assert [name for name, _ in plans] == ["base", "general", "phase3"]
    base, general, third = (c for _, c in plans)
    assert [c.output for c in (base, general, third)] == [
        "runs/st.phases/1-base", "runs/st.phases/2-general", "runs/st"]
    assert base.student.keep_layers == [0, 2] and base.losses.score == "margin_mse" and base.phases == []
    assert general.student.model == "runs/st.phases/1-base" and not general.student.from_teacher
    assert general.student.keep_layers is None
    assert general.losses.score == "none" and general.examples.align_texts == ["stsb-train"]
    assert general.train.max_steps == 100 and general.train.lr == 2e-4
    # phase 3 starts from the base config (its score loss is back), not from phase 2's settings
    assert third.student.model == "runs/st.phases/2-general" and third.losses.score == "margin_mse"
    assert third.train.lr == 1e-5 and third.train.max_steps == -1


@pytest.mark.parametrize("phases, message", [
    ([{"set": {"train.lrr": 1}}], r"config: phases\[0\]\.set\.train\.lrr: unknown key 'train\.lrr'"),
    ([{"set": {"trian.lr": 1}}], r"config: phases\[0\]\.set\.trian\.lr: unknown section 'trian'"),
    ([{"set": {"output": "x"}}], r"config: phases\[0\]\.set: 'output' cannot change between phases"),
    ([{"set": {"student.keep_layers": [1]}}], r"'student\.keep_layers' cannot change between phases"),
    ([{"name": "a b", "set": {"train.lr": 1}}], r"config: phases\[0\]\.name = 'a b'"),
    ([{"name": "x", "set": {"train.lr": 1}}, {"name": "x", "set": {"train.lr": 1}}], "two phases have this name"),
    ([{"set": {}}], r"config: phases\[0\]\.set: expected a non-empty mapping"),
    ([{"steps": 3, "set": {"train.lr": 1}}], r"config: phases\[0\]: unknown key\(s\) steps"),
    (["losses.score=none"], r"config: phases\[0\]: expected a mapping"),
    ([{"set": {"train.lr": -1}}], "train.lr must be > 0"),
    ([{"set": {"losses.align": "none", "losses.score": "none"}}], "nothing to train"),
    ([{"set": {"train.max_steps": 1.5}}], r"phases\[0\] \(phase2\): train: max_steps must be a whole number"),
])
def test_bad_phases_are_refused_naming_the_phase(phases, message):
    with pytest.raises(EmbedKDError, match=message):
        _cfg(phases)


def test_phases_chain_dense_students_only():
    with pytest.raises(EmbedKDError, match="phases chain dense students; this student is 'static'"):
        _cfg([{"set": {"train.lr": 0.1}}], student={"type": "static", "from_teacher": True})


def test_a_bad_phase_is_one_error_line_from_the_cli_before_anything_runs(tmp_path, tiny_beir, tiny_model,
                                                                          tiny_store):  # noqa: F811
    cfg = _config(tmp_path, tiny_beir, tiny_model, tiny_store, phases=[{"set": {"train.lrr": 1e-4}}])
    res = CliRunner().invoke(main, ["train", str(cfg), "-q"])
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines() == [
        "Error: config: phases[0].set.train.lrr: unknown key 'train.lrr'"]
    assert not (tmp_path / "student").exists() and not (tmp_path / "student.phases").exists()


def _run(cfg: Path, cache_dir, *extra):
    return CliRunner().invoke(main, ["train", str(cfg), "--cache-dir", str(cache_dir), "--no-progress", *extra])


def test_two_phases_in_one_command_then_resume_reuses_the_finished_phase(tmp_path, tiny_beir, tiny_model,
                                                                          tiny_store, cache_dir):  # noqa: F811
    phases = [{"name": "general", "set": {"losses.score": "none", "train.max_steps": 2, "average.enabled": False}}]
    cfg = _config(tmp_path, tiny_beir, tiny_model, tiny_store, train={"max_steps": 4}, phases=phases)
    nothing = _run(cfg, cache_dir, "--resume", "-q")  # nothing to resume: refused, as for a plain run
    assert nothing.exit_code == 2 and "--resume: no interrupted run of" in nothing.output
    res = _run(cfg, cache_dir)
    assert res.exit_code == 0, res.output
    assert "phase 1 (base): 4 steps" in res.output and "phase 2 (general):" in res.output

    out, first = tmp_path / "student", tmp_path / "student.phases" / "1-base"
    m1 = json.loads((first / "embed_kd_train.json").read_text())
    m = json.loads((out / "embed_kd_train.json").read_text())
    assert m1["training"]["global_step"] == 4 and m1["examples"]["score"] is not None
    # the last phase trained the first phase's output, with its own settings
    assert m["student"]["init"] == f"model {first}"
    assert m["student"]["init_fingerprint"] == m1["student"]["fingerprint"]
    assert m["config"]["losses"]["score"] == "none" and m["examples"]["score"] is None
    assert m["training"]["global_step"] == 2 and m["config"]["phases"] == []
    assert m["recipe"]["phases"] == phases and m["recipe"]["output"] == str(out)
    assert m["phases"] == [{"phase": 1, "name": "base", "set": {}, "student_fingerprint": m1["student"]["fingerprint"],
                            "global_step": 4, "train_time_s": m1["training"]["train_time_s"],
                            "dev": m1["dev"]["metrics_final"], "output": str(first)}]
    assert (out / "asym" / "modules.json").is_file()  # the one-model Router artifact, as for any run
    card = (out / "README.md").read_text()
    line = next(x for x in card.splitlines() if x.startswith("- phase 2 (general): 2 steps, changes `{"))
    assert "Trained in 2 phases" in card and '"losses.score": "none"' in line

    again = _run(cfg, cache_dir, "-q")  # everything exists: refused before training, nothing touched
    assert again.exit_code == 2
    assert "student.phases/1-base: phase 1 (base) of an earlier run exists; pass --overwrite" in again.output

    shutil.rmtree(out)  # the final phase lost: --resume reuses phase 1 as it is and trains phase 2 only
    res = _run(cfg, cache_dir, "--resume")
    assert res.exit_code == 0, res.output
    assert json.loads((first / "embed_kd_train.json").read_text())["created"] == m1["created"]
    m2 = json.loads((out / "embed_kd_train.json").read_text())
    assert m2["student"]["init_fingerprint"] == m1["student"]["fingerprint"]
    assert m2["student"]["fingerprint"] == m["student"]["fingerprint"]  # same seed, same start: same weights

    # a finished phase is reused only on the chain it was trained on: phase 1 gone, phase 2 (kept) is stale
    three = _config(tmp_path, tiny_beir, tiny_model, tiny_store, train={"max_steps": 4},
                    phases=[*phases, {"name": "again", "set": {"train.max_steps": 2}}])
    assert _run(three, cache_dir, "--overwrite").exit_code == 0
    shutil.rmtree(first)
    shutil.rmtree(out)
    stale = _run(three, cache_dir, "--resume", "-q")
    assert stale.exit_code == 2
    assert "2-general: phase 2 (general) was trained from another phase 1 than the one on disk now" in stale.output
    assert _run(cfg, cache_dir, "--overwrite").exit_code == 0  # back to the two-phase run

    other = _run(cfg, cache_dir, "--resume", "-q", "--set", "train.lr=5e-4")  # phase 1 is another run now
    assert other.exit_code == 2
    assert "phase 1 (base) was trained with another config; pass --overwrite" in other.output

    res = _run(cfg, cache_dir, "--overwrite", "--set", "train.lr=5e-4")
    assert res.exit_code == 0, res.output
    m3 = json.loads((out / "embed_kd_train.json").read_text())
    assert m3["phases"][0]["student_fingerprint"] != m1["student"]["fingerprint"]
    assert yaml.safe_load(yaml.safe_dump(m3["recipe"]))["train"]["lr"] == 5e-4


def test_every_shipped_train_config_builds_and_validates():
    """eval/configs: each train config (one with a student) is valid, phases included; the default's
    phases are the ones its report describes."""
    root = Path(__file__).resolve().parent.parent / "eval" / "configs"
    checked = 0
    for path in sorted(root.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        if "student" not in raw:
            continue  # an ensemble config
        cfg = TrainConfig.from_yaml(path)
        if not cfg.scores and cfg.losses.score != "none":
            cfg.scores = "runs/given-on-the-command-line"  # demo.yaml: --scores, -o
        cfg.output = cfg.output or "runs/given-on-the-command-line"
        cfg.validate()
        checked += 1
    assert checked >= 8
    default = TrainConfig.from_yaml(root / "scifact-l3.yaml")
    plans = phase_configs(default)
    assert [n for n, _ in plans] == ["base", "mixed", "general"]
    assert [c.train.max_steps for _, c in plans] == [1200, 2400, 1200]
    assert [c.losses.score for _, c in plans] == ["margin_mse", "margin_mse", "none"]
    assert plans[-1][1].output == "runs/scifact-l3" and plans[0][1].student.keep_layers == [0, 3, 5]
