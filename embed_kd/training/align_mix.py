"""Alignment texts from several sources, mixed by declared weights (``examples.align_texts``).

The alignment loss (LEAF / EmbedDistill) pulls the student's embedding of a text onto the
teacher's. Which texts decides what the student keeps: in-domain texts alone make it forget general
language (STSb falls from 0.820 to 0.776 for the SciFact default), so ``align_texts`` declares a mix::

    align_texts: [corpus, queries]                       # the old form: every text of each, unweighted
    align_texts:                                         # weighted: shares of the alignment examples
      - {source: corpus, weight: 0.5}
      - {source: queries, weight: 0.2}
      - {source: stsb-train, weight: 0.3}
      - {source: "file:data/general.txt", weight: 0.1}   # one text a line (.jsonl: its "text" field)

Sources:

==================  ============================================================================
``corpus``          the training dataset's documents (title + text)
``queries``         its train queries, the dev slice excluded (never another split's queries)
``stsb-train``      the unique sentences of the STS Benchmark *train* split
                    (``$EMBED_KD_DATA/stsb/sts-train.csv``); dev/test are evaluation data and refused
``file:PATH``       a text file of general text, one text a line (blank lines skipped), or a
                    ``.jsonl`` file of ``{"text": ...}`` objects
==================  ============================================================================

Unweighted, every text of every source is used once, in the order listed. Weighted (every entry
has a ``weight`` > 0; mixing weighted and unweighted entries is refused), the alignment set has
``N`` texts — ``examples.max_align_texts``, else the sum of the sources' sizes — and source ``i``
contributes ``round(N · w_i / Σw)`` of them: a seeded shuffle of its texts, cycled when it has
fewer. The trainer shuffles the set, so a batch holds the sources in those proportions on average.
Teacher embeddings of ``stsb-train`` and file texts go through the shared embedding cache.

>>> [(s.name, s.weight) for s in parse_align_texts([{"source": "corpus", "weight": 2}, {"source": "stsb-train",
...                                                  "weight": 1}])]
[('corpus', 2.0), ('stsb-train', 1.0)]
>>> parse_align_texts(["corpus", "stsb-dev"])
Traceback (most recent call last):
...
embed_kd.errors.EmbedKDError: config: examples.align_texts[1] = 'stsb-dev' is an evaluation split; only stsb-train may be trained on
>>> mix_counts([5, 3, 2], [0.5, 0.3, 0.2], 20)
[10, 6, 4]
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embed_kd.data.fingerprint import fingerprint_json
from embed_kd.errors import DataError, EmbedKDError
from embed_kd.index.encoding import query_embeddings

IN_DOMAIN = ("corpus", "queries")
GENERAL = ("stsb-train",)
SOURCES = IN_DOMAIN + GENERAL
FILE_PREFIX = "file:"
_WHERE = "config: examples.align_texts"


@dataclass(frozen=True)
class AlignSource:
    name: str                  # corpus | queries | stsb-train | file:PATH
    weight: float | None = None

    @property
    def path(self) -> Path | None:
        return Path(self.name[len(FILE_PREFIX):]).expanduser() if self.name.startswith(FILE_PREFIX) else None

    @property
    def in_domain(self) -> bool:
        return self.name in IN_DOMAIN


def _check_name(name, where: str) -> str:
    if not isinstance(name, str) or not name:
        raise EmbedKDError(f"{where}: a source is a name ({', '.join(SOURCES)}) or file:PATH, got {name!r}")
    if name in SOURCES or (name.startswith(FILE_PREFIX) and len(name) > len(FILE_PREFIX)):
        return name
    if name.startswith("stsb-"):
        raise EmbedKDError(f"{where} = {name!r} is an evaluation split; only stsb-train may be trained on")
    raise EmbedKDError(f"{where} = {name!r} is not a known source (known: {', '.join(SOURCES)}, or file:PATH)")


def parse_align_texts(value) -> list[AlignSource]:
    """The declared sources, checked: known names, weights all given (> 0) or none, no duplicates."""
    if not isinstance(value, list):
        raise EmbedKDError(f"{_WHERE} must be a list of sources, got {value!r}")
    out = []
    for i, item in enumerate(value):
        where = f"{_WHERE}[{i}]"
        if isinstance(item, dict):
            unknown = sorted(set(item) - {"source", "weight"})
            if unknown:
                raise EmbedKDError(f"{where}: unknown key(s) {', '.join(map(str, unknown))} (allowed: source, weight)")
            if "source" not in item:
                raise EmbedKDError(f"{where}: needs a source ({', '.join(SOURCES)}, or file:PATH)")
            name = _check_name(item["source"], f"{where}.source")
            w = item.get("weight")
            if w is not None:
                if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0:
                    raise EmbedKDError(f"{where}.weight must be a number > 0, got {w!r}")
                w = float(w)
            out.append(AlignSource(name, w))
        else:
            out.append(AlignSource(_check_name(item, where)))
    weighted = [s.weight is not None for s in out]
    if any(weighted) and not all(weighted):
        raise EmbedKDError(f"{_WHERE}: give every source a weight, or none (unweighted: each text once)")
    names = [s.name for s in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise EmbedKDError(f"{_WHERE}: source {dup[0]!r} is listed twice")
    return out


def general_texts(source: AlignSource) -> list[str]:
    """The texts of a source outside the training dataset (``stsb-train`` or ``file:PATH``)."""
    if source.name == "stsb-train":
        from embed_kd.data.sts import load_sts

        return load_sts("stsb", "train").unique_sentences()
    path = source.path
    if path is None:
        raise EmbedKDError(f"{source.name}: not a general-text source")
    if not path.is_file():
        raise DataError(f"{path}: alignment text file not found ({_WHERE} source {source.name!r})")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    texts = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise DataError(f"{path}:{n}: expected an object with a string \"text\"")
            texts.append(obj["text"])
        else:
            texts.append(line.strip())
    if not texts:
        raise DataError(f"{path}: no texts (one a line)")
    return texts


def mix_counts(sizes: list[int], weights: list[float], total: int) -> list[int]:
    """How many texts each source contributes: ``round(total · w / Σw)`` (largest remainders, so they sum to
    ``total``); a source with texts gets at least one."""
    share = [total * w / sum(weights) for w in weights]
    counts = [int(s) for s in share]
    for i in sorted(range(len(share)), key=lambda i: share[i] - counts[i], reverse=True)[:total - sum(counts)]:
        counts[i] += 1
    return [max(c, 1) if n else 0 for c, n in zip(counts, sizes)]


def _draw(n_avail: int, n: int, rng: random.Random) -> list[int]:
    out: list[int] = []
    while len(out) < n:
        perm = list(range(n_avail))
        rng.shuffle(perm)
        out += perm[:n - len(out)]
    return out


def mix_align(parts: list[tuple[AlignSource, list[str], np.ndarray]], *, max_texts: int | None,
              seed: int) -> tuple[list[str], np.ndarray, dict]:
    """Alignment texts and teacher embeddings from ``(source, texts, embeddings)`` parts (module docstring)."""
    dim = next((e.shape[1] for _, _, e in parts if e.ndim == 2), 0)
    weighted = bool(parts) and parts[0][0].weight is not None
    sizes = [len(t) for _, t, _ in parts]
    stats = []
    texts: list[str] = []
    rows: list[np.ndarray] = []
    if weighted:
        total = max_texts if max_texts is not None else sum(sizes)
        counts = mix_counts(sizes, [s.weight for s, _, _ in parts], total)
        rng = random.Random(seed)
        for (src, t, e), n in zip(parts, counts):
            pick = _draw(len(t), n, rng) if len(t) else []
            texts += [t[i] for i in pick]
            rows.append(e[pick] if pick else np.zeros((0, dim), np.float32))
            stats.append({"source": src.name, "weight": src.weight, "available": len(t), "drawn": len(pick),
                          "fingerprint": fingerprint_json(t)})
    else:
        for src, t, e in parts:
            texts += t
            rows.append(e)
            stats.append({"source": src.name, "weight": None, "available": len(t), "drawn": len(t),
                          "fingerprint": fingerprint_json(t)})
    emb = np.concatenate(rows, axis=0) if rows else np.zeros((0, dim), np.float32)
    if not weighted and max_texts is not None and max_texts < len(texts):  # the old cap: a seeded subset
        keep = sorted(random.Random(seed).sample(range(len(texts)), max_texts))
        owner = np.repeat(np.arange(len(parts)), sizes)[keep]
        for i, st in enumerate(stats):
            st["drawn"] = int((owner == i).sum())
        texts = [texts[i] for i in keep]
        emb = emb[keep]
    for st in stats:
        st["share"] = st["drawn"] / len(texts) if texts else 0.0
    return texts, emb, {"weighted": weighted, "sources": stats}


def source_names(value) -> list[str]:
    """The declared sources' names (``value`` checked as :func:`parse_align_texts` does).

    >>> source_names(["corpus", {"source": "queries", "weight": 1}])
    Traceback (most recent call last):
    ...
    embed_kd.errors.EmbedKDError: config: examples.align_texts: give every source a weight, or none (unweighted: each text once)
    >>> source_names([{"source": "corpus", "weight": 1}, {"source": "queries", "weight": 1}])
    ['corpus', 'queries']
    """
    return [s.name for s in parse_align_texts(value)]


def general_align_embeddings(teacher, value, *, cache, show_progress: bool = True
                             ) -> dict[str, tuple[list[str], np.ndarray]]:
    """``{source: (texts, teacher embeddings)}`` for the declared sources outside the training dataset,
    through the shared embedding cache (keyed by the teacher's and the texts' fingerprints)."""
    out = {}
    for src in parse_align_texts(value):
        if src.in_domain:
            continue
        texts = general_texts(src)
        ids = [f"{src.name}#{i}" for i in range(len(texts))]
        emb = query_embeddings(teacher, dict(zip(ids, texts)), ids, cache=cache, show_progress=show_progress)
        out[src.name] = (texts, emb)
    return out
