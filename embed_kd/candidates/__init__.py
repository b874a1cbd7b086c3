"""Stage — candidates: lexical (BM25) and dense (FAISS) retrieval of candidate documents per query."""
