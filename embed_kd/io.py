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

**Ownership** (:func:`claim_output`, the one rule every writer follows): an existing output may be
replaced — with ``--overwrite`` — only when embed-kd wrote it *for the same kind of artifact*:

- a folder artifact carries its schema in a marker file (``manifest.json`` of a score store or an
  index, ``embed_kd_train.json`` of a student, ...), and the marker must name this artifact's
  schema (e.g. ``embed-kd/teacher-scores@1``);
- a file artifact is a JSON document whose ``"schema"`` field names it, or a file its
  :class:`Artifact` recognises (an eval run, a triples TSV, a plot PNG);
- an empty folder holds nothing to lose and is always free.

Anything else — a folder without the marker, a marker that is not embed-kd's (``{}`` or another
program's ``manifest.json``), another artifact kind (an index where a score store goes), a file
where a folder goes — is refused **even with** ``--overwrite``, naming what was found.
:func:`atomic_dir` applies the rule itself before it replaces anything.

>>> import tempfile, pathlib, json
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> INDEX = Artifact("embed-kd/index@1", "manifest.json", "index folder")
>>> (root / "app").mkdir(); _ = (root / "app" / "manifest.json").write_text("{}")
>>> claim_output(root / "app", INDEX, overwrite=True)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
embed_kd.errors.ArtifactError: /.../app: was not written by embed-kd as an index folder (its manifest.json has no embed-kd schema); refusing to replace it, even with --overwrite (choose another output, or move it away yourself)
>>> _ = (root / "app" / "manifest.json").write_text(json.dumps({"schema": "embed-kd/index@1"}))
>>> claim_output(root / "app", INDEX, overwrite=True)
True
>>> claim_output(root / "new", INDEX, overwrite=False)
False

Every artifact's provenance uses the same three helpers: :func:`utc_now` (the ``created`` field),
:func:`versions` (the ``versions`` field) and :func:`sha256_file` (file checksums in manifests).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import tempfile
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from embed_kd.errors import ArtifactError, EmbedKDError


@dataclass(frozen=True)
class Artifact:
    """One kind of embed-kd output, and how to recognise an earlier one of the same kind.

    ``schema``: the schema string (``embed-kd/index@1``). ``marker``: for a folder artifact, the
    file inside it whose JSON ``"schema"`` names it; ``None`` for a file artifact. ``what``: a few
    words for messages ("score store"). ``recognise``: for a file artifact without a ``"schema"``
    field (a run JSON, a TSV, a PNG), a check of the existing file's content; for a folder
    artifact, a check used only when the marker is absent (a folder an older version wrote
    without one).
    """

    schema: str
    marker: str | None
    what: str
    recognise: Callable[[Path], bool] | None = None

    @property
    def is_folder(self) -> bool:
        return self.marker is not None


#: the name of an atomic write's temporary (``.<name>.pid<PID>-<random>.tmp``, see :func:`sweep_stale`)
_TEMP_RE = re.compile(r"^\..+\.pid\d+-[^/]*\.tmp$")


def _article(what: str) -> str:
    """'a' or 'an' as the word is spoken; an acronym is spelled out (an STS result, an MTEB result).

    >>> [f"{_article(w)} {w}" for w in ("index folder", "eval result", "STS result", "MTEB result", "BEIR folder")]
    ['an index folder', 'an eval result', 'an STS result', 'an MTEB result', 'a BEIR folder']
    """
    word = what.split(" ", 1)[0]
    if len(word) > 1 and word.isupper():  # letters' names: eff, aitch, el, em, en, ar, ess, ex start with a vowel
        return "an" if word[0] in "AEFHILMNORSX" else "a"
    return "an" if what[:1].lower() in "aeiou" else "a"


