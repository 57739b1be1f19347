"""Control plane operations over a store: ingest, search, retrieval, maintenance."""
