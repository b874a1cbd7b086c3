"""Which dataset a training run reads: ``data`` / ``corpus`` / ``queries`` of the config, or the texts of its store.

=====================================  ===================================================================
config                                 dataset
=====================================  ===================================================================
``data: D``                            BEIR folder ``D``, split ``split`` (judged), as always
``data: D`` + ``queries: Q``           ``D``'s corpus, the queries of file ``Q``, no judgments (the dev
                                       slice is then evaluated by loyalty to the teacher)
``corpus: C`` [+ ``queries: Q``]       from files (:mod:`embed_kd.data.inputs`); without queries only
                                       alignment on the corpus texts trains (``losses.score: none``)
``data: D`` + ``corpus: C``            ``D``'s queries and qrels against the corpus ``C``
none of them, ``scores: S``            the texts an import stored in ``S`` (``S/texts/``, e.g. a
                                       ``flag-jsonl`` import), with the store's split
none of them, no ``scores``            an empty dataset, when the run aligns on ``file:`` texts only
                                       (``TrainConfig.alignment_on_files_only``): no dev slice
=====================================  ===================================================================
"""

from __future__ import annotations

import logging
from pathlib import Path

from embed_kd.data.beir import BeirDataset
from embed_kd.data.inputs import load_inputs
from embed_kd.errors import EmbedKDError
from embed_kd.teachers.store import open_scores

logger = logging.getLogger(__name__)


def load_training_dataset(cfg):
    """The :class:`~embed_kd.data.beir.BeirDataset` of ``cfg`` (table above)."""
    if cfg.data or cfg.corpus:
        return load_inputs(data=cfg.data or None, split=cfg.split, corpus=cfg.corpus, queries=cfg.queries)
    if cfg.scores:
        store = open_scores(cfg.scores)
        texts = store.texts_dir
        if texts is not None:
            ds = load_inputs(corpus=texts / "corpus.jsonl", queries=texts / "queries.jsonl",
                             split=store.manifest["dataset"].get("split") or cfg.split)
            ds.name = store.manifest["dataset"].get("name") or ds.name
            ds.path = Path(texts)
            return ds
        raise EmbedKDError(f"{cfg.scores}: the store holds no texts; pass --data (or --corpus / --queries) with the "
                           "dataset its ids refer to")
    if cfg.alignment_on_files_only() and not cfg.queries:
        logger.info("no dataset: aligning on the examples.align_texts files only; no dev slice to evaluate")
        return BeirDataset("align-texts", Path("."), cfg.split, {}, {}, {}, 0,
                           ["no dataset: file alignment texts only"])
    raise EmbedKDError("config: data is required (--data, or --corpus FILE [--queries FILE])")
