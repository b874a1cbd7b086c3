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


def walk_commands(group=main, path=()):
    """Every leaf command under ``embed-kd``, as its path of names (groups walked recursively)."""
    import click

    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from walk_commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


# The commands that load no model on a device, and why; every other command must take --device. A new
# command lands in neither list by accident: it fails test_every_model_command_has_device until it
# takes --device or is added here with its reason.
NO_DEVICE = {
    ("models",): "lists the presets; loads nothing",
    ("report",): "reads result JSONs and draws a plot; loads nothing",
    ("publish",): "loads the folder's model on the CPU only to hash its weights (embed_kd.publish.verify_fingerprint)",
    ("export", "asym"): "loads both towers on the CPU only to assemble and save the Router (students.asym.build_asym); "
                        "nothing is encoded, and the saved model loads on any device",
    ("score-teacher", "import"): "reads score files and the dataset's ids; loads no model",
    ("score-teacher", "merge"): "joins score-store shards; loads no model",
    ("score-teacher", "export"): "writes a score store as TSV / datasets; loads no model",
    ("index", "info"): "reads an index manifest; loads no model",
}
COMMANDS = dict(walk_commands())
MODEL_COMMANDS = [path for path in COMMANDS if path not in NO_DEVICE]


def _has_device(cmd) -> bool:
    return any("--device" in getattr(p, "opts", ()) for p in cmd.params)


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_every_model_command_has_device(path):
    r = CliRunner().invoke(main, [*path, "--help"])
    assert r.exit_code == 0, r.output
    if path in NO_DEVICE:
        assert not _has_device(COMMANDS[path]), f"{' '.join(path)} takes --device: drop it from NO_DEVICE"
    else:
        assert "--device auto|cpu|cuda|cuda:N|mps" in r.output, (
            f"embed-kd {' '.join(path)} has no --device: add @device_option (cli/common.py) if it loads a model, "
            "else list it in NO_DEVICE with the reason")


def test_the_walk_sees_every_command_and_no_stale_exclusion():
    assert set(NO_DEVICE) <= set(COMMANDS), set(NO_DEVICE) - set(COMMANDS)
    assert {("eval",), ("train",), ("train-teacher",), ("serve",), ("score-teacher", "run"), ("index", "build"),
            ("index", "add")} <= set(MODEL_COMMANDS)


def _model_command_args(path, tmp, beir, model):
    """The smallest valid arguments of each model command (nothing is ever loaded: --device fails first)."""
    o = str(tmp / "o")
    return {
        ("eval",): ["--data", beir, "--model", model, "--no-progress"],
        ("train",): ["--data", beir, "--teacher", model, "--set", "losses.score=none", "--student-from-teacher",
                     "--keep-layers", "0", "-o", o],
        ("train-teacher",): ["--data", beir, "--base", model, "--dense-model", model, "-o", o],
        ("serve",): ["--index", str(tmp / "idx"), "--query-model", model],
        ("score-teacher", "run"): ["--data", beir, "--candidates", "bm25:5", "--teacher", f"ce:{model}", "-o", o],
        ("index", "build"): ["--data", beir, "--doc-model", model, "-o", o],
        ("index", "add"): [str(tmp / "idx"), "--docs", beir],
    }[path]


@pytest.mark.parametrize("value, message", [
    ("tpu", "Error: --device 'tpu': unknown device (choose auto, cpu, cuda, cuda:N, mps)"),
    ("cuda:7", "Error: --device cuda:7: CUDA is not available on this machine"),
])
@pytest.mark.parametrize("path", MODEL_COMMANDS, ids=" ".join)
def test_bad_device_is_one_clear_error(monkeypatch, tmp_path, tiny_beir, tiny_model, path, value, message):
    """Every model command refuses a bad --device with one Error line, exit 2, before loading data or a model
    (the announce line ``device: …`` never appears) and before creating its output."""
    fake(monkeypatch, gpus=0)
    try:
        args = _model_command_args(path, tmp_path, str(tiny_beir), str(tiny_model))
    except KeyError:
        pytest.fail(f"embed-kd {' '.join(path)} takes --device: give it its smallest valid arguments in "
                    "_model_command_args")
    r = CliRunner().invoke(main, [*path, *args, "--device", value])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), r.output
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.work").exists()


