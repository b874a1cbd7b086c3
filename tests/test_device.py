"""Device selection (one rule for every command), training precision, and --device on the CLI.

No GPU is needed: CUDA / MPS availability, the GPU count and names and bfloat16 support are
faked (monkeypatched ``torch.cuda`` / ``torch.backends.mps``), so every branch of the rule runs on
a CPU-only machine. What runs on a real GPU is checked by ``scripts/gpu_check.sh``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from embed_kd import device as dev
from embed_kd.cli import main
from embed_kd.errors import EmbedKDError

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    for k in ("EMBED_KD_DEVICE", "LOCAL_RANK", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    dev.reset()
    yield
    dev.reset()


def fake(monkeypatch, *, gpus: int = 0, mps: bool = False, bf16: bool = True, name: str = "Fake GPU"):
    """Pretend this machine has ``gpus`` CUDA GPUs (and/or MPS); nothing touches a real device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: f"{name} {i}")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize("gpus, mps, local_rank, expected", [
    (0, False, None, "cpu"),
    (0, True, None, "mps"),
    (2, False, None, "cuda:0"),
    (2, True, None, "cuda:0"),      # CUDA before MPS
    (2, False, "1", "cuda:1"),      # under a launcher: this process's GPU
    (2, False, "3", "cuda:1"),      # LOCAL_RANK mod #GPUs
    (0, False, "1", "cpu"),         # a CPU launch stays on the CPU
])
def test_auto(monkeypatch, gpus, mps, local_rank, expected):
    fake(monkeypatch, gpus=gpus, mps=mps)
    if local_rank is not None:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    assert dev.resolve_device("auto") == expected
    assert dev.resolve_device(None) == expected  # auto is the default
    assert dev.current_device() == expected


@pytest.mark.parametrize("spec, expected", [("cpu", "cpu"), ("CUDA", "cuda:0"), ("cuda:1", "cuda:1"), (" cuda:0 ", "cuda:0")])
def test_explicit_specs_with_two_gpus(monkeypatch, spec, expected):
    fake(monkeypatch, gpus=2)
    assert dev.resolve_device(spec) == expected


@pytest.mark.parametrize("gpus, mps, spec, message", [
    (0, False, "cuda", "--device cuda: CUDA is not available"),
    (0, False, "cuda:0", "--device cuda:0: CUDA is not available"),
    (2, False, "cuda:7", "--device cuda:7: there is no GPU 7 (this machine has 2: cuda:0, cuda:1)"),
    (0, False, "mps", "--device mps: Apple's MPS device is not available"),
    (2, True, "tpu", "--device 'tpu': unknown device (choose auto, cpu, cuda, cuda:N, mps)"),
    (2, False, "cuda:x", "--device 'cuda:x': unknown device"),
])
def test_bad_specs(monkeypatch, gpus, mps, spec, message):
    fake(monkeypatch, gpus=gpus, mps=mps)
    with pytest.raises(EmbedKDError) as err:
        dev.resolve_device(spec)
    assert str(err.value).startswith(message)


def test_env_sets_the_default_and_the_flag_wins(monkeypatch):
    fake(monkeypatch, gpus=1)
    monkeypatch.setenv("EMBED_KD_DEVICE", "cpu")
    assert dev.resolve_device(None) == "cpu" and dev.resolve_device("cuda") == "cuda:0"
    monkeypatch.setenv("EMBED_KD_DEVICE", "tpu")
    with pytest.raises(EmbedKDError, match=r"^\$EMBED_KD_DEVICE 'tpu': unknown device"):
        dev.resolve_device(None)


def test_select_device_is_the_process_default_and_is_recorded(monkeypatch, caplog):
    fake(monkeypatch, gpus=2, name="NVIDIA Fake")
    caplog.set_level("INFO", logger="embed_kd.device")
    assert dev.select_device("cuda:1") == "cuda:1"
    assert caplog.records == []  # silent until a model loads there (bad input stays one Error line)
    dev.announce()
    dev.announce("cuda:1")
    assert [r.getMessage() for r in caplog.records] == ["device: cuda:1 (NVIDIA Fake 1)"]  # logged once
    from embed_kd import distributed
    from embed_kd.models import _default_device

    assert dev.current_device() == distributed.device() == _default_device() == "cuda:1"
    assert dev.device_info() == {"device": "cuda:1", "type": "cuda", "name": "NVIDIA Fake 1"}
    dev.select_device("cpu")
    info = dev.device_info()
    assert info["device"] == "cpu" and info["type"] == "cpu" and info["name"]


@pytest.mark.parametrize("device, bf16, precision, expected", [
    ("cpu", True, "auto", "fp32"), ("cuda:0", True, "auto", "bf16"), ("cuda:0", False, "auto", "fp16"),
    ("mps", False, "auto", "fp16"), ("cuda:0", True, "fp16", "fp16"), ("cuda:0", True, "fp32", "fp32"),
    ("cpu", True, "fp32", "fp32"),
])
def test_training_precision(monkeypatch, device, bf16, precision, expected):
    fake(monkeypatch, gpus=1, mps=True, bf16=bf16)
    assert dev.training_precision(precision, device) == expected


