"""embed-kd: distil cross-encoder and embedding teachers into small, fast query encoders.

Stages (one package each): ``data`` (BEIR loading) → ``candidates`` (BM25 / dense mining) →
``teachers`` (scores on disk) → ``students`` → ``losses`` → ``training`` → ``index``
(embedding cache, FAISS) → ``evaluation`` (pytrec_eval metrics) → ``serve``.

Importing the package does no work: models and data load only when asked.
"""

__version__ = "0.1.0"

from embed_kd.errors import EmbedKDError

__all__ = ["EmbedKDError", "__version__"]
