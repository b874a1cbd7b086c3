"""Run an app with uvicorn: in the foreground (``embed-kd serve``) or in a background thread (tests, load runs).

:class:`BackgroundServer` starts a real ``uvicorn.Server`` on a loopback port in a daemon thread
and returns once it accepts connections; leaving the ``with`` block shuts it down.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

from embed_kd.errors import EmbedKDError

logger = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_port(host: str, port: int) -> None:
    """Raise a clear error when ``host:port`` cannot be bound (in use, or not an address of this machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise EmbedKDError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None


def _config(app, host: str, port: int, *, access_log: bool = False, log_level: str = "warning"):
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, access_log=access_log, log_level=log_level,
                          lifespan="on", timeout_graceful_shutdown=5)


def serve_forever(app, host: str = "127.0.0.1", port: int = 8000, *, access_log: bool = False,
                  log_level: str = "warning") -> None:
    """Serve until Ctrl-C / SIGTERM (uvicorn handles the signals and drains open requests); Ctrl-C returns."""
    import uvicorn

    check_port(host, port)
    try:
        uvicorn.Server(_config(app, host, port, access_log=access_log, log_level=log_level)).run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown: that is a normal stop
        logger.info("server on %s:%d stopped", host, port)


class BackgroundServer:
    """``with BackgroundServer(app) as url: ...`` — a real uvicorn server on loopback, in a thread."""

    def __init__(self, app, host: str = "127.0.0.1", port: int | None = None, *, start_timeout: float = 60.0):
        import uvicorn

        self.host, self.port = host, port or free_port(host)
        self.server = uvicorn.Server(_config(app, self.host, self.port))
        self.start_timeout = start_timeout
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> str:
        self.thread = threading.Thread(target=self.server.run, name="embed-kd-uvicorn", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise EmbedKDError(f"the server on {self.url} stopped during startup (see the log)")
            if time.monotonic() > deadline:
                self.server.should_exit = True
                raise EmbedKDError(f"the server on {self.url} did not start within {self.start_timeout:.0f}s")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=15)
