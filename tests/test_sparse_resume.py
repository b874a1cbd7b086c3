"""``train --student-type sparse --resume``: the sparse run has the dense run's lifecycle
(:mod:`embed_kd.training.lifecycle`). Killed with SIGKILL in a real subprocess — after a seeded delay
past its first complete checkpoint, with a checkpoint cut short, or before its first checkpoint — and
resumed, it ends at the uninterrupted run's global step with bit-identical weights; a plain rerun is
refused pointing at ``--resume``; a resume with other inputs is refused by ``run.json``.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TOPICS, write_tiny_beir  # noqa: E402
from reliability_helpers import kill_when  # noqa: E402
from test_sparse import build_tiny_mlm  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "embed_kd", *map(str, args)], env=ENV, capture_output=True,
                          text=True, timeout=600)



def _kill_when(proc: subprocess.Popen, ready, timeout: float = 300.0) -> bool:
    return kill_when(proc, ready, timeout)


@pytest.fixture(scope="module")
def sparse_setup(tmp_path_factory):
    """A judged train split of 48 queries, a BM25 score store, a tiny MLM, a config and a clean run."""
    root = tmp_path_factory.mktemp("sparse-resume")
    data = write_tiny_beir(root / "data", n_docs_per_topic=8)
    queries = [json.loads(line) for line in (data / "queries.jsonl").read_text().splitlines()]
    rng, rows = random.Random(7), []
    for topic, words in TOPICS.items():
        for j in range(8):
            qid = f"q-{topic}-train-{j}"
            queries.append({"_id": qid, "text": f"{rng.choice(words)} {rng.choice(words)} {topic}"})
            rows.append((qid, f"{topic}-{j}", 1))
    (data / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (data / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{r}\n" for q, d, r in rows))
    store = root / "scores"
    p = _cli("score-teacher", "--data", data, "--split", "train", "--candidates", "bm25:6", "--teacher", "bm25",
             "-o", store, "--no-progress", "-q")
    assert p.returncode == 0, p.stderr
    mlm = build_tiny_mlm(root / "mlm")
    cfg = {"data": str(data), "scores": str(store), "student": {"type": "sparse", "model": str(mlm)},
           "losses": {"score": "margin_mse", "score_scale": 2.0, "align": "none", "score_documents": "student"},
           "examples": {"negatives": 2, "rounds": 1, "dev_queries": 4, "min_candidates": 3},
           "sparse": {"query_length": 16, "document_length": 32, "query_flops_weight": 0.01,
                      "doc_flops_weight": 0.005, "flops_warmup_ratio": 0.3, "dev_pool": 6},
           "train": {"epochs": 3, "batch_size": 4, "lr": 1e-3, "save_steps": 3, "eval_steps": 9, "logging_steps": 3,
                     "seed": 5, "threads": 1},
           "average": {"enabled": True, "last": 2}}
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    clean = root / "clean"
    p = _cli("train", path, "-o", clean, "--no-progress", "-q")
    assert p.returncode == 0, p.stderr
    return path, clean


def _weights(folder: Path) -> dict:
    from safetensors.numpy import load_file

    return {str(f.relative_to(folder)): load_file(f) for f in sorted(folder.rglob("*.safetensors"))}


def _assert_equals_clean(out: Path, clean: Path) -> None:
    m = json.loads((out / "embed_kd_train.json").read_text())
    c = json.loads((clean / "embed_kd_train.json").read_text())
    assert m["training"]["global_step"] == c["training"]["global_step"]
    assert m["student"]["fingerprint"] == c["student"]["fingerprint"]
    assert m["averaging"]["checkpoints"] == c["averaging"]["checkpoints"]
    wa, wb = _weights(out), _weights(clean)
    assert wa.keys() == wb.keys() and wa
    for f in wa:
        assert wa[f].keys() == wb[f].keys()
        for k in wa[f]:
            assert np.array_equal(wa[f][k], wb[f][k]), (f, k)
    assert not Path(f"{out}.work").exists()


def _complete(ckpts: Path) -> list[Path]:
    return [c for c in ckpts.iterdir() if (c / "trainer_state.json").is_file()] if ckpts.is_dir() else []


@pytest.mark.parametrize("seed", [0, 1])
def test_sparse_train_killed_after_a_checkpoint_then_resumed(seed, sparse_setup, tmp_path):
    cfg, clean = sparse_setup
    out = tmp_path / "student"
    ckpts = Path(f"{out}.work") / "checkpoints"
    args = ("train", cfg, "-o", out, "--no-progress", "-q")
    delay = random.Random(seed).uniform(0.0, 0.5)
    first: list[float] = []

    def ready():
        if not first and _complete(ckpts):
            first.append(time.time())
        return bool(first) and time.time() - first[0] >= delay

    proc = subprocess.Popen([sys.executable, "-m", "embed_kd", *map(str, args)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _kill_when(proc, ready) and not out.exists(), "the run finished before the kill point"
    assert (Path(f"{out}.work") / "run.json").is_file()
    if seed == 0:  # a plain rerun is refused, pointing at --resume
        refused = _cli(*args)
        assert refused.returncode == 2 and "--resume" in refused.stderr
    p = _cli(*args, "--resume")
    assert p.returncode == 0, p.stderr
    _assert_equals_clean(out, clean)


def test_sparse_resume_drops_a_cut_checkpoint_and_refuses_other_inputs(sparse_setup, tmp_path):
    cfg, clean = sparse_setup
    out = tmp_path / "student"
    ckpts = Path(f"{out}.work") / "checkpoints"
    args = ("train", cfg, "-o", out, "--no-progress", "-q")
    proc = subprocess.Popen([sys.executable, "-m", "embed_kd", *map(str, args)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _kill_when(proc, lambda: len(_complete(ckpts)) >= 2)
    from embed_kd.training.averaging import list_checkpoints

    last = list_checkpoints(ckpts)[-1]
    (last / "trainer_state.json").unlink()  # as if killed while the trainer was writing this checkpoint
    (last / "optimizer.pt").write_bytes(b"half")
    other = _cli(*args, "--resume", "--set", "train.lr=0.5")
    assert other.returncode == 2 and "other inputs" in other.stderr and "config" in other.stderr
    assert "Traceback" not in other.stderr
    p = _cli(*args, "--resume")
    assert p.returncode == 0, p.stderr
    assert "incomplete checkpoint" in p.stderr
    _assert_equals_clean(out, clean)


def test_sparse_resume_before_the_first_checkpoint_starts_from_step_0(sparse_setup, tmp_path):
    """Killed once ``run.json`` is written (usually before any checkpoint): ``--resume`` trains from
    step 0 — or from a checkpoint, if one was saved already — to the clean run's weights."""
    cfg, clean = sparse_setup
    out = tmp_path / "student"
    work = Path(f"{out}.work")
    args = ("train", cfg, "-o", out, "--no-progress", "-q")
    proc = subprocess.Popen([sys.executable, "-m", "embed_kd", *map(str, args)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _kill_when(proc, lambda: (work / "run.json").is_file())
    p = _cli(*args, "--resume")
    assert p.returncode == 0, p.stderr
    _assert_equals_clean(out, clean)


def test_sparse_resume_without_an_interrupted_run_is_refused(sparse_setup, tmp_path):
    cfg, _ = sparse_setup
    p = _cli("train", cfg, "-o", tmp_path / "never", "--no-progress", "-q", "--resume")
    assert p.returncode == 2 and "no interrupted run" in p.stderr and "Traceback" not in p.stderr
