"""What every command shares: logging setup, error handling, common options."""

from __future__ import annotations

import errno
import functools
import logging
import os
import sys

import click

from embed_kd import distributed as dist
from embed_kd.errors import EmbedKDError

EXIT_USER_ERROR = 2
#: OSErrors that are the machine's state, not a bug: reported as one ``Error:`` line, like user mistakes
_ENV_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.ENOENT,
               errno.ENOTDIR, errno.EISDIR}


def note(message: str) -> None:
    """A command's closing summary on stderr (rows written, cache, time); silent under ``-q`` — which
    keeps progress bars, warnings, errors and the command's result on stdout."""
    if logging.getLogger("embed_kd").getEffectiveLevel() <= logging.INFO:
        click.echo(message, err=True)


#: click >= 8.2 raises this for a group called without a command (older click prints the help itself)
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class OneLineErrors(click.Group):
    """The ``embed-kd`` group: click's own usage errors (an unknown option or command, a bad
    value) are one ``Error: <problem> (see '<command> --help')`` line and exit code 2, like every
    other user mistake — not click's three lines of usage, hint and error."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):  # noqa: D102 - click's entry point
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except _NO_ARGS_IS_HELP as exc:  # `embed-kd` or `embed-kd index` alone: its help, not an error line
            click.echo(exc.ctx.get_help())
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            ctx = exc.ctx
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            click.echo(f"Error: {' '.join(exc.format_message().split())}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"Error: {' '.join(exc.format_message().split())}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


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
            result = fn(*args, **kwargs)
            dist.shutdown(succeeded=True)  # under torchrun: every process done before any disconnects
            return result
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


def device_option(fn):
    """``--device``, on every command that loads a model (resolved by :func:`embed_kd.device.select_device`)."""
    return click.option("--device", metavar="auto|cpu|cuda|cuda:N|mps",
                        help="Device the models run on (default: $EMBED_KD_DEVICE, else auto: this process's GPU "
                             "under torchrun, else cuda:0, else mps, else cpu).")(fn)


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)
