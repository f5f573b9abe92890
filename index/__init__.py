"""Retrieval index: metrics, re-ranking, FAISS gallery and stores."""
