"""Multi-process runs in real subprocesses: ``torchrun --nproc-per-node 2`` on CPU (gloo backend).

What "equal" means here:

- ``score-teacher``: the merged store of 2 processes has the same rows in the same order as a
  single-process run (ids, labels, candidate ranks identical; every score column within 1e-5 —
  the dense candidates' document embeddings are encoded in other batches, so floats may differ in
  the last bits);
- ``index build``: the same ids, and document embeddings within 1e-5 of a single-process build;
- ``train`` (one loss, dropout off, global batch 2 × 4 = 1 × 8): the logged loss at every step
  within 1e-4 relative and the final weights within 1e-5 of a single-process run; one output
  folder, one manifest (``world_size`` 2), no work folder left. With two losses (score + align)
  the multi-dataset sampler gives each process a batch of one dataset, so the schedule differs
  from one process: there we check that the run completes and the student loads and encodes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import VOCAB  # noqa: E402
from test_score_teacher import build_tiny_cross_encoder  # noqa: E402
from test_train_e2e import write_tiny_store  # noqa: E402

from embed_kd.distributed import shard_range  # noqa: E402


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "EMBED_KD_CACHE": str(tmp_path / "cache-default")})
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _run(tmp_path: Path, args: list[str], nproc: int = 1, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m embed_kd ARGS`` (nproc 1) or ``torchrun --standalone --nproc-per-node N -m embed_kd ARGS``."""
    launch = [sys.executable, "-m", "embed_kd"] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "embed_kd"]
    return subprocess.run(launch + args, capture_output=True, text=True, timeout=timeout, env=_env(tmp_path),
                          cwd=tmp_path)


def _ok(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == 0, f"exit {r.returncode}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-5000:]}"


def test_shard_range_covers_everything_once():
    for n in (0, 1, 5, 17):
        for w in (1, 2, 3, 8):
            ranges = [shard_range(n, r, w) for r in range(w)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            sizes = [b - a for a, b in ranges]
            assert max(sizes) - min(sizes) <= 1


@pytest.fixture(scope="module")
def tiny_ce_dist(tmp_path_factory) -> Path:
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("models") / "tiny-ce", VOCAB)


def test_score_teacher_two_processes_equal_one(tmp_path, tiny_beir, tiny_model, tiny_ce_dist):
    from embed_kd.teachers.store import open_scores

    base = ["score-teacher", "--data", str(tiny_beir), "--split", "train", "--candidates", "bm25:4",
            "--candidates", f"dense:{tiny_model}:3", "--teacher", f"ce=ce:{tiny_ce_dist}",
            "--teacher", f"bi=bi:{tiny_model}", "--ensemble", "zscore", "--chunk-size", "1", "--no-progress"]
    _ok(_run(tmp_path, base + ["--cache-dir", str(tmp_path / "c1"), "-o", str(tmp_path / "one")]))
    r = _run(tmp_path, base + ["--cache-dir", str(tmp_path / "c2"), "-o", str(tmp_path / "two")], nproc=2)
    _ok(r)
    assert "2 processes" in r.stderr

    one, two = open_scores(tmp_path / "one"), open_scores(tmp_path / "two")  # validates completeness
    assert two.manifest["config_fingerprint"] == one.manifest["config_fingerprint"]
    assert two.manifest["shard"] is None and len(two.manifest["merged_from"]) == 2
    assert not (tmp_path / "two.parts").exists()  # shards removed after the merge
    ta, tb = one.table(), two.table()
    assert ta.num_rows == tb.num_rows > 0 and ta.schema.names == tb.schema.names
    for col in ta.schema.names:
        a, b = ta.column(col).to_pylist(), tb.column(col).to_pylist()
        if col.startswith("score"):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5, err_msg=col)
        else:
            assert a == b, col
    # the dense source's document embeddings were encoded once, data-parallel, into the cache
    assert len(list((tmp_path / "c2" / "embeddings").iterdir())) == 1

    # a complete output is refused: one embed-kd "Error:" line (rank 0's; torchrun adds its own failure
    # summary and exits 1), then replaced with --overwrite
    again = _run(tmp_path, base + ["--cache-dir", str(tmp_path / "c2"), "-o", str(tmp_path / "two")], nproc=2)
    errors = [line for line in again.stderr.splitlines() if line.startswith("Error: ")]
    assert again.returncode != 0 and len(errors) == 1 and "--overwrite" in errors[0]
    _ok(_run(tmp_path, base + ["--cache-dir", str(tmp_path / "c2"), "-o", str(tmp_path / "two"), "--overwrite"],
             nproc=2))
    assert open_scores(tmp_path / "two").table().num_rows == ta.num_rows
    refused = _run(tmp_path, base + ["--shard", "0/2", "-o", str(tmp_path / "x")], nproc=2)
    assert refused.returncode != 0 and "--shard cannot be combined" in refused.stderr


