"""Observability tooling: the PromQL that ``deploy/`` ships and a local Prometheus that evaluates it."""
