"""Shared checks of the reliability suite (tests/test_reliability*.py).

Every checked outcome is recorded through pytest's ``record_property`` as one ``row`` property (a
JSON object: ``category``, ``case``, ``expected``, ``outcome``, ``exit_code``, ``message``,
``traceback``, ``leftovers``, ``data_lost``), so that ``scripts/reliability_report.py`` can build
``eval/results/reliability.md`` from the JUnit XML of an actual run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

TEMP_MARKERS = (".tmp", ".old-")


def leftovers(*folders: Path) -> list[str]:
    """Temporary files or folders of an atomic write left in ``folders`` (recursively)."""
    found = []
    for folder in folders:
        if not Path(folder).exists():
            continue
        for p in Path(folder).rglob(".*"):
            if any(m in p.name for m in TEMP_MARKERS):
                found.append(str(p))
    return sorted(found)


def snapshot(path: Path) -> dict[str, bytes] | None:
    """Bytes of a file, or of every file under a folder; None when ``path`` does not exist."""
    path = Path(path)
    if not path.exists():
        return None
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


class Case:
    """One row of the case table: run a command, check the outcome, record it."""

    def __init__(self, record_property, category: str, description: str):
        self._record = record_property
        self.category, self.description = category, description

    def _write(self, expected: str, outcome: str, exit_code, message: str, traceback: bool, left: list[str],
               lost: bool) -> None:
        self._record("row", json.dumps({
            "category": self.category, "case": self.description, "expected": expected, "outcome": outcome,
            "exit_code": exit_code, "message": message, "traceback": bool(traceback), "leftovers": len(left),
            "data_lost": bool(lost)}))

    def error(self, exit_code: int | None, stderr: str, needles=(), *, absent=(), unchanged=None, folders=(),
              exception: BaseException | None = None) -> str:
        """Expect one clear ``Error:`` line naming ``needles``, exit != 0, no traceback, no partial
        output (``absent`` paths do not exist, ``unchanged`` {path: snapshot} kept, no temporaries
        in ``folders``). Returns the error line."""
        crashed = exception is not None and not isinstance(exception, SystemExit)
        traceback = "Traceback" in stderr or crashed
        errors = [ln for ln in stderr.splitlines() if ln.startswith("Error: ")]
        message = errors[0] if errors else (repr(exception) if crashed else stderr.strip()[-300:])
        left = leftovers(*folders)
        lost = any(Path(p).exists() for p in absent) or any(
            snapshot(Path(p)) != snap for p, snap in (unchanged or {}).items())
        clear = exit_code not in (0, None) and not traceback and len(errors) == 1 and all(
            n in errors[0] for n in needles)
        self._write("clear error", "clear error" if clear else ("crash" if traceback else "unclear"), exit_code,
                    message, traceback, left, lost)
        assert not traceback, f"traceback / crash: {message}\n{stderr}"
        assert exit_code not in (0, None), f"exit code {exit_code}: {stderr}"
        assert len(errors) == 1, f"expected exactly one 'Error:' line, got: {stderr!r}"
        for n in needles:
            assert n in errors[0], f"{n!r} not in {errors[0]!r}"
        assert not left, f"temporary files left: {left}"
        assert not lost, "partial output left behind or an existing output changed"
        return errors[0]

    def ok(self, outcome: str, exit_code: int | None, stderr: str = "", *, folders=(), note: str = "",
           exception: BaseException | None = None, lost: bool = False) -> None:
        """Expect success (``outcome`` says how: accepted, recovered, resumed...). ``lost``: the
        caller's verdict on the data (an interrupted run's rerun differing from a clean run)."""
        crashed = exception is not None and not isinstance(exception, SystemExit)
        traceback = "Traceback" in stderr or crashed
        left = leftovers(*folders)
        if not note:
            tail = stderr.strip().splitlines()
            note = tail[-1] if tail else ""
        self._write(outcome, outcome if exit_code == 0 and not traceback else "crash", exit_code, note, traceback,
                    left, lost)
        assert not traceback, stderr
        assert exit_code == 0, stderr
        assert not left, f"temporary files left: {left}"


def cli(*args: str, env: dict | None = None, timeout: int = 300, wrap: list[str] | None = None
        ) -> subprocess.CompletedProcess:
    """``python -m embed_kd ARGS`` in a real subprocess (optionally inside ``wrap``, e.g. unshare)."""
    cmd = [sys.executable, "-m", "embed_kd", *map(str, args)]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    return subprocess.run((wrap or []) + cmd, capture_output=True, text=True, env=full_env, timeout=timeout)


_NS_OK: bool | None = None


def namespaces_available() -> bool:
    """Whether ``unshare -r -m`` can give this user a private mount namespace (tmpfs, read-only binds)."""
    global _NS_OK
    if _NS_OK is None:
        try:
            _NS_OK = shutil.which("unshare") is not None and subprocess.run(
                ["unshare", "-r", "-m", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /tmp 2>/dev/null || exit 1"],
                capture_output=True, timeout=20).returncode == 0
        except (OSError, subprocess.SubprocessError):
            _NS_OK = False
    return _NS_OK


LISTING = "--- left on the disk:"


def in_tmpfs(folder: Path, size: str) -> list[str]:
    """A wrapper: run the command with a ``size``-byte tmpfs mounted on ``folder`` (a really full
    disk), then print :data:`LISTING` and what is left on it to stderr (the tmpfs dies with the
    namespace, so this is the only chance to look)."""
    script = (f"mount -t tmpfs -o size={size} tmpfs '{folder}' || exit 99; \"$@\"; rc=$?; "
              f"echo '{LISTING}' >&2; ls -A1R '{folder}' >&2; exit $rc")
    return ["unshare", "-r", "-m", "sh", "-c", script, "sh"]


def read_only(folder: Path) -> list[str]:
    """A wrapper: run the command with ``folder`` bind-mounted read-only (EROFS, even for root)."""
    return ["unshare", "-r", "-m", "sh", "-c",
            f"mount --bind '{folder}' '{folder}' && mount -o remount,bind,ro '{folder}' && exec \"$@\"", "sh"]


def kill_when(proc: subprocess.Popen, ready, timeout: float) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()`` holds; False when it ended first (the kill -9 tests)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            return True
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    raise AssertionError("the process neither finished nor reached the kill point in time")
