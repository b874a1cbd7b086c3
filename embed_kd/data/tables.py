"""Column-oriented inputs: Hugging Face datasets and Parquet files, read in batches with declared columns.

A *table source* is one of:

=================================  ==============================================================
``hf:NAME[:CONFIG][:SPLIT]``        ``datasets.load_dataset(NAME, CONFIG, split=SPLIT)`` (split
                                    default ``train``): the Hub, or the local HF cache when offline
a ``save_to_disk`` folder           ``datasets.load_from_disk`` (a ``DatasetDict`` needs a split:
                                    ``split=NAME`` in the column declarations, default ``train``)
``FILE.parquet`` / a folder of      read with pyarrow, batch by batch
``*.parquet`` files
=================================  ==============================================================

Column names are declared after ``#`` as ``role=column`` pairs, e.g.
``hf:org/queries:default:train#id=query_id,text=query`` or ``data/pairs.parquet#score=ce_score``;
the roles a reader needs (and their default column names) are the reader's own.

>>> parse_source("hf:org/ds:cfg:dev#id=qid,text=q")
('hf:org/ds:cfg:dev', {'id': 'qid', 'text': 'q'})
>>> parse_hf_name("hf:org/ds"), parse_hf_name("hf:org/ds:cfg:dev")
(('org/ds', None, 'train'), ('org/ds', 'cfg', 'dev'))
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from embed_kd.errors import DataError

logger = logging.getLogger(__name__)
_HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def parse_source(text: str) -> tuple[str, dict[str, str]]:
    """Split ``SOURCE#role=col,...`` into the source and its column declarations."""
    base, _, decl = str(text).partition("#")
    cols: dict[str, str] = {}
    for item in filter(None, (x.strip() for x in decl.split(","))):
        role, eq, col = item.partition("=")
        if not eq or not role.strip() or not col.strip():
            raise DataError(f"{text}: column declaration {item!r} is not role=column (e.g. #id=query_id,text=query)")
        cols[role.strip()] = col.strip()
    return base, cols


def parse_hf_name(spec: str) -> tuple[str, str | None, str]:
    """``hf:NAME[:CONFIG][:SPLIT]`` → ``(NAME, CONFIG or None, SPLIT)``."""
    parts = spec.removeprefix("hf:").split(":")
    if not parts[0] or len(parts) > 3:
        raise DataError(f"{spec}: expected hf:NAME[:CONFIG][:SPLIT]")
    name = parts[0]
    config = parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 and parts[2] else "train"
    return name, config, split


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in _HF_MARKERS)


def is_table_source(text: str) -> bool:
    """Whether ``text`` (columns stripped) names a table source rather than a text file."""
    base = parse_source(text)[0]
    if base.startswith("hf:"):
        return True
    p = Path(base)
    return p.suffix.lower() == ".parquet" or is_hf_folder(p) or (p.is_dir() and any(p.glob("*.parquet")))


def _load_hf(base: str, split: str | None):
    import datasets

    if base.startswith("hf:"):
        name, config, hf_split = parse_hf_name(base)
        try:
            return datasets.load_dataset(name, config, split=hf_split)
        except Exception as exc:  # noqa: BLE001 - offline, unknown dataset, bad config: one message
            raise DataError(f"{base}: could not load the Hugging Face dataset ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:300]}); offline, save it once with "
                            "Dataset.save_to_disk and pass that folder instead") from None
    try:
        ds = datasets.load_from_disk(base)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{base}: not a readable datasets folder ({type(exc).__name__}: {exc})") from None
    if isinstance(ds, datasets.DatasetDict):
        want = split or "train"
        if want not in ds:
            raise DataError(f"{base}: a DatasetDict without split {want!r} (splits: {', '.join(ds)}); "
                            "declare one with #split=NAME")
        ds = ds[want]
    return ds


def iter_batches(text: str, *, batch_size: int = 65536) -> Iterator:
    """``pyarrow.RecordBatch`` es of a table source, in row order (memory-mapped / streamed)."""
    import pyarrow.parquet as pq

    base, cols = parse_source(text)
    p = Path(base)
    if not base.startswith("hf:") and not is_hf_folder(p):
        files = sorted(p.glob("*.parquet")) if p.is_dir() else [p]
        if not files or not all(f.is_file() for f in files):
            raise DataError(f"{base}: file not found")
        for f in files:
            try:
                pf = pq.ParquetFile(f)
                yield from pf.iter_batches(batch_size=batch_size)
            except DataError:
                raise
            except Exception as exc:  # noqa: BLE001 - pyarrow's many error types
                raise DataError(f"{f}: not a readable Parquet file ({exc})") from None
        return
    ds = _load_hf(base, cols.get("split"))
    yield from ds.data.to_batches(max_chunksize=batch_size)


def columns_of(text: str) -> list[str]:
    """The column names of a table source (reads its schema, or its first batch)."""
    for batch in iter_batches(text, batch_size=1):
        return list(batch.schema.names)
    return []


def resolve_columns(source: str, available: Sequence[str], declared: Mapping[str, str],
                    defaults: Mapping[str, Sequence[str]], *, optional: Sequence[str] = ()) -> dict[str, str | None]:
    """Map each role to a column: the declared one (must exist) or the first default candidate present.

    >>> resolve_columns("x", ["qid", "query"], {}, {"id": ["_id", "qid"], "text": ["text", "query"]})
    {'id': 'qid', 'text': 'query'}
    """
    out: dict[str, str | None] = {}
    unknown = sorted(set(declared) - set(defaults) - {"split"})
    if unknown:
        raise DataError(f"{source}: unknown column role(s) {unknown} (roles: {', '.join(defaults)})")
    for role, cands in defaults.items():
        if role in declared:
            if declared[role] not in available:
                raise DataError(f"{source}: declared column {role}={declared[role]!r} is not in the data "
                                f"(columns: {', '.join(available)})")
            out[role] = declared[role]
            continue
        found = next((c for c in cands if c in available), None)
        if found is None and role not in optional:
            raise DataError(f"{source}: no column for '{role}' (tried {', '.join(cands)}; columns: "
                            f"{', '.join(available)}); declare it, e.g. #{role}=COLUMN")
        out[role] = found
    return out
