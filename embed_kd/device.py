"""Which device models run on, and in which precision: one rule for every command.

A device spec (``--device`` on every command that loads a model, ``device:`` in a training YAML,
``$EMBED_KD_DEVICE`` for the default):

==========  =====================================================================================
spec        device
==========  =====================================================================================
``auto``    (the default) under a launcher (``torchrun`` / ``accelerate launch``: ``LOCAL_RANK``
            set) this process's GPU ``cuda:LOCAL_RANK mod #GPUs``; else ``cuda:0`` when CUDA is
            available; else ``mps`` (Apple silicon); else ``cpu``
``cpu``     the CPU
``cuda``    ``auto``'s GPU choice, refused when CUDA is not available
``cuda:N``  GPU N, refused when there is no GPU N
``mps``     Apple's Metal device, refused when not available
==========  =====================================================================================

Anything else (``tpu``, ``cuda:x``) is an :class:`~embed_kd.errors.EmbedKDError` naming the value:
``Error: …`` and exit 2 through the CLI.

:func:`select_device` resolves a spec, makes it this process's default (what
:mod:`embed_kd.models` loads models on, what the trainers train on) and logs it once;
:func:`current_device` is that default (resolving ``$EMBED_KD_DEVICE`` / ``auto`` when nothing was
selected). :func:`device_info` is the block every manifest and result JSON records::

    "device": {"device": "cuda:0", "type": "cuda", "name": "NVIDIA H200"}   # or "cpu" + the CPU model

Training precision (``train.precision``): ``auto`` = ``bf16`` on a GPU that supports bfloat16,
``fp16`` on other GPUs (and MPS), ``fp32`` on the CPU; ``fp32`` / ``bf16`` / ``fp16`` force it
(half precision on the CPU is refused: it is emulated and slow). :func:`trainer_device_arguments`
turns ``(device, precision)`` into the ``use_cpu`` / ``bf16`` / ``fp16`` flags of a
``transformers.TrainingArguments``.

>>> resolve_device("cpu")
'cpu'
>>> training_precision("auto", "cpu")
'fp32'
>>> trainer_device_arguments("cpu", "fp32")
{'use_cpu': True, 'bf16': False, 'fp16': False}
"""

from __future__ import annotations

import logging
import os
import platform
import re

from embed_kd.cpu import cpu_model
from embed_kd.errors import EmbedKDError

logger = logging.getLogger(__name__)

ENV = "EMBED_KD_DEVICE"
SPECS = "auto, cpu, cuda, cuda:N, mps"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_CUDA_RE = re.compile(r"^cuda:(\d+)$")

_selected: str | None = None  # set by select_device()
_announced: str | None = None


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def env_int(name: str, default: int | None) -> int | None:
    """The integer environment variable ``name`` (``default`` when unset or empty); anything else
    is one clear error.

    >>> env_int("EMBED_KD_SURELY_UNSET_VARIABLE", 7)
    7
    """
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise EmbedKDError(f"environment variable {name}={raw!r}: expected an integer") from None


def _launcher_local_rank() -> int | None:
    """``LOCAL_RANK`` when a launcher set it (``torchrun``, ``accelerate launch``), else None."""
    return env_int("LOCAL_RANK", None)


def _auto_cuda() -> str:
    import torch

    local = _launcher_local_rank()
    return f"cuda:{local % torch.cuda.device_count()}" if local is not None else "cuda:0"


def resolve_device(spec: str | None = None, *, what: str = "--device") -> str:
    """The concrete device (``cpu``, ``cuda:N`` or ``mps``) a spec names (module docstring).

    ``spec`` None or empty: ``$EMBED_KD_DEVICE``, else ``auto``. ``what`` names the setting in
    errors (``--device``, ``config: device``).
    """
    source = what
    if spec is None or str(spec).strip() == "":
        env = os.environ.get(ENV, "").strip()
        spec, source = (env, f"${ENV}") if env else ("auto", what)
    s = str(spec).strip().lower()
    if s == "cpu":
        return "cpu"
    if s == "auto":
        if _cuda_available():
            return _auto_cuda()
        return "mps" if _mps_available() else "cpu"
    if s == "mps":
        if not _mps_available():
            raise EmbedKDError(f"{source} mps: Apple's MPS device is not available on this machine (choose {SPECS})")
        return "mps"
    if s == "cuda" or _CUDA_RE.match(s):
        if not _cuda_available():
            raise EmbedKDError(f"{source} {spec}: CUDA is not available on this machine (no NVIDIA GPU visible to "
                               "torch, or a CPU-only torch build); use --device cpu or auto")
        if s == "cuda":
            return _auto_cuda()
        import torch

        index, count = int(_CUDA_RE.match(s).group(1)), torch.cuda.device_count()
        if index >= count:
            raise EmbedKDError(f"{source} {spec}: there is no GPU {index} (this machine has {count}: "
                               f"{', '.join(f'cuda:{i}' for i in range(count))})")
        return f"cuda:{index}"
    raise EmbedKDError(f"{source} {spec!r}: unknown device (choose {SPECS})")


