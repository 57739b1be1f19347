"""Control plane operations over a store: ingest, search, reindex, spaces, maintenance."""