@pytest.mark.parametrize("device, bf16, precision, message", [
    ("cpu", True, "bf16", "needs a GPU"), ("cpu", True, "fp16", "needs a GPU"),
    ("cuda:0", False, "bf16", "has no bfloat16 support"), ("cuda:0", True, "half", "expected one of"),
])
def test_training_precision_refusals(monkeypatch, device, bf16, precision, message):
    fake(monkeypatch, gpus=1, bf16=bf16)
    with pytest.raises(EmbedKDError, match=message):
        dev.training_precision(precision, device)


@pytest.mark.parametrize("gpus, bf16, expected", [
    (0, False, {"use_cpu": True, "bf16": False, "fp16": False}),    # CPU: no half-precision flag
    (1, True, {"use_cpu": False, "bf16": True, "fp16": False}),     # a bf16 GPU (A100, H100, ...)
    (1, False, {"use_cpu": False, "bf16": False, "fp16": True}),    # an older GPU (T4, V100)
])
def test_trainer_arguments_carry_device_and_precision(monkeypatch, gpus, bf16, expected):
    """The function that builds the dense and sparse trainers' arguments, for a faked GPU and the CPU."""
    from embed_kd.training.config import TrainConfig
    from embed_kd.training.prologue import trainer_arguments

    fake(monkeypatch, gpus=gpus, bf16=bf16)
    dev.select_device("auto")
    kw = trainer_arguments(TrainConfig(), Path("ckpt"), evaluate=False, show_progress=False)
    assert {k: kw[k] for k in expected} == expected
    forced = trainer_arguments(TrainConfig.from_dict({"train": {"precision": "fp32"}}), Path("ckpt"), evaluate=False,
                               show_progress=False)
    assert (forced["bf16"], forced["fp16"]) == (False, False)


def test_cpu_trainer_arguments_build_real_training_arguments():
    from sentence_transformers import SentenceTransformerTrainingArguments

    from embed_kd.training.config import TrainConfig
    from embed_kd.training.prologue import trainer_arguments

    args = SentenceTransformerTrainingArguments(**trainer_arguments(
        TrainConfig(), Path("ckpt"), evaluate=False, show_progress=False, device="cpu"))
    dev.pin_trainer_device(args, "cpu")  # nothing to pin on the CPU
    assert args.use_cpu and not args.bf16 and not args.fp16 and str(args.device) == "cpu"


def test_config_device_and_precision_keys():
    from embed_kd.training.config import TrainConfig, apply_overrides

    cfg = TrainConfig.from_dict({"device": "cuda:1", "train": {"precision": "bf16"}})
    assert cfg.device == "cuda:1" and cfg.train.precision == "bf16"
    assert apply_overrides(cfg, ["device=cpu"]).device == "cpu"
    base = {"data": "d", "output": "o", "losses": {"score": "none"}, "train": {"precision": "half"}}
    with pytest.raises(EmbedKDError, match=r"train.precision = 'half'; expected one of auto, fp32, bf16, fp16"):
        TrainConfig.from_dict(base).validate()


def test_sparse_trainer_honours_the_device(monkeypatch, tmp_path, tiny_beir, tiny_model):
    """The sparse trainer used to pass use_cpu=True whatever the device: on a (faked) bf16 GPU it now
    gets use_cpu=False and bf16, through the shared prologue. The arguments are captured where the
    trainer would be built (a real run needs the GPU)."""
    import sentence_transformers.sparse_encoder as se
    from test_sparse import build_tiny_mlm
    from test_train_e2e import write_tiny_store

    from embed_kd.training.config import TrainConfig
    from embed_kd.training.sparse_run import train_sparse_student

    mlm = build_tiny_mlm(tmp_path / "mlm")
    store = write_tiny_store(tiny_beir, tiny_model, tmp_path / "scores")
    seen = {}

    class Captured(Exception):
        pass

    def capture(**kw):
        seen.update(kw)
        raise Captured

    monkeypatch.setattr(se, "SparseEncoderTrainingArguments", capture)
    cfg = TrainConfig.from_dict({
        "data": str(tiny_beir), "scores": str(store), "output": str(tmp_path / "o"),
        "student": {"type": "sparse", "model": str(mlm)},
        "losses": {"align": "none", "score_documents": "student"},
        "examples": {"negatives": 2, "dev_queries": 0, "min_candidates": 4},
        "sparse": {"query_length": 16, "document_length": 32}, "train": {"max_steps": 2, "batch_size": 4}})
    for gpus, expected in ((1, {"use_cpu": False, "bf16": True, "fp16": False}),
                           (0, {"use_cpu": True, "bf16": False, "fp16": False})):
        fake(monkeypatch, gpus=gpus, bf16=True)
        dev.reset()
        seen.clear()
        with pytest.raises(Captured):
            train_sparse_student(cfg, overwrite=True, show_progress=False)
        assert {k: seen[k] for k in expected} == expected
    assert not (tmp_path / "o").exists()