def select_device(spec: str | None = None, *, what: str = "--device") -> str:
    """Resolve ``spec`` and make it this process's device (models load there, trainers train there).

    Silent: the device is announced (:func:`announce`) when a model is first loaded on it, so a
    command that stops on bad input before loading anything prints only its error.
    """
    global _selected
    device = resolve_device(spec, what=what)
    if device.startswith("cuda:"):
        import torch

        torch.cuda.set_device(int(device.split(":", 1)[1]))  # "cuda" means this GPU for every library
    _selected = device
    return device


def announce(device: str | None = None) -> None:
    """Log ``device: cuda:0 (NVIDIA H200)`` once per process (again only when it changes); the model
    loaders (:mod:`embed_kd.models`) call it after a model has loaded on ``device``."""
    global _announced
    device = device or current_device()
    if _announced != device:
        _announced = device
        logger.info("device: %s (%s)", device, device_info(device)["name"])


def current_device() -> str:
    """The selected device (:func:`select_device`), else what ``$EMBED_KD_DEVICE`` / ``auto`` resolve to."""
    return _selected if _selected is not None else resolve_device(None)


def reset() -> None:
    """Forget the selected device (tests; a library user switching devices calls select_device instead)."""
    global _selected, _announced
    _selected = _announced = None


def is_gpu(device: str) -> bool:
    return device.startswith("cuda") or device == "mps"


def device_info(device: str | None = None) -> dict:
    """``{"device", "type", "name"}`` of ``device`` (default: :func:`current_device`), for manifests."""
    device = device or current_device()
    kind = device.split(":", 1)[0]
    if kind == "cuda":
        import torch

        name = torch.cuda.get_device_name(int(device.split(":", 1)[1]) if ":" in device else 0)
    elif kind == "mps":
        name = f"Apple MPS ({platform.machine()})"
    else:
        name = cpu_model()
    return {"device": device, "type": kind, "name": name}


def bf16_supported(device: str) -> bool:
    """Whether ``device`` runs bfloat16 natively (CUDA: compute capability 8.0+, per torch)."""
    if not device.startswith("cuda"):
        return False
    import torch

    return bool(torch.cuda.is_bf16_supported())


def training_precision(precision: str, device: str) -> str:
    """``fp32`` / ``bf16`` / ``fp16`` for ``train.precision`` on ``device`` (module docstring).

    >>> training_precision("fp32", "cpu"), training_precision("auto", "cpu")
    ('fp32', 'fp32')
    """
    if precision not in PRECISIONS:
        raise EmbedKDError(f"config: train.precision = {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if not is_gpu(device):
            return "fp32"
        return "bf16" if bf16_supported(device) else "fp16"
    if precision != "fp32" and not is_gpu(device):
        raise EmbedKDError(f"config: train.precision = {precision} needs a GPU (device is {device}); use fp32 or auto "
                           "on the CPU")
    if precision == "bf16" and device.startswith("cuda") and not bf16_supported(device):
        raise EmbedKDError(f"config: train.precision = bf16: {device_info(device)['name']} has no bfloat16 support; "
                           "use fp16 or auto")
    return precision


def trainer_device_arguments(device: str, precision: str) -> dict:
    """The ``use_cpu`` / ``bf16`` / ``fp16`` keyword arguments of a ``TrainingArguments`` for a
    resolved ``device`` and a resolved precision (:func:`training_precision`)."""
    return {"use_cpu": device == "cpu", "bf16": precision == "bf16", "fp16": precision == "fp16"}


def pin_trainer_device(args, device: str) -> None:
    """Make a ``transformers.TrainingArguments`` train on exactly ``device`` in a single process.

    In one process the Trainer always picks ``cuda:0`` and wraps the model in ``DataParallel``
    over every visible GPU; this pins it to the selected GPU (``--device cuda:1`` trains on GPU 1
    only; multi-GPU training goes through ``torchrun``, which gives each process its GPU).
    Nothing changes on the CPU, on MPS or under a launcher.
    """
    if not device.startswith("cuda") or _launcher_local_rank() is not None:
        return
    import torch

    _ = args.device  # let transformers set up its state first (accelerate's PartialState; it sets cuda:0 current)
    args.__dict__["_setup_devices"] = torch.device(device)  # the cached_property behind args.device
    args._n_gpu = 1
    torch.cuda.set_device(torch.device(device))  # accelerate's "cuda" is the current GPU: make it this one
