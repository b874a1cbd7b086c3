"""The files ``eval`` and ``report`` write, as artifacts of the ownership rule (:mod:`embed_kd.io`).

``--overwrite`` replaces an existing output only when it is embed-kd's output of the same kind:

==================  ===================================  ============================================
flag                artifact                             recognised by
==================  ===================================  ============================================
``eval -o``         ``embed-kd/eval@1`` result JSON      its ``"schema"`` field (``embed-kd/mteb@1``
                                                         with ``--mteb``, ``embed-kd/sts@1`` with
                                                         ``--sts`` and no ``--data``)
``--save-run``      a run ``{qid: {doc_id: score}}``     a JSON object of objects of numbers
``--save-weights``  ``embed-kd/ensemble-weights@1``      its ``"schema"`` field
``report --plot``   a PNG that ``report --plot`` drew    the PNG ``Software`` text chunk
                                                         (:data:`PLOT_SOFTWARE`)
==================  ===================================  ============================================

:func:`check_distinct` refuses two flags naming one file before any work is done.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "run.json").write_text('{"q1": {"d1": 0.5, "d2": -1}}')
>>> is_run_file(d / "run.json")
True
>>> _ = (d / "notes.json").write_text('{"q1": "keep me"}')
>>> is_run_file(d / "notes.json")
False
>>> check_distinct({"-o": d / "r.json", "--save-run": d / "./r.json"})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
embed_kd.errors.EmbedKDError: -o and --save-run name the same file (/.../r.json); give each its own path
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

from embed_kd.errors import EmbedKDError
from embed_kd.io import Artifact

#: the ``Software`` text chunk of every PNG ``report --plot`` writes (how a later run recognises it)
PLOT_SOFTWARE = "embed-kd report --plot"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_run_file(path: Path) -> bool:
    """Whether ``path`` holds a run JSON as ``--save-run`` writes it (``{qid: {doc_id: number}}``)."""
    obj = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(obj, dict):
        return False
    for docs in obj.values():
        if not isinstance(docs, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                 for v in docs.values()):
            return False
    return True


def is_plot_file(path: Path) -> bool:
    """Whether ``path`` is a PNG that ``report --plot`` drew (its ``Software`` chunk says so)."""
    with Path(path).open("rb") as fh:
        head = fh.read(1 << 16)
    return head.startswith(PNG_SIGNATURE) and PLOT_SOFTWARE.encode("latin-1") in head


EVAL_RESULT = Artifact("embed-kd/eval@1", None, "eval result")
MTEB_RESULT = Artifact("embed-kd/mteb@1", None, "MTEB result")
STS_RESULT = Artifact("embed-kd/sts@1", None, "STS result")
RUN = Artifact("embed-kd/run", None, "run file (--save-run)", recognise=is_run_file)
ENSEMBLE_WEIGHTS = Artifact("embed-kd/ensemble-weights@1", None, "ensemble-weights file")
PLOT = Artifact("embed-kd/plot", None, "report plot (PNG)", recognise=is_plot_file)


def check_distinct(paths: Mapping[str, str | os.PathLike | None]) -> None:
    """Refuse two output flags naming the same file (``eval -o r.json --save-run r.json``)."""
    seen: dict[str, str] = {}
    for flag, path in paths.items():
        if not path:
            continue
        key = os.path.realpath(os.path.abspath(path))
        if key in seen:
            raise EmbedKDError(f"{seen[key]} and {flag} name the same file ({key}); give each its own path")
        seen[key] = flag
