"""Model plane: the learned codec, the multi-scale adapter and the CLIP text encoder (stateless)."""
