"""What every command shares: logging setup, error handling, common options."""

from __future__ import annotations

import errno
import functools
import logging
import os
import sys

import click

from embed_kd.errors import EmbedKDError

EXIT_USER_ERROR = 2
#: OSErrors that are the machine's state, not a bug: reported as one ``Error:`` line, like user mistakes
_ENV_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.ENOENT,
               errno.ENOTDIR, errno.EISDIR}


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("embed_kd")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # third-party chatter (weights loading bars, HTTP retries) stays quiet unless -vv
    for name in ("sentence_transformers", "transformers", "huggingface_hub", "bm25s", "faiss"):
        logging.getLogger(name).setLevel(logging.INFO if verbose > 1 else logging.ERROR)
    if verbose < 2:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        try:
            import transformers

            transformers.logging.set_verbosity_error()
            transformers.logging.disable_progress_bar()
        except Exception:  # pragma: no cover - transformers always present in practice
            pass


def run_command(fn):
    """Turn :class:`EmbedKDError` into ``Error: …`` + exit 2, and Ctrl-C into exit 130.

    An ``OSError`` that describes the machine (disk full, quota, read-only file system, permission
    denied, missing path) is reported the same way, naming the file; any other exception is a bug
    and keeps its traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EmbedKDError as exc:
            if os.environ.get("RANK", "0") in ("", "0"):  # under torchrun: one report (rank 0 names failed peers)
                click.echo(f"Error: {exc}", err=True)
            sys.exit(EXIT_USER_ERROR)
        except OSError as exc:
            if exc.errno not in _ENV_ERRNOS:
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"Error: {where}{exc.strerror or exc}", err=True)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            click.echo("Interrupted: nothing partial was kept (outputs are written atomically).", err=True)
            sys.exit(130)

    return wrapper


def verbosity_options(fn):
    fn = click.option("-v", "--verbose", count=True, help="More logging (-vv: also third-party libraries).")(fn)
    fn = click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")(fn)
    return fn


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)
