"""Atomic, non-clobbering writes shared by every artifact writer.

Every file is written to a temporary sibling, flushed and fsynced, then renamed into place, so a
reader sees either the old state or the complete new file, never half of one — including after
``kill -9``. A writer refuses to replace an existing user output unless ``overwrite=True``.

Temporary names are ``.<name>.pid<PID>-<random>.tmp`` beside the target. A process killed with
``kill -9`` cannot clean up after itself, so the next write to the same target removes the
temporaries of writers that are no longer running (:func:`sweep_stale`); a replaced folder parked
as ``.<name>.old-<PID>`` by a writer killed mid-swap is put back when the target is missing.
Files and folders are created with the permissions the umask allows (``0o666``/``0o777`` minus
the umask), as ``open``/``mkdir`` would, not ``tempfile``'s private ``0o600``/``0o700``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from embed_kd.errors import ArtifactError, EmbedKDError


def refuse_existing(path: str | os.PathLike, overwrite: bool, flag: str = "--overwrite") -> None:
    """Raise a clear error when ``path`` exists and ``overwrite`` is False."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise EmbedKDError(f"{p}: already exists; refusing to overwrite it (pass {flag} to replace it)")


def check_writable(path: str | os.PathLike) -> None:
    """Fail now, not after an hour of work, when ``path`` could not be written: its nearest existing
    ancestor must be a writable folder. Creates nothing.

    >>> import tempfile
    >>> f = tempfile.NamedTemporaryFile()
    >>> check_writable(f"{f.name}/runs/x.json")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    embed_kd.errors.ArtifactError: /...: is not a folder, so /.../runs/x.json cannot be written
    """
    target = Path(path)
    p = target.absolute().parent
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise ArtifactError(f"{p}: is not a folder, so {target} cannot be written")
    if not os.access(p, os.W_OK):
        raise ArtifactError(f"{p}: output folder is not writable (for {target})")


def _check_parent(path: Path) -> None:
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(f"{parent}: cannot create the output folder ({exc.strerror})") from None
    if not os.access(parent, os.W_OK):
        raise ArtifactError(f"{parent}: output folder is not writable")


def current_umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_umask = current_umask


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.pid{os.getpid()}-"


def _pid_running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True


def sweep_stale(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of earlier writers of ``path`` that are no longer running.

    Also puts back ``path`` from a ``.<name>.old-<PID>`` sibling when a writer was killed between
    parking the old folder and renaming the new one in (or removes that sibling when ``path``
    exists). Returns what was removed or restored.
    """
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        return []
    tmp_re = re.compile(rf"^\.{re.escape(path.name)}\.pid(\d+)-[^/]*\.tmp$")
    old_re = re.compile(rf"^\.{re.escape(path.name)}\.old-(\d+)$")
    done = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return []
    for p in entries:
        m = tmp_re.match(p.name) or old_re.match(p.name)
        if not m or _pid_running(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            if m.re is old_re and not path.exists():
                os.replace(p, path)
            elif p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            done.append(p)
    return done


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> Path:
    path = Path(path)
    if not overwrite:
        refuse_existing(path, overwrite)
    _check_parent(path)
    sweep_stale(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=".tmp")
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot create a file in {path.parent} ({exc.strerror or exc})") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ArtifactError(f"{path}: write failed ({exc.strerror or exc})") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, overwrite: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, overwrite: bool = True) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n",
                             overwrite=overwrite)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, *, overwrite: bool = True, encoding: str = "utf-8") -> Iterator[Any]:
    """A text file written piece by piece (bounded memory) that appears whole at ``path`` or not at all.

    The block writes to a temporary sibling; it is fsynced and renamed into place when the block
    succeeds, removed when it raises.
    """
    path = Path(path)
    if not overwrite:
        refuse_existing(path, overwrite)
    _check_parent(path)
    sweep_stale(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=".tmp")
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot create a file in {path.parent} ({exc.strerror or exc})") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding=encoding, newline="") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ArtifactError(f"{path}: write failed ({exc.strerror or exc})") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder in a temporary sibling and rename it into place when the block succeeds.

    On error (or interruption) the temporary folder is removed and ``path`` is untouched.
    """
    path = Path(path)
    if not overwrite:
        refuse_existing(path, overwrite)
    _check_parent(path)
    sweep_stale(path)
    try:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_tmp_prefix(path), suffix=".tmp"))
        os.chmod(tmp, 0o777 & ~_umask())
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot create a folder in {path.parent} ({exc.strerror or exc})") from None
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as exc:  # disk full, read-only file system, permissions: one clear error, nothing left
        shutil.rmtree(tmp, ignore_errors=True)
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        raise ArtifactError(f"{path}: writing failed{where}: {exc.strerror or exc}; nothing was written") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{p}: {what} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{p}: {what} is not valid JSON ({exc})") from None
