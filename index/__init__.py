"""Retrieval index: metrics, re-ranking, the gallery over a vector index (FAISS kinds and the
registry in ``index.vector_index``), its neighbour graph, snapshots and stores.

Imports go downward only: ``service`` -> ``model`` -> ``index``; nothing here imports those.
"""
