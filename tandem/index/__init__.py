"""Sparse (BM25) and dense (FAISS) first-stage retrieval."""
from __future__ import annotations

from tandem.index.bm25 import BM25, BM25Settings, bm25_search
from tandem.index.dense import build_index, dense_search, load_embeddings, load_index_and_encoder, save_embeddings
from tandem.index.faiss_index import DenseIndex, build_faiss

__all__ = ["BM25", "BM25Settings", "DenseIndex", "bm25_search", "build_faiss", "build_index", "dense_search",
           "load_embeddings", "load_index_and_encoder", "save_embeddings"]
