"""Data plane: content-addressed bitstreams on disk and embeddings with payload in Qdrant."""
