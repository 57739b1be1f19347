"""Model bundles: the model plane exported once to ONNX (optionally int8) and run by ONNX Runtime.

A bundle directory holds the graphs of the heavy transforms (``g_a``, ``h_a``, ``g_s``), the adapter and the
CLIP text encoder; the codec checkpoint from which the canonical entropy path and the CDF tables are rebuilt
(entropy coding stays in CompressAI's rANS coder); the tokenizer vocabulary; and ``manifest.json``.
"""
