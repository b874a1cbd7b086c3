"""What the CPU can do, and the machine a measurement ran on.

Two concerns that read the same facts:

- :func:`native_bf16`: whether a runtime multiplies bfloat16 natively here (AVX512-BF16 / AMX on
  x86-64). The ``torch-bf16`` and ``openvino-bf16`` teacher backends ask it before choosing their
  path (a warning and float32 where it is absent). ``EMBED_KD_FAKE_CPU_BF16=0|1`` overrides the
  probe, so both paths run — and are tested — on any CPU (``0``: as on a CPU without native bf16;
  ``1``: as on one with it; unset or empty: the real probe).
- :func:`machine_info`: the record every benchmark report carries (CPU model, the flags that matter
  for these kernels, architecture, cores, threads, load average, commit), so a figure names the
  machine and the load it was measured under.

Nothing is probed at import time.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from embed_kd.errors import EmbedKDError

FAKE_BF16_ENV = "EMBED_KD_FAKE_CPU_BF16"
#: /proc/cpuinfo flags that decide which kernels run (names as Linux spells them)
FLAGS_THAT_MATTER = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def fake_bf16() -> bool | None:
    """The faked bf16 capability from ``EMBED_KD_FAKE_CPU_BF16`` (None: not faked).

    >>> import os
    >>> before = os.environ.get("EMBED_KD_FAKE_CPU_BF16")  # CI fakes it for the whole run: put it back after
    >>> os.environ["EMBED_KD_FAKE_CPU_BF16"] = "0"; fake_bf16()
    False
    >>> os.environ["EMBED_KD_FAKE_CPU_BF16"] = ""; fake_bf16() is None
    True
    >>> _ = os.environ.pop("EMBED_KD_FAKE_CPU_BF16") if before is None else os.environ.update(EMBED_KD_FAKE_CPU_BF16=before)
    """
    value = os.environ.get(FAKE_BF16_ENV, "").strip()
    if not value:
        return None
    if value not in ("0", "1"):
        raise EmbedKDError(f"{FAKE_BF16_ENV}={value!r}: must be 0 (no native bf16), 1 (native bf16) or unset")
    return value == "1"


def native_bf16(runtime: str = "torch") -> bool:
    """Whether ``runtime`` (``torch`` or ``openvino``) runs bfloat16 natively on this CPU, unless faked."""
    faked = fake_bf16()
    if faked is not None:
        return faked
    if runtime == "openvino":
        import openvino as ov

        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if runtime != "torch":
        raise ValueError(f"runtime must be torch or openvino, got {runtime!r}")
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - very old / unusual torch builds
        return False


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:  # not Linux
        return ""


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else :func:`platform.processor`)."""
    for line in _cpuinfo().splitlines():
        if line.split(":")[0].strip() in ("model name", "Model", "Hardware"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> dict[str, bool]:
    """Each of :data:`FLAGS_THAT_MATTER`: present in ``/proc/cpuinfo`` (all False where unreadable)."""
    flags: set[str] = set()
    for line in _cpuinfo().splitlines():
        if line.split(":")[0].strip() in ("flags", "Features"):
            flags |= set(line.split(":", 1)[1].split())
    return {f: f in flags for f in FLAGS_THAT_MATTER}


def commit(repo: str | os.PathLike | None = None) -> str | None:
    """``git rev-parse HEAD`` of ``repo`` (default: the checkout this package is in), ``+dirty`` when
    tracked files differ from it; None outside a git checkout."""
    root = Path(repo) if repo else Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def machine_info(threads: int | None = None) -> dict:
    """The machine record of a benchmark report (call it when the measurement ends: the 1/5/15-minute
    load averages then cover the run). ``threads``: the compute threads the measurement used
    (default: torch's current setting).

    >>> m = machine_info(threads=2)
    >>> sorted(m) == ["arch", "commit", "cores", "cpu", "flags", "load_avg", "threads"] and m["threads"]
    2
    """
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - platforms without getloadavg
        load = None
    return {"cpu": cpu_model(), "arch": platform.machine(), "cores": os.cpu_count(), "flags": cpu_flags(),
            "threads": int(threads), "load_avg": load, "commit": commit()}


def describe(m: dict) -> str:
    """One line for a report: ``AMD EPYC (x86_64, 2 cores; avx2 avx512f ...), 2 threads, load 1.9/1.5/0.8, commit abc1234``.

    >>> describe({"cpu": "X", "arch": "x86_64", "cores": 2, "flags": {"avx2": True, "amx_bf16": False},
    ...           "threads": 1, "load_avg": [2.0, 1.5, 0.75], "commit": "0123456789abcdef"})
    'X (x86_64, 2 cores; avx2; no amx_bf16), 1 thread(s), load avg 2.0/1.5/0.75 (1/5/15 min), commit 0123456789abcdef'
    """
    have = " ".join(f for f, v in m["flags"].items() if v)
    lack = " ".join(f for f, v in m["flags"].items() if not v)
    flags = "; ".join(x for x in (have, f"no {lack}" if lack else "") if x)
    load = "/".join(str(x) for x in m["load_avg"]) + " (1/5/15 min)" if m.get("load_avg") else "unknown"
    c = m.get("commit") or "unknown"
    return (f"{m['cpu']} ({m['arch']}, {m['cores']} cores; {flags}), {m['threads']} thread(s), load avg {load}, "
            f"commit {c[:12] + c[40:] if len(c) >= 40 else c}")
