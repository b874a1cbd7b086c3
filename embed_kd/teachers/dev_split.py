"""A deterministic dev slice carved from the *train* split (never from test).

Ensemble weights and cross-encoder early stopping are chosen on held-out queries. Those queries
must come from training data: a weight tuned on the test split reports a number the method cannot
reach on unseen data. Every caller goes through :func:`carve_dev_slice`, which refuses a split
whose name says it is a test split, so the rule is enforced in one place.

The slice is a pure function of the query ids, ``n_dev`` and ``seed``: a query belongs to the dev
slice when its ``sha256(f"{seed}:{qid}")`` is among the ``n_dev`` smallest. Adding or removing
other queries never moves a query between slices (beyond the cut), and ``train-teacher`` and
``eval --ensemble`` with the same ``(n_dev, seed)`` see the same dev queries, so a cross-encoder
never trains on the queries its ensemble weight is fitted on.

>>> qids = [f"q{i}" for i in range(10)]
>>> train, dev = split_query_ids(qids, n_dev=3, seed=0)
>>> len(train), len(dev), sorted(set(train) & set(dev))
(7, 3, [])
>>> split_query_ids(qids, n_dev=3, seed=0) == (train, dev)   # deterministic
True
"""

from __future__ import annotations

import hashlib
from typing import Iterable

from embed_kd.data.beir import BeirDataset
from embed_kd.errors import EmbedKDError

DEFAULT_DEV_QUERIES = 100
DEFAULT_SEED = 0


def is_test_split(split: str) -> bool:
    """True for ``test`` and names like ``test-small`` / ``scifact_test``."""
    return "test" in split.lower()


def check_fit_split(split: str, what: str = "ensemble weights") -> None:
    """Raise unless ``split`` may be used to fit ``what`` (never a test split)."""
    if is_test_split(split):
        raise EmbedKDError(f"{what} are never fitted on a test split (got split '{split}'); use the train split")


def _key(seed: int, qid: str) -> str:
    return hashlib.sha256(f"{seed}:{qid}".encode("utf-8")).hexdigest()


def split_query_ids(qids: Iterable[str], n_dev: int = DEFAULT_DEV_QUERIES, seed: int = DEFAULT_SEED
                    ) -> tuple[list[str], list[str]]:
    """``(train_ids, dev_ids)``, both in input order; see the module docstring."""
    qids = list(qids)
    if n_dev < 1 or n_dev >= len(qids):
        raise EmbedKDError(f"dev slice of {n_dev} queries needs 1 ≤ n_dev < {len(qids)} (the split's query count)")
    dev = set(sorted(qids, key=lambda q: _key(seed, q))[:n_dev])
    return [q for q in qids if q not in dev], [q for q in qids if q in dev]


def _subset(ds: BeirDataset, qids: list[str], note: str) -> BeirDataset:
    return BeirDataset(ds.name, ds.path, ds.split, ds.corpus, {q: ds.queries[q] for q in qids},
                       {q: ds.qrels[q] for q in qids}, ds.dropped_qrels, ds.notes + [note])


def carve_dev_slice(dataset: BeirDataset, n_dev: int = DEFAULT_DEV_QUERIES, seed: int = DEFAULT_SEED,
                    *, what: str = "ensemble weights") -> tuple[BeirDataset, BeirDataset]:
    """Split a train split into ``(rest, dev)`` datasets sharing the corpus. Refuses a test split."""
    check_fit_split(dataset.split, what)
    train_ids, dev_ids = split_query_ids(list(dataset.qrels), n_dev, seed)
    return (_subset(dataset, train_ids, f"train part (dev slice n_dev={n_dev}, seed={seed} removed)"),
            _subset(dataset, dev_ids, f"dev slice n_dev={n_dev}, seed={seed} of split '{dataset.split}'"))
