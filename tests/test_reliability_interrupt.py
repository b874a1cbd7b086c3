"""Interrupted runs: ``score-teacher``, ``train`` and ``index build`` killed with SIGKILL at seeded
random points in real subprocesses, then rerun (``train --resume``): the outputs equal a clean run's
and no temporary file is left.

"Random points" are drawn from a seeded ``random.Random`` so that a failure can be replayed: the
number of committed chunks to wait for (score-teacher), a delay after the first complete checkpoint
(train), a fraction of a clean run's wall time (index build). Where the process is when the signal
lands still depends on the machine's speed; each case records the point it actually hit.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TOPICS, write_tiny_beir  # noqa: E402
from reliability_helpers import Case, cli, kill_when, leftovers  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _popen(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "embed_kd", *map(str, args)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)



def _kill_when(proc: subprocess.Popen, ready, timeout: float = 240.0) -> bool:
    return kill_when(proc, ready, timeout)


@pytest.fixture(scope="module")
def many_queries(tmp_path_factory) -> Path:
    """The tiny corpus with 8 train queries per topic (48): enough chunks to kill between."""
    root = write_tiny_beir(tmp_path_factory.mktemp("data") / "many", n_docs_per_topic=8)
    queries = [json.loads(line) for line in (root / "queries.jsonl").read_text().splitlines()]
    rows = []
    rng = random.Random(7)
    for topic, words in TOPICS.items():
        for j in range(8):
            qid = f"q-{topic}-train-{j}"
            queries.append({"_id": qid, "text": f"{rng.choice(words)} {rng.choice(words)} {topic}"})
            rows += [(qid, f"{topic}-{j}", 1)]
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{r}\n" for q, d, r in rows))
    return root


# ------------------------------------------------------------------------------------ score-teacher

def _score_args(data, model, cache):
    return ("score-teacher", "--data", data, "--split", "train", "--candidates", "bm25:6", "--teacher",
            f"bi:{model}", "--teacher", "bm25", "--ensemble", "zscore", "--chunk-size", "2", "--cache-dir", cache,
            "--no-progress", "-q")


@pytest.fixture(scope="module")
def clean_scores(many_queries, tiny_model, tmp_path_factory) -> Path:
    clean = tmp_path_factory.mktemp("scores") / "clean"
    p = cli(*_score_args(many_queries, tiny_model, clean.parent / "cache"), "-o", clean)
    assert p.returncode == 0, p.stderr
    return clean


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_score_teacher_killed_at_random_chunk_then_rerun(seed, many_queries, tiny_model, clean_scores, tmp_path,
                                                         record_property):
    from embed_kd.teachers.store import open_scores

    args = _score_args(many_queries, tiny_model, tmp_path / "cache")
    clean = clean_scores
    n_chunks = len(list((clean / "shards").iterdir()))
    k = random.Random(seed).randrange(1, n_chunks - 1)
    case = Case(record_property, "interruption", f"`score-teacher` SIGKILL after >= {k} of {n_chunks} chunks "
                                                 f"(seed {seed}), rerun the same command")
    out = tmp_path / "killed"
    killed = _kill_when(_popen(*args, "-o", out),
                        lambda: (out / "shards").is_dir() and len(list((out / "shards").glob("chunk-*"))) >= k)
    at = len(list((out / "shards").glob("chunk-*"))) if killed else n_chunks
    # a very fast machine may finish before the k-th chunk is seen: then there is nothing to resume
    p = cli(*args, "-o", out) if killed else subprocess.CompletedProcess([], 0, "", "")
    a, b = open_scores(out), open_scores(clean)
    same = a.table().equals(b.table()) and a.manifest["progress"] == b.manifest["progress"]
    case.ok("resumed = clean run" if same else "differs", p.returncode, p.stderr, folders=[tmp_path], lost=not same,
            note=(f"killed with {at}/{n_chunks} chunks committed; rerun skipped them; rows identical to a clean run"
                  if killed else "finished before the kill point; rows identical to a clean run"))
    assert same
    assert a.manifest["chunk_sha256"] == b.manifest["chunk_sha256"]


# ------------------------------------------------------------------------------------ train

@pytest.fixture(scope="module")
def train_setup(many_queries, tiny_model, tmp_path_factory):
    import yaml

    root = tmp_path_factory.mktemp("train")
    store = root / "scores"
    p = cli("score-teacher", "--data", many_queries, "--split", "train", "--candidates", "bm25:6", "--teacher", "bm25",
            "-o", store, "--no-progress", "-q")
    assert p.returncode == 0, p.stderr
    cfg = {"data": str(many_queries), "scores": str(store), "teacher": str(tiny_model),
           "student": {"from_teacher": True, "keep_layers": [1]},
           "examples": {"negatives": 3, "rounds": 2, "dev_queries": 4, "min_candidates": 4},
           "train": {"epochs": 2, "batch_size": 4, "lr": 1e-3, "save_steps": 3, "eval_steps": 6, "logging_steps": 3,
                     "seed": 5, "threads": 1},
           "average": {"enabled": True, "last": 2}}
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    clean = root / "clean"
    t = time.perf_counter()
    p = cli("train", path, "-o", clean, "--cache-dir", root / "cache", "--no-progress", "-q")
    assert p.returncode == 0, p.stderr
    return path, root / "cache", clean, time.perf_counter() - t


def _weights(folder: Path) -> dict:
    from safetensors.numpy import load_file

    return {str(f.relative_to(folder)): load_file(f) for f in sorted(folder.rglob("*.safetensors"))}


@pytest.mark.parametrize("seed", [0, 1])
def test_train_killed_at_random_point_then_resumed(seed, train_setup, tmp_path, record_property):
    import numpy as np

    cfg, cache, clean, _ = train_setup
    out = tmp_path / "student"
    work = Path(f"{out}.work") / "checkpoints"
    clean_m = json.loads((clean / "embed_kd_train.json").read_text())
    steps = clean_m["training"]["global_step"]
    delay = random.Random(seed).uniform(0.0, 1.5)
    case = Case(record_property, "interruption",
                f"`train` SIGKILL {delay:.2f}s after the first complete checkpoint (seed {seed}), then `--resume`")
    args = ("train", cfg, "-o", out, "--cache-dir", cache, "--no-progress", "-q")
    first_seen: list[float] = []

    def ready():
        if not first_seen and work.is_dir() and any((c / "trainer_state.json").is_file() for c in work.iterdir()):
            first_seen.append(time.time())
        return bool(first_seen) and time.time() - first_seen[0] >= delay

    killed = _kill_when(_popen(*args), ready)
    at = sorted(c.name for c in work.iterdir()) if work.is_dir() else []
    assert killed and not out.exists(), "the run finished before the kill point"
    if seed == 0:  # a plain rerun is refused, pointing at --resume
        refused = cli(*args)
        assert refused.returncode == 2 and "--resume" in refused.stderr
    p = cli(*args, "--resume")
    m = json.loads((out / "embed_kd_train.json").read_text())
    same = m["student"]["fingerprint"] == clean_m["student"]["fingerprint"] and m["training"]["global_step"] == steps
    wa, wb = _weights(out), _weights(clean)
    same = same and wa.keys() == wb.keys() and all(
        np.array_equal(wa[f][k], wb[f][k]) for f in wa for k in wa[f])
    case.ok("resumed = clean run" if same else "differs", p.returncode, p.stderr, folders=[tmp_path],
            note=f"killed with checkpoints {at or 'none'} on disk; resumed to step {m['training']['global_step']}/"
                 f"{steps}; final weights and kept checkpoints bit-identical to a clean run", lost=not same)
    assert same, (m["student"], clean_m["student"])
    assert m["averaging"]["checkpoints"] == clean_m["averaging"]["checkpoints"]
    assert not Path(f"{out}.work").exists()


def test_train_resume_refuses_other_inputs_and_survives_a_partial_checkpoint(train_setup, tmp_path,
                                                                              record_property):
    """A checkpoint cut short (no trainer_state.json) is dropped; another config is refused."""
    cfg, cache, clean, _ = train_setup
    case = Case(record_property, "interruption",
                "`train --resume`: a checkpoint cut short by the kill is skipped; other inputs refused")
    out = tmp_path / "student"
    work = Path(f"{out}.work") / "checkpoints"
    args = ("train", cfg, "-o", out, "--cache-dir", cache, "--no-progress", "-q")
    killed = _kill_when(_popen(*args), lambda: work.is_dir() and len(
        [c for c in work.iterdir() if (c / "trainer_state.json").is_file()]) >= 2)
    assert killed
    from embed_kd.training.averaging import list_checkpoints

    last = list_checkpoints(work)[-1]
    (last / "trainer_state.json").unlink()  # as if killed while the trainer was writing this checkpoint
    (last / "optimizer.pt").write_bytes(b"half")
    other = cli(*args, "--resume", "--set", "train.lr=0.5")
    case.error(other.returncode, other.stderr, [f"{out}.work", "other inputs", "config"])
    p = cli(*args, "--resume")
    assert p.returncode == 0, p.stderr
    assert "incomplete checkpoint" in p.stderr
    m = json.loads((out / "embed_kd_train.json").read_text())
    clean_m = json.loads((clean / "embed_kd_train.json").read_text())
    assert m["student"]["fingerprint"] == clean_m["student"]["fingerprint"]


# ------------------------------------------------------------------------------------ index build

@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory) -> Path:
    """A corpus.jsonl of 1500 short documents (seconds of encoding with the tiny model)."""
    rng = random.Random(3)
    words = [w for ws in TOPICS.values() for w in ws]
    path = tmp_path_factory.mktemp("big") / "corpus.jsonl"
    path.write_text("".join(json.dumps({"_id": f"d{i}", "title": rng.choice(words),
                                        "text": " ".join(rng.choice(words) for _ in range(20))}) + "\n"
                            for i in range(1500)))
    return path


def _index_files(folder: Path) -> dict:
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "manifest.json"}
    m = json.loads((folder / "manifest.json").read_text())
    for key in ("created", "updated", "versions"):
        m.pop(key)
    for b in m["batches"]:
        b.pop("added")
    return {**files, "manifest.json": m}


def _index_args(corpus, model, cache):
    return ("index", "build", "--data", corpus, "--doc-model", model, "--cache-dir", cache, "--no-progress", "-q",
            "--batch-size", "64")


@pytest.fixture(scope="module")
def clean_index(big_corpus, tiny_model, tmp_path_factory) -> tuple[Path, float]:
    clean = tmp_path_factory.mktemp("index") / "clean"
    t = time.perf_counter()
    p = cli(*_index_args(big_corpus, tiny_model, clean.parent / "cache"), "-o", clean)
    assert p.returncode == 0, p.stderr
    return clean, time.perf_counter() - t


@pytest.mark.parametrize("seed", [0, 1])
def test_index_build_killed_mid_write_then_rerun(seed, big_corpus, tiny_model, clean_index, tmp_path,
                                                 record_property):
    """Killed while it writes: seed 0 while the embedding-cache entry is being written (encoding),
    seed 1 while the index folder's temporary sibling is being written; plus a seeded jitter."""
    clean, _ = clean_index
    phase = ("encoding into the cache entry", "writing the index folder")[seed % 2]
    jitter = random.Random(seed).uniform(0.0, 0.005)
    case = Case(record_property, "interruption",
                f"`index build` SIGKILL {jitter * 1000:.1f} ms after it starts {phase} (seed {seed}), rerun")
    out = tmp_path / "idx"
    cache = tmp_path / "cache"
    args = _index_args(big_corpus, tiny_model, cache)
    seen: list[float] = []

    def ready():
        where = (cache / "embeddings") if seed % 2 == 0 else tmp_path
        if not seen and where.is_dir() and any(p.name.endswith(".tmp") for p in where.iterdir()):
            seen.append(time.time())
        return bool(seen) and time.time() - seen[0] >= jitter

    killed = _kill_when(_popen(*args, "-o", out), ready)
    left_before = leftovers(tmp_path)
    assert not out.exists() or (out / "manifest.json").is_file()  # all or nothing
    state = (f"{len(left_before)} temporary folder(s) left by the kill, output absent" if killed and not out.exists()
             else "the run finished before the kill point")
    p = cli(*args, "-o", out) if not out.exists() else subprocess.CompletedProcess([], 0, "", "")
    assert p.returncode == 0, p.stderr
    same = _index_files(out) == _index_files(clean)
    case.ok("rerun = clean run" if same else "differs", 0, "", folders=[tmp_path], lost=not same,
            note=f"{state}; the rerun swept them and its index files equal a clean run's")
    assert same
