"""Stage — index: the document-embedding cache and FAISS index building/search."""

from embed_kd.index.cache import EmbeddingCache
from embed_kd.index.faiss_index import build_faiss_index, search_index

__all__ = ["EmbeddingCache", "build_faiss_index", "search_index"]
