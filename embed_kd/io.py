"""Atomic, non-clobbering writes shared by every artifact writer.

Every file is written to a temporary sibling, flushed and fsynced, then renamed into place, so a
reader sees either the old state or the complete new file, never half of one — including after
``kill -9``. A writer refuses to replace an existing user output unless ``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import json
import os
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


def _check_parent(path: Path) -> None:
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(f"{parent}: cannot create the output folder ({exc.strerror})") from None
    if not os.access(parent, os.W_OK):
        raise ArtifactError(f"{parent}: output folder is not writable")


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> Path:
    path = Path(path)
    if not overwrite:
        refuse_existing(path, overwrite)
    _check_parent(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder in a temporary sibling and rename it into place when the block succeeds.

    On error (or interruption) the temporary folder is removed and ``path`` is untouched.
    """
    path = Path(path)
    if not overwrite:
        refuse_existing(path, overwrite)
    _check_parent(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
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