MODEL_COMMANDS = [["score-teacher", "run"], ["train"], ["train-teacher"], ["eval"], ["index", "build"],
                  ["index", "add"], ["serve"]]


@pytest.mark.parametrize("cmd", MODEL_COMMANDS, ids=" ".join)
def test_every_model_command_has_device(cmd):
    r = CliRunner().invoke(main, [*cmd, "--help"])
    assert r.exit_code == 0 and "--device auto|cpu|cuda|cuda:N|mps" in r.output


@pytest.mark.parametrize("value, message", [
    ("tpu", "Error: --device 'tpu': unknown device (choose auto, cpu, cuda, cuda:N, mps)"),
    ("cuda:7", "Error: --device cuda:7: CUDA is not available on this machine"),
])
def test_bad_device_is_one_clear_error(monkeypatch, tiny_beir, value, message):
    fake(monkeypatch, gpus=0)
    r = CliRunner().invoke(main, ["eval", "--data", str(tiny_beir), "--model", "bm25", "--device", value,
                                  "--no-progress"])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), r.output


def test_train_bad_device_exits_2(monkeypatch, tmp_path, tiny_beir):
    fake(monkeypatch, gpus=0)
    r = CliRunner().invoke(main, ["train", "--data", str(tiny_beir), "--teacher", "minilm-l6", "--set",
                                  "losses.score=none", "--student-from-teacher", "--keep-layers", "0", "-o", str(tmp_path / "o"),
                                  "--device", "cuda:7"])
    assert r.exit_code == 2 and "Error: device cuda:7: CUDA is not available" in r.output, r.output
    assert "Traceback" not in r.output and not (tmp_path / "o").exists()


def test_result_json_records_the_device(tmp_path, tiny_beir, tiny_model):
    dev.reset()
    out = tmp_path / "r.json"
    r = CliRunner().invoke(main, ["eval", "--data", str(tiny_beir), "--model", str(tiny_model), "--device", "cpu",
                                  "-o", str(out), "--no-progress", "--no-cache"])
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())["device"]
    assert d["device"] == "cpu" and d["type"] == "cpu" and d["name"]
    assert r.output.count("device: cpu (") == 1  # printed once, on stderr, when the model loaded there
    dev.reset()
    r = CliRunner().invoke(main, ["eval", "--data", str(tiny_beir), "--model", "bm25", "--device", "cpu",
                                  "-o", str(tmp_path / "bm25.json"), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "bm25.json").read_text())["device"]["device"] == "cpu"
    assert "device: cpu (" not in r.output  # no model loaded on a device: nothing to announce


def test_torch_fp16_backend_needs_a_gpu(tiny_beir):
    from test_score_teacher import build_tiny_cross_encoder

    from conftest import VOCAB
    from embed_kd.teachers.scorers import CrossEncoderTeacher, parse_teacher_spec

    ce = build_tiny_cross_encoder(Path(str(tiny_beir)).parent / "ce-fp16", VOCAB)
    dev.select_device("cpu")
    with pytest.raises(EmbedKDError, match="--backend torch-fp16 runs the teacher in float16 on a GPU; this run's "
                                           "device is cpu"):
        CrossEncoderTeacher(parse_teacher_spec(f"ce:{ce}"), resources=None, backend="torch-fp16")


def test_faiss_stays_on_the_cpu_without_gpu_support():
    """The installed faiss-cpu has no StandardGpuResources: a cuda device keeps the CPU index (same object)."""
    import numpy as np

    from embed_kd.index.faiss_index import build_faiss_index, faiss_has_gpu, on_device

    index = build_faiss_index(np.eye(4, dtype="float32"), "flat")
    assert on_device(index, "cpu") == (index, "cpu")
    if not faiss_has_gpu():
        assert on_device(index, "cuda:0") == (index, "cpu")
    hnsw = build_faiss_index(np.eye(4, dtype="float32"), "hnsw")
    assert on_device(hnsw, "cuda:0") == (hnsw, "cpu")  # no GPU form of HNSW: never moved


def test_pin_trainer_device_single_process(monkeypatch):
    """One process on a (faked) 2-GPU box: the trainer's device becomes cuda:1, no DataParallel, and
    cuda:1 is the current GPU (accelerate places on the current one)."""
    fake(monkeypatch, gpus=2)
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: current.append(str(d)))

    class Args:  # what pin_trainer_device touches of a TrainingArguments: the cached device and n_gpu
        _n_gpu = 2

        @property
        def device(self):
            return self.__dict__.get("_setup_devices", torch.device("cuda:0"))

    args = Args()
    dev.pin_trainer_device(args, "cuda:1")
    assert str(args.device) == "cuda:1" and args._n_gpu == 1 and current[-1] == "cuda:1"
    monkeypatch.setenv("LOCAL_RANK", "0")  # under a launcher: transformers' DDP setup decides, untouched
    other = Args()
    dev.pin_trainer_device(other, "cuda:1")
    assert str(other.device) == "cuda:0" and other._n_gpu == 2