def test_index_build_two_processes_equal_one(tmp_path, tiny_beir, tiny_model):
    from embed_kd.index.store import open_index

    base = ["index", "build", "--data", str(tiny_beir), "--doc-model", str(tiny_model), "--no-progress",
            "--batch-size", "4"]
    _ok(_run(tmp_path, base + ["--cache-dir", str(tmp_path / "c1"), "-o", str(tmp_path / "one")]))
    _ok(_run(tmp_path, base + ["--cache-dir", str(tmp_path / "c2"), "-o", str(tmp_path / "two")], nproc=2))
    a, b = open_index(tmp_path / "one"), open_index(tmp_path / "two")
    assert a.ids == b.ids and a.manifest["corpus"]["fingerprint"] == b.manifest["corpus"]["fingerprint"]
    ea, eb = a.index.reconstruct_n(0, a.n), b.index.reconstruct_n(0, b.n)
    np.testing.assert_allclose(ea, eb, rtol=0, atol=1e-5)
    # no temporary left behind next to the cache entry
    assert [p.name for p in (tmp_path / "c2" / "embeddings").iterdir() if p.name.startswith(".")] == []


def _dropout_free(src: Path, dst: Path) -> Path:
    """A copy of a tiny bi-encoder with dropout off, so two runs of the same batches give the same steps."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["hidden_dropout_prob"] = cfg["attention_probs_dropout_prob"] = 0.0
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _train_config(path: Path, data: Path, store: Path, teacher: Path, output: Path, batch_size: int, **over) -> Path:
    import yaml

    cfg = {"data": str(data), "scores": str(store), "teacher": str(teacher), "output": str(output),
           "student": {"from_teacher": True, "keep_layers": [1]},
           "examples": {"negatives": 3, "rounds": 4, "dev_queries": 0, "min_candidates": 4},
           "losses": {"align": "none"},
           "train": {"epochs": 3, "batch_size": batch_size, "lr": 1e-3, "save_steps": 2, "logging_steps": 1},
           "average": {"enabled": False}}
    for k, v in over.items():
        cfg[k].update(v) if isinstance(cfg.get(k), dict) else cfg.__setitem__(k, v)
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_two_processes_match_one(tmp_path, tiny_beir, tiny_model):
    from sentence_transformers import SentenceTransformer

    teacher = _dropout_free(tiny_model, tmp_path / "teacher")
    store = write_tiny_store(tiny_beir, teacher, tmp_path / "scores")
    one = _train_config(tmp_path / "one.yaml", tiny_beir, store, teacher, tmp_path / "s1", batch_size=8)
    two = _train_config(tmp_path / "two.yaml", tiny_beir, store, teacher, tmp_path / "s2", batch_size=4)
    _ok(_run(tmp_path, ["train", str(one), "--no-progress", "-q", "--cache-dir", str(tmp_path / "c1")]))
    _ok(_run(tmp_path, ["train", str(two), "--no-progress", "-q", "--cache-dir", str(tmp_path / "c2")], nproc=2))

    m1 = json.loads((tmp_path / "s1" / "embed_kd_train.json").read_text())
    m2 = json.loads((tmp_path / "s2" / "embed_kd_train.json").read_text())
    assert (m1["training"]["world_size"], m2["training"]["world_size"]) == (1, 2)
    assert m1["training"]["global_batch_size"] == m2["training"]["global_batch_size"] == 8
    assert m1["training"]["global_step"] == m2["training"]["global_step"] > 2
    l1 = [h["loss"] for h in m1["training"]["log_history"] if "loss" in h]
    l2 = [h["loss"] for h in m2["training"]["log_history"] if "loss" in h]
    assert len(l1) == len(l2) == m1["training"]["global_step"]
    np.testing.assert_allclose(l2, l1, rtol=1e-4, atol=1e-7)
    assert l1[0] != l1[-1]  # the loss moved: steps were taken
    a = SentenceTransformer(str(tmp_path / "s1"), device="cpu").state_dict()
    b = SentenceTransformer(str(tmp_path / "s2"), device="cpu").state_dict()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k].numpy(), a[k].numpy(), rtol=0, atol=1e-5, err_msg=k)
    assert not (tmp_path / "s2.work").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("s2")) == ["s2"]


def test_train_two_processes_two_losses_completes(tmp_path, tiny_beir, tiny_model):
    """Score + alignment losses, dev evaluation, checkpoint averaging and a time budget under DDP."""
    from sentence_transformers import SentenceTransformer

    store = write_tiny_store(tiny_beir, tiny_model, tmp_path / "scores")
    cfg = _train_config(tmp_path / "cfg.yaml", tiny_beir, store, tiny_model, tmp_path / "s", batch_size=4,
                        losses={"align": "cosine"}, examples={"dev_queries": 2},
                        train={"epochs": 2, "eval_steps": 2, "max_time_s": 3600},
                        average={"enabled": True, "last": 2})
    _ok(_run(tmp_path, ["train", str(cfg), "--no-progress", "-q", "--cache-dir", str(tmp_path / "c")], nproc=2))
    m = json.loads((tmp_path / "s" / "embed_kd_train.json").read_text())
    assert m["training"]["world_size"] == 2 and m["averaging"]["applied"]
    assert "dev_ndcg_at_10" in m["dev"]["metrics_final"]
    model = SentenceTransformer(str(tmp_path / "s"), device="cpu")
    emb = model.encode(["cat ?", "dna gene"])
    assert emb.shape == (2, 32) and np.isfinite(emb).all()
