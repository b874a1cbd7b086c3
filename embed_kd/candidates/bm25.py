"""BM25 retrieval with ``bm25s`` (sparse-matrix BM25) and a Snowball stemmer.

Defaults follow Anserini's BEIR runs: ``k1=0.9``, ``b=0.4``, Lucene's BM25 variant, English
stop words and the Snowball English stemmer (PyStemmer). Documents are ``title + " " + text``.

>>> corpus = {"d1": {"title": "", "text": "cats purr loudly"}, "d2": {"title": "", "text": "dogs bark"}}
>>> bm25 = BM25Retriever.fit(corpus)
>>> list(bm25.retrieve({"q": "a purring cat"}, k=1)["q"])
['d1']
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from embed_kd.data.beir import doc_text
from embed_kd.data.fingerprint import fingerprint_json

logger = logging.getLogger(__name__)


@dataclass
class BM25Config:
    k1: float = 0.9
    b: float = 0.4
    method: str = "lucene"
    stopwords: str = "en"
    stemmer: str = "english"

    def fingerprint(self) -> str:
        return fingerprint_json({"bm25s": self.__dict__})


class BM25Retriever:
    """A fitted BM25 index over a corpus; ``retrieve`` returns TREC-style ``{qid: {doc_id: score}}``."""

    def __init__(self, retriever, doc_ids: list[str], config: BM25Config, stemmer):
        self._retriever = retriever
        self.doc_ids = doc_ids
        self.config = config
        self._stemmer = stemmer

    @classmethod
    def fit(cls, corpus: Mapping[str, Mapping[str, str]], config: BM25Config | None = None,
            show_progress: bool = False) -> "BM25Retriever":
        import bm25s
        import Stemmer

        config = config or BM25Config()
        stemmer = Stemmer.Stemmer(config.stemmer) if config.stemmer else None
        doc_ids = list(corpus)
        tokens = bm25s.tokenize([doc_text(corpus[d]) for d in doc_ids], stopwords=config.stopwords,
                                stemmer=stemmer, show_progress=show_progress)
        retriever = bm25s.BM25(k1=config.k1, b=config.b, method=config.method)
        retriever.index(tokens, show_progress=show_progress)
        return cls(retriever, doc_ids, config, stemmer)

    def retrieve(self, queries: Mapping[str, str], k: int = 100, show_progress: bool = False) -> dict[str, dict[str, float]]:
        import bm25s

        qids = list(queries)
        k = min(k, len(self.doc_ids))
        tokens = bm25s.tokenize([queries[q] for q in qids], stopwords=self.config.stopwords,
                                stemmer=self._stemmer, show_progress=False)
        rows, scores = self._retriever.retrieve(tokens, k=k, show_progress=show_progress, n_threads=1)
        run: dict[str, dict[str, float]] = {}
        for i, q in enumerate(qids):
            # bm25s returns k rows even when fewer documents match; zero scores carry no evidence
            run[q] = {self.doc_ids[int(r)]: float(s) for r, s in zip(rows[i], scores[i]) if s > 0}
        return run

    def score_pairs(self, queries: Mapping[str, str], pairs: dict[str, list[str]]) -> dict[str, dict[str, float]]:
        """BM25 score of given (query, doc) pairs (0.0 when the doc shares no term with the query)."""
        import bm25s

        pos = {d: i for i, d in enumerate(self.doc_ids)}
        out = {}
        for q, docs in pairs.items():
            toks = bm25s.tokenize([queries[q]], stopwords=self.config.stopwords, stemmer=self._stemmer,
                                  show_progress=False, return_ids=False)[0]
            all_scores = self._retriever.get_scores(toks) if toks else np.zeros(len(self.doc_ids))
            out[q] = {d: float(all_scores[pos[d]]) for d in docs}
        return out
