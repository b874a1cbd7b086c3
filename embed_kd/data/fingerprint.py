"""Content fingerprints: short, stable hashes of what produced an artifact.

A fingerprint is ``sha256`` over the content in a fixed order, written as the first 16 hex digits.
Artifacts store the fingerprints of their inputs, and readers refuse a mismatch.

>>> fingerprint_corpus({"d1": {"title": "", "text": "cats"}})
'119e34618515074c'
>>> fingerprint_queries({"q1": "cat?"}) == fingerprint_queries({"q1": "cat?"})
True
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Mapping


def _hex(h: "hashlib._Hash") -> str:
    return h.hexdigest()[:16]


def fingerprint_texts(items: Iterable[tuple[str, str]]) -> str:
    """Hash ``(id, text)`` pairs in the given order."""
    h = hashlib.sha256()
    for key, text in items:
        h.update(key.encode("utf-8"))
        h.update(b"\x1f")
        h.update(text.encode("utf-8"))
        h.update(b"\x1e")
    return _hex(h)


def fingerprint_corpus(corpus: Mapping[str, Mapping[str, str]]) -> str:
    """Fingerprint of a corpus: ids, titles and texts in corpus order."""
    return fingerprint_texts(
        (doc_id, f"{doc.get('title') or ''}\x1d{doc.get('text') or ''}") for doc_id, doc in corpus.items()
    )


def fingerprint_queries(queries: Mapping[str, str]) -> str:
    return fingerprint_texts(queries.items())


def fingerprint_qrels(qrels: Mapping[str, Mapping[str, int]]) -> str:
    return fingerprint_texts(
        (q, ",".join(f"{d}:{r}" for d, r in sorted(docs.items()))) for q, docs in sorted(qrels.items())
    )


def fingerprint_json(obj: Any) -> str:
    """Fingerprint of a JSON-serialisable config (key order does not matter)."""
    return _hex(hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")))
