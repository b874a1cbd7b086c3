"""Helpers shared by scripts/load_test.py and scripts/serve_ndcg.py (not part of the package)."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def layer_cut(spec: str, keep_layers: str, out_root: str | None = None) -> str:
    """Save a copy of ``spec`` keeping only ``keep_layers`` (e.g. "0,2,4") and return its folder.

    Uses the students module (embed_kd.students.cut_layers): the speed of a student depends on its
    architecture, not on its training, so an untrained cut measures the serving speed of a trained one.
    """
    from embed_kd.models import load_sentence_transformer
    from embed_kd.students import cut_layers

    keep = [int(x) for x in keep_layers.split(",")]
    student = cut_layers(load_sentence_transformer(spec), keep)
    out = Path(tempfile.mkdtemp(prefix="embed-kd-cut-", dir=out_root)) / f"{Path(spec).name}-layers-{'-'.join(map(str, keep))}"
    student.save(str(out))
    atexit.register(shutil.rmtree, out.parent, ignore_errors=True)  # a throw-away copy: removed at exit
    return str(out)


class ServerProcess:
    """``embed-kd serve`` in a subprocess on loopback; ``with ServerProcess(args) as url``."""

    def __init__(self, index: str, query_model: str | None, port: int, extra: list[str] | None = None,
                 start_timeout: float = 300.0):
        self.args = [sys.executable, "-m", "embed_kd", "serve", "--index", index, "--host", "127.0.0.1",
                     "--port", str(port), "-q", *(extra or [])]
        if query_model:
            self.args += ["--query-model", query_model]
        self.url = f"http://127.0.0.1:{port}"
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> str:
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        self.log = tempfile.NamedTemporaryFile("w+", prefix="embed-kd-serve-", suffix=".log")
        self.proc = subprocess.Popen(self.args, env=env, stdout=self.log, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise SystemExit(f"server exited with {self.proc.returncode}: {self.log.read()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self.url
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.proc.kill()
                raise SystemExit("server did not start in time")
            time.sleep(0.25)

    def __exit__(self, *exc) -> None:
        import signal

        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
