"""Readiness of a TorchServe: every model has a live worker, asked of the management API's describe-model.

TorchServe's ``/ping`` says ``Healthy`` while the frontend runs, even while a model has no worker (one died and
its replacement is still loading): right for liveness, wrong for readiness. A model is *ready* here when its
default version has at least one worker in state ``READY``; a server is ready when every model asked for is.

``python -m licsearch.serving.readiness`` is the probe of the Kubernetes readinessProbe and the compose
healthcheck: it prints one JSON line and exits 0 when ready, 1 when not (the management API unreachable included).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Readiness:
    """The answer of one check.

    Attributes:
        ready: every model has a live worker.
        workers: live (``READY``) workers per model; None where the model could not be described.
        problem: why it is not ready; empty when it is.
    """

    ready: bool
    workers: dict[str, int | None]
    problem: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"ready": self.ready, "workers": self.workers, "problem": self.problem}


def get_json(url: str, token: str | None = None, timeout_s: float = PROBE_TIMEOUT_S) -> object:
    """GET ``url`` as JSON; None when unreachable, refused or not JSON."""
    req = urllib.request.Request(url)  # noqa: S310 (callers pass the server's own http(s) addresses)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None


def live_workers(management_url: str, model: str, token: str | None = None) -> int | None:
    """``READY`` workers of ``model``'s default version; None when the model cannot be described."""
    doc = get_json(f"{management_url.rstrip('/')}/models/{model}", token)
    if not isinstance(doc, list):
        return None
    workers = [w for d in doc if isinstance(d, dict) for w in d.get("workers") or [] if isinstance(w, dict)]
    return sum(w.get("status") == "READY" for w in workers)


def registered_models(management_url: str, token: str | None = None) -> list[str] | None:
    """The model names the server has registered; None when the management API does not answer."""
    doc = get_json(f"{management_url.rstrip('/')}/models?limit=1000", token)
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list):
        return None
    return sorted({str(m.get("modelName")) for m in doc["models"] if isinstance(m, dict)})


def check(management_url: str, models: Sequence[str] = (), *, token: str | None = None) -> Readiness:
    """Whether every one of ``models`` (default: every registered model) has a live worker."""
    names = list(models) or registered_models(management_url, token)
    if names is None:
        return Readiness(False, {}, f"the management API at {management_url} does not answer")
    if not names:
        return Readiness(False, {}, "no model is registered")
    workers = {m: live_workers(management_url, m, token) for m in names}
    missing = [m for m, n in workers.items() if n is None]
    idle = [m for m, n in workers.items() if n == 0]
    if missing:
        return Readiness(False, workers, f"cannot describe model(s) {', '.join(missing)}")
    if idle:
        return Readiness(False, workers, f"no live worker for {', '.join(idle)}")
    return Readiness(True, workers)


def management_token(key_file: Path) -> str | None:
    """The management key from TorchServe's ``key_file.json`` (token authorization on), else None."""
    try:
        doc = json.loads(key_file.read_text(encoding="utf-8"))
        return str(doc["management"]["key"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m licsearch.serving.readiness", description=__doc__.split("\n")[0])
    parser.add_argument("--management", default="http://127.0.0.1:8081", help="TorchServe's management address")
    parser.add_argument("--models", default="", help="comma-separated model names (default: every registered one)")
    parser.add_argument(
        "--key-file",
        default="key_file.json",
        help="TorchServe's key file, read for the management token when it exists (default: ./key_file.json)",
    )
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m.strip()]
    result = check(args.management, models, token=management_token(Path(args.key_file)))
    print(json.dumps(result.to_dict()))
    return 0 if result.ready else 1


if __name__ == "__main__":
    sys.exit(main())
