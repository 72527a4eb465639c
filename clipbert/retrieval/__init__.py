"""Retrieval: the embeddings format, the FAISS index, two-stage search, its evaluation and the search service."""
