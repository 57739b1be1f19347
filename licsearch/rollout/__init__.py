"""Versioned rollout of a model bundle on a running TorchServe: gate, canary, promote or roll back, journalled.

``state`` (the journal), ``management`` (TorchServe's management API), ``bundles`` (live and candidate bundles and
archives), ``canary`` (live-vs-candidate comparison on the server), ``routing`` (client traffic share),
``metrics`` (Prometheus textfile and push), ``orchestrator`` (the rollout's steps), ``rollback`` (rollback, status).
"""