def _schema_of(path: Path) -> tuple[str | None, str]:
    """The embed-kd schema a JSON file names, and a description of what it is when it names none."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(64 << 20)
        obj = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None, "is not an embed-kd JSON file"
    schema = obj.get("schema") if isinstance(obj, dict) else None
    if isinstance(schema, str) and schema.startswith("embed-kd/"):
        return schema, ""
    return None, "has no embed-kd schema"


def _other_artifact(folder: Path) -> str | None:
    """The schema of another embed-kd artifact in ``folder`` (its top-level JSON files), for messages."""
    try:
        candidates = sorted(q for q in folder.iterdir() if q.suffix == ".json" and q.is_file())[:20]
    except OSError:
        return None
    for q in candidates:
        schema, _ = _schema_of(q)
        if schema:
            return schema
    return None


def ownership_problem(path: str | os.PathLike, artifact: Artifact) -> str | None:
    """Why the existing ``path`` is not an earlier ``artifact`` (None when it is one, or absent, or
    an empty folder). Reads the marker file only."""
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        return None
    if p.is_symlink():
        return "it is a symbolic link"
    if artifact.is_folder:
        if not p.is_dir():
            return "it is a file, not a folder"
        try:
            if not any(not _TEMP_RE.match(e.name) for e in p.iterdir()):
                return None  # empty, or only the temporaries of a write killed before its first file landed
        except OSError as exc:
            return f"it cannot be listed ({exc.strerror or exc})"
        marker = p / artifact.marker
        if not marker.is_file():
            if artifact.recognise is not None and not marker.exists():
                try:
                    if artifact.recognise(p):
                        return None
                except Exception:  # noqa: BLE001 - not recognised
                    pass
            other = _other_artifact(p)
            return f"it holds an {other} artifact, not {artifact.schema}" if other else f"no {artifact.marker} in it"
        schema, why = _schema_of(marker)
        if schema is None:
            return f"its {artifact.marker} {why}"
        if schema != artifact.schema:
            return f"it holds an {schema} artifact, not {artifact.schema}"
        return None
    if p.is_dir():
        return "it is a folder, not a file"
    if artifact.recognise is not None:
        try:
            ok = bool(artifact.recognise(p))
        except Exception:  # noqa: BLE001 - an unreadable file is simply not recognised
            ok = False
        return None if ok else "its content is not one"
    schema, why = _schema_of(p)
    if schema is None:
        return f"it {why}"
    if schema != artifact.schema:
        return f"it holds an {schema} document, not {artifact.schema}"
    return None


def claim_output(path: str | os.PathLike, artifact: Artifact, *, overwrite: bool, flag: str = "--overwrite") -> bool:
    """The ownership rule (module docstring): may ``path`` be written as ``artifact``?

    Returns True when an earlier ``artifact`` exists and ``overwrite`` allows replacing it, False
    when ``path`` is free (absent, or an empty folder). Raises :class:`ArtifactError` when ``path``
    is not embed-kd's ``artifact`` (whatever ``overwrite`` says), and :class:`EmbedKDError` when
    it is one but ``overwrite`` is False. Writes nothing.
    """
    p = Path(path)
    problem = ownership_problem(p, artifact)
    if problem is not None:
        raise ArtifactError(f"{p}: was not written by embed-kd as {_article(artifact.what)} {artifact.what} "
                            f"({problem}); refusing to replace it, even with {flag} (choose another output, or move "
                            "it away yourself)")
    if not p.exists():
        return False
    if p.is_dir() and not any(not _TEMP_RE.match(e.name) for e in p.iterdir()):
        return False
    if not overwrite:
        raise EmbedKDError(f"{p}: already exists; refusing to overwrite it (pass {flag} to replace it)")
    return True


def remove_owned(path: str | os.PathLike, artifact: Artifact, *, flag: str = "--overwrite") -> bool:
    """Delete ``path`` if it is embed-kd's ``artifact`` (refused otherwise, see :func:`claim_output`).
    Returns whether something was removed."""
    p = Path(path)
    if not claim_output(p, artifact, overwrite=True, flag=flag):
        return False
    if p.is_dir():
        shutil.rmtree(p)
    else:
        p.unlink()
    return True


def refuse_existing(path: str | os.PathLike, overwrite: bool, flag: str = "--overwrite",
                    artifact: Artifact | None = None) -> None:
    """Raise a clear error when ``path`` exists and ``overwrite`` is False; with ``artifact``, apply
    the whole ownership rule (:func:`claim_output`). Without one, an existing folder with content
    is never replaceable (nothing says what it is)."""
    if artifact is not None:
        claim_output(path, artifact, overwrite=overwrite, flag=flag)
        return
    p = Path(path)
    if p.is_dir() and not p.is_symlink() and any(p.iterdir()):
        raise ArtifactError(f"{p}: exists and is a folder embed-kd cannot identify; refusing to replace it, even "
                            f"with {flag} (choose another output, or move it away yourself)")
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
    with _atomic_file(path, overwrite=overwrite, mode="wb") as fh:
        fh.write(data)
    return Path(path)


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
    with _atomic_file(path, overwrite=overwrite, mode="w", encoding=encoding, newline="") as fh:
        yield fh


@contextlib.contextmanager
def _atomic_file(path: str | os.PathLike, *, overwrite: bool, mode: str, **open_kwargs) -> Iterator[Any]:
    """The one atomic file writer: a temporary sibling (umask permissions), fsynced and renamed into
    place when the block succeeds; removed, and one :class:`ArtifactError` for an OS error, when it fails."""
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
        with os.fdopen(fd, mode, **open_kwargs) as fh:
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
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False, artifact: Artifact | None = None
               ) -> Iterator[Path]:
    """Build a folder in a temporary sibling and rename it into place when the block succeeds.

    On error (or interruption) the temporary folder is removed and ``path`` is untouched. An
    existing ``path`` is replaced only under the ownership rule (:func:`claim_output` with
    ``artifact``; without ``artifact`` only an empty folder is replaced).
    """
    path = Path(path)
    _check_parent(path)
    sweep_stale(path)  # first: it may put back a folder parked by a writer killed mid-swap
    refuse_existing(path, overwrite, artifact=artifact)
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


def utc_now() -> str:
    """The ``created`` timestamp of every artifact: ISO-8601 UTC to the second.

    >>> import re; bool(re.fullmatch(r"\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\dZ", utc_now()))
    True
    """
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB blocks.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x"; _ = p.write_bytes(b"abc")
    >>> sha256_file(p)[:16]
    'ba7816bf8f01cfea'
    """
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def versions() -> dict:
    """The ``versions`` field of every artifact: Python and the installed versions of embed-kd and
    the libraries whose versions change its outputs (absent when not installed).

    >>> sorted(k for k in versions() if k in ("python", "embed_kd"))
    ['embed_kd', 'python']
    """
    return {"python": platform.python_version(),
            **package_versions("embed-kd", "sentence-transformers", "torch", "faiss-cpu", "transformers")}


def package_versions(*packages: str) -> dict:
    """``{name_with_underscores: version}`` of those ``packages`` that are installed.

    >>> package_versions("embed-kd", "surely-not-installed-xyz").keys()
    dict_keys(['embed_kd'])
    """
    import importlib.metadata as md

    out = {}
    for pkg in packages:
        try:
            out[pkg.replace("-", "_")] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out
