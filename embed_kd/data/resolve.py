"""Turn ``--data`` (a folder or a BEIR dataset name) into a local BEIR folder.

Resolution order for a name such as ``scifact``:

1. an existing folder path is used as it is;
2. every root in ``$EMBED_KD_DATA`` (``os.pathsep``-separated), as ``ROOT/beir/NAME`` then
   ``ROOT/NAME``;
3. the download cache ``$EMBED_KD_CACHE/beir/NAME`` (default ``~/.cache/embed_kd``);
4. BEIR's public download URL (``BEIR_URL``), unzipped atomically into the cache.

When nothing works (for example offline) the error lists every place tried.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from embed_kd.errors import DataError

logger = logging.getLogger(__name__)

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def cache_root() -> Path:
    """Root of embed-kd's caches (``$EMBED_KD_CACHE``, default ``~/.cache/embed_kd``)."""
    return Path(os.environ.get("EMBED_KD_CACHE") or Path.home() / ".cache" / "embed_kd")


def data_roots() -> list[Path]:
    return [Path(p) for p in os.environ.get("EMBED_KD_DATA", "").split(os.pathsep) if p]


def _is_beir_folder(p: Path) -> bool:
    return any((p / f).is_file() for f in ("corpus.jsonl", "corpus.jsonl.gz")) and any(
        (p / f).is_file() for f in ("queries.jsonl", "queries.jsonl.gz"))


def resolve_dataset(spec: str | os.PathLike, *, download: bool = True) -> Path:
    """Return a local BEIR folder for ``spec`` (a path or a dataset name)."""
    spec_path = Path(spec).expanduser()
    if spec_path.is_dir():
        if not _is_beir_folder(spec_path):
            raise DataError(f"{spec_path}: not a BEIR folder (needs corpus.jsonl and queries.jsonl)")
        return spec_path
    name = str(spec)
    if not _NAME.match(name):
        raise DataError(f"--data {name}: no such folder, and not a dataset name")
    tried: list[str] = []
    for root in data_roots():
        for cand in (root / "beir" / name, root / name):
            if _is_beir_folder(cand):
                return cand
            tried.append(str(cand))
    cached = cache_root() / "beir" / name
    if _is_beir_folder(cached):
        return cached
    tried.append(str(cached))
    url = BEIR_URL.format(name=name)
    if download:
        try:
            return _download(name, url, cached)
        except (urllib.error.URLError, OSError, zipfile.BadZipFile) as exc:
            tried.append(f"{url} ({exc.__class__.__name__}: {getattr(exc, 'reason', exc)})")
    else:
        tried.append(f"{url} (download disabled)")
    raise DataError(
        f"dataset '{name}' not found; tried: " + "; ".join(tried)
        + ". Set EMBED_KD_DATA to a folder holding beir/<name>, or pass --data PATH."
    )


def _download(name: str, url: str, target: Path) -> Path:
    from tqdm.auto import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        zpath = Path(tmp) / f"{name}.zip"
        logger.info("downloading %s", url)
        with urllib.request.urlopen(url, timeout=30) as resp, zpath.open("wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {name}") as bar:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
        with zipfile.ZipFile(zpath) as zf:
            zf.extractall(tmp)
        extracted = Path(tmp) / name
        if not _is_beir_folder(extracted):
            raise zipfile.BadZipFile(f"{url} did not contain {name}/corpus.jsonl")
        if target.exists():  # another process won the race
            return target
        os.replace(extracted, target)
    return target
