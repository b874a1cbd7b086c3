"""Semantic textual similarity (STS) pairs: the STS Benchmark layout, resolution of ``stsb``.

An STS file is tab-separated, one pair a line, in the STS Benchmark's release layout::

    genre <TAB> file <TAB> years <TAB> id <TAB> score <TAB> sentence1 <TAB> sentence2 [<TAB> extra ...]

``score`` is the human similarity (0–5 in STSb); only the first 7 columns are read (a few STSb
lines carry trailing source columns). A 3-column file ``sentence1 <TAB> sentence2 <TAB> score``
(a user's own pairs) is read too. No header line; blank lines are skipped. A line with another
column count, or a score that is not a number, is refused naming ``file:line``.

``--sts stsb`` (a name, not a path) resolves to ``ROOT/stsb/sts-<split>.csv`` under each root of
``$EMBED_KD_DATA``; any other value is a file path.

>>> import tempfile, os
>>> p = os.path.join(tempfile.mkdtemp(), "pairs.tsv")
>>> _ = open(p, "w").write("g\\tf\\ty\\t1\\t4.0\\tA cat sits.\\tA cat is sitting.\\n"
...                        "a dog runs\\tthe sea\\t0.5\\n")
>>> sts = load_sts(p)
>>> sts.sentences1, sts.scores
(['A cat sits.', 'a dog runs'], [4.0, 0.5])
>>> sts.unique_sentences()
['A cat sits.', 'A cat is sitting.', 'a dog runs', 'the sea']
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from embed_kd.data.fingerprint import fingerprint_texts
from embed_kd.data.resolve import data_roots
from embed_kd.errors import DataError

STS_SPLITS = ("train", "dev", "test")
STSB_NAME = "stsb"


@dataclass
class StsPairs:
    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]
    path: Path
    name: str
    split: str | None

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def fingerprint(self) -> str:
        """Hash of the pairs and their scores, in file order."""
        return fingerprint_texts((f"{s:.6g}", f"{a}\x1d{b}") for a, b, s in
                                 zip(self.sentences1, self.sentences2, self.scores))

    def unique_sentences(self) -> list[str]:
        """Both sides' sentences, first occurrence order, without duplicates."""
        return list(dict.fromkeys(s for pair in zip(self.sentences1, self.sentences2) for s in pair))


def resolve_sts(spec: str | os.PathLike, split: str = "test") -> Path:
    """The STS file for ``spec``: ``stsb`` → ``$EMBED_KD_DATA/stsb/sts-<split>.csv``, else the path itself."""
    if str(spec) == STSB_NAME:
        if split not in STS_SPLITS:
            raise DataError(f"--sts stsb: split {split!r}; STSb has {', '.join(STS_SPLITS)}")
        tried = []
        for root in data_roots():
            cand = root / STSB_NAME / f"sts-{split}.csv"
            if cand.is_file():
                return cand
            tried.append(str(cand))
        raise DataError("STS Benchmark not found; tried: " + ("; ".join(tried) or "no $EMBED_KD_DATA root")
                        + ". Set EMBED_KD_DATA to a folder holding stsb/sts-<split>.csv, or pass --sts FILE.")
    path = Path(spec).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: STS file not found (pass a file, or 'stsb' for the STS Benchmark)")
    return path


def load_sts(spec: str | os.PathLike, split: str = "test") -> StsPairs:
    """Read the pairs of an STS file (see the module docstring); ``spec`` may be ``stsb``."""
    path = resolve_sts(spec, split)
    s1, s2, scores = [], [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) >= 7:
            score, a, b = cols[4], cols[5], cols[6]
        elif len(cols) == 3:
            a, b, score = cols
        else:
            raise DataError(f"{path}:{n}: expected 7 tab-separated columns (genre, file, years, id, score, "
                            f"sentence1, sentence2) or 3 (sentence1, sentence2, score), got {len(cols)}")
        try:
            value = float(score)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise DataError(f"{path}:{n}: score {score!r} is not a finite number")
        s1.append(a.strip())
        s2.append(b.strip())
        scores.append(value)
    if len(scores) < 2:
        raise DataError(f"{path}: needs at least 2 scored pairs for a correlation, found {len(scores)}")
    name = STSB_NAME if str(spec) == STSB_NAME else path.stem
    return StsPairs(s1, s2, scores, path, name, split if str(spec) == STSB_NAME else None)
