"""The model plane over HTTP: the core of the TorchServe handlers in ``handlers/`` and the tools around them.

``request`` parses one request of a batch (raw body or multipart field, headers, content negotiation);
``responses`` turns a result or an error into one reply with its status; ``endpoint`` is the batch loop shared by
the endpoints (a bad item fails only itself); ``encode``, ``decode`` and ``embed`` are the endpoints, named in
``endpoints``; ``timing`` and ``metrics`` measure stages and declare the Prometheus metrics once; ``archive``
packs a bundle into ``.mar`` files; ``server`` starts and stops TorchServe for ``licsearch serve``;
``readiness`` asks whether every model has a live worker; ``inflight`` counts the requests of a worker that died;
``client`` is the model plane over HTTP, with retries.

Nothing here loads a model at import time: a handler loads its bundle in ``initialize``.
"""