def test_train_bad_device_names_where_it_was_set(monkeypatch, tmp_path, tiny_beir):
    """train's device comes from --device, --set device=, the config file's device: or $EMBED_KD_DEVICE;
    a bad one's error names which (the highest-priority one that set it)."""
    fake(monkeypatch, gpus=0)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {tiny_beir}\nteacher: minilm-l6\noutput: {tmp_path / 'o'}\ndevice: cuda:7\n"
                   "losses: {score: none}\nstudent: {from_teacher: true, keep_layers: [0]}\n")
    base = ["train", "--data", str(tiny_beir), "--teacher", "minilm-l6", "--set", "losses.score=none",
            "--student-from-teacher", "--keep-layers", "0", "-o", str(tmp_path / "o")]
    for args, env, message in (
            ([*base, "--device", "cuda:7"], None, "Error: --device cuda:7: CUDA is not available"),
            ([*base, "--set", "device=tpu"], None, "Error: --set device 'tpu': unknown device"),
            (["train", str(cfg)], None, f"Error: {cfg}: device cuda:7: CUDA is not available"),
            (["train", str(cfg), "--device", "tpu"], None, "Error: --device 'tpu': unknown device"),
            (base, "cuda:3", "Error: $EMBED_KD_DEVICE cuda:3: CUDA is not available")):
        if env:
            monkeypatch.setenv("EMBED_KD_DEVICE", env)
        r = CliRunner().invoke(main, args)
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith(message), (args, r.output)
    assert "Traceback" not in r.output and not (tmp_path / "o").exists()
    from embed_kd.training.config import TrainConfig

    with pytest.raises(EmbedKDError, match=r"^config: device cuda:7: CUDA"):  # the library, no CLI
        TrainConfig.from_dict({"data": "d", "output": "o", "device": "cuda:7", "losses": {"score": "none"}}).validate()


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


def _recorded(block):
    from embed_kd.cpu import cpu_model

    return block == {"device": "cpu", "type": "cpu", "name": cpu_model()}


def test_score_store_train_run_and_index_manifests_record_the_device(tmp_path, tiny_beir, tiny_model, cache_dir):
    """--device cpu lands in the score store's manifest.json, the student's embed_kd_train.json and the index
    folder's manifest.json (and its build batch), as eval's result JSON does (the test above)."""
    def cli(*args):
        dev.reset()
        r = CliRunner().invoke(main, [*args, "--device", "cpu", "--no-progress"])
        assert r.exit_code == 0, r.output

    cli("score-teacher", "run", "--data", str(tiny_beir), "--candidates", "bm25:3", "--teacher", f"bi:{tiny_model}",
        "--limit", "2", "-o", str(tmp_path / "scores"), "--cache-dir", str(cache_dir))
    assert _recorded(json.loads((tmp_path / "scores" / "manifest.json").read_text())["device"])

    texts = tmp_path / "texts.txt"
    texts.write_text("".join(f"{json.loads(x)['text']}\n" for x in (tiny_beir / "corpus.jsonl").read_text().splitlines()))
    cli("train", "--corpus", str(texts), "--teacher", str(tiny_model), "--student-from-teacher", "--keep-layers", "1",
        "-o", str(tmp_path / "student"), "--set", "losses.score=none", "--set", "train.max_steps=1",
        "--set", "average.enabled=false", "--cache-dir", str(cache_dir))
    run = json.loads((tmp_path / "student" / "embed_kd_train.json").read_text())
    assert _recorded(run["device"]) and run["training"]["precision"] == "fp32"

    cli("index", "build", "--data", str(texts), "--doc-model", str(tiny_model), "-o", str(tmp_path / "idx"),
        "--cache-dir", str(cache_dir))
    idx = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert _recorded(idx["device"]) and [b["device"] for b in idx["batches"]] == ["cpu"]


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
