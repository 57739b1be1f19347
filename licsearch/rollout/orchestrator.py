"""``licsearch rollout --candidate BUNDLE``: one journalled pass from the live default to a promoted candidate.

Steps (each journalled, idempotent, and skipped on a rerun once done):

1. ``discover``: the live default version of encode, decode and embed (management API), and its bundle
   (:mod:`licsearch.rollout.bundles`).
2. ``gate``: the parity gate (:func:`licsearch.release.gate.run_gate`) of the candidate against the live bundle on
   the replay images. Passed: the candidate shares the live embedding space. Failed: it is a different space and
   is rejected, unless ``--store DIR`` is given (then step ``space`` builds the candidate's space in that store
   with :func:`licsearch.ops.reindex.reindex`, the candidate keeps its own space id, and the store's queries
   switch to that space at promotion).
3. ``archive``: a staged copy of the candidate (live space id when the gate passed) archived as
   ``<model>-<version>.mar`` in the model store.
4. ``register``: each model's new version registered next to the live one with its own workers.
5. ``canary``: :func:`licsearch.rollout.canary.run_canary` against both versions; with ``--canary PERCENT`` that
   share of ``licsearch`` client traffic goes to the candidate meanwhile (:mod:`licsearch.serving.routing`).
6. ``promote`` (every check passed: set-default, decode first, then embed, then encode) or ``cleanup`` (the
   candidate is unregistered, its archives removed; the live default is never touched).

A refused candidate (damaged bundle, gate failure, a handler that cannot load, a failed canary) ends in
``cleanup`` with outcome ``rejected`` and the reasons. An unreachable server stops the run where it is: the
journal keeps the step as ``failed`` with the error, ``--status`` shows it, and the same command run again
continues from there (``--rollback`` undoes it instead).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError, LicsearchError, StoreError
from ..faults import crash_point
from ..release.gate import GateThresholds
from ..serving.client import NO_RETRY, ServerUnavailable, ServingClient
from ..serving.routing import ROUTING_FILE, clear_routing, write_routing
from ..spaces import ACTIVE, COMPLETE, fork_space_id
from . import bundles
from .canary import MODELS, CanaryThresholds, run_canary, worker_died
from .management import ManagementClient, ManagementRefused, ManagementUnavailable
from .metrics import write_metrics
from .operation import PROMOTE_ORDER, RETRY_HINT, Hooks, Rejected, new_operation, report, run_step, undo
from .state import Journal, Operation, locked

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class RolloutOptions:
    """Everything one rollout needs (``licsearch rollout`` flags).

    Attributes:
        candidate: the candidate bundle.
        model_store: the server's model store (where the archives go).
        state_dir: journal, staged bundles, routing file and metrics textfile.
        server, management: inference and management addresses.
        token, management_token: keys for token authorization.
        version: the candidate's version (default: from its manifest, e.g. ``int8-1a2b3c4d``).
        live_bundle: the live version's bundle, when neither the journal nor the live archive has it.
        replay: the replay images (gate and canary).
        canary_percent, canary_window_s: share of client traffic routed to the candidate, and for how long
            after the replay (then the workers are checked again).
        gate, canary: thresholds.
        store: a store whose embedding space may be rebuilt for a candidate that fails the gate.
        handlers: handler modules to archive (default: the checkout's).
        workers: workers per model for the candidate.
        startup_timeout_s: how long TorchServe waits for a candidate worker to load (its ``startupTimeout``).
        pushgateway: Prometheus Pushgateway URL.
    """

    candidate: Path
    model_store: Path
    state_dir: Path
    server: str
    management: str
    replay: list[np.ndarray]
    token: str | None = None
    management_token: str | None = None
    version: str | None = None
    live_bundle: Path | None = None
    canary_percent: float = 0.0
    canary_window_s: float = 0.0
    gate: GateThresholds = field(default_factory=GateThresholds)
    canary: CanaryThresholds = field(default_factory=CanaryThresholds)
    store: Path | None = None
    handlers: Path | None = None
    workers: int = 1
    startup_timeout_s: int = 300
    pushgateway: str | None = None


class _Run:
    def __init__(self, opts: RolloutOptions, journal: Journal, op: Operation, hooks: Hooks) -> None:
        self.opts, self.journal, self.op, self.hooks = opts, journal, op, hooks
        self.mgmt = ManagementClient(opts.management, token=opts.management_token)
        # Each canary request is sent once: a retry would hide the candidate's failures from the comparison (a dead
        # worker is also caught by watching worker pids) and resend a request that may itself kill a worker.
        self.client = ServingClient(opts.server, token=opts.token, retry=NO_RETRY)
        self.version: str = op.candidate_version

    # -- journal plumbing ----------------------------------------------------------------------------------

    def step(self, name: str, fn: Callable[[], Any]) -> None:
        run_step(self.journal, self.op, name, fn, self.hooks.log, on_start=self.metrics)

    def metrics(self) -> None:
        write_metrics(self.opts.state_dir, self.journal.doc, pushgateway=self.opts.pushgateway, log=self.hooks.log)

    @property
    def rejected(self) -> bool:
        return self.op.decision == "reject"

    # -- steps ---------------------------------------------------------------------------------------------

    def discover(self) -> dict[str, Any]:
        described = {m: self.mgmt.default_version(m) for m in MODELS}
        live = {m: d.version for m, d in described.items()}
        if len(set(live.values())) != 1:
            raise InputError(
                f"the live default versions differ: {live}",
                hint="finish or roll back the earlier rollout (`licsearch rollout --status`) before starting another",
            )
        version = live["encode"]
        if version == self.version:
            raise InputError(f"version {version} is the live default already", hint="nothing to roll out")
        self.op.live = live
        self.op.live_version = version
        rec = self.journal.doc["versions"].get(version)
        path = Path(rec["bundle"]) if rec else None
        if self.opts.live_bundle is not None:
            path = self.opts.live_bundle.resolve()
            self.journal.doc["versions"][version] = _record(path, path, {m: d.url for m, d in described.items()})
        elif path is None or not bundles.staged_ok(path, rec["space_id"]):
            mar = self.opts.model_store / described["encode"].url
            path = bundles.extract_bundle(mar, version, self.opts.state_dir / "bundles" / version)
            self.journal.doc["versions"][version] = _record(path, mar, {m: d.url for m, d in described.items()})
        self.op.live_bundle = str(path)
        stack = self.journal.doc["stack"]
        if not stack or stack[-1] != version:
            self.journal.push_default(version, "discovered")
        return {"live": version, "live_bundle": str(path)}

    def gate(self) -> dict[str, Any]:
        from ..bundle.runtime import BundleModelSet
        from ..release.gate import run_gate

        try:
            ref = BundleModelSet(Path(_known(self.op.live_bundle, "live bundle")))
            cand = BundleModelSet(self.opts.candidate)
            rep = run_gate(ref, cand, self.opts.replay, thresholds=self.opts.gate)
        except LicsearchError as e:
            raise Rejected(f"the candidate bundle cannot be used: {e}") from e
        self.op.gate = rep.to_dict()
        self.op.live_space = ref.space_id
        if rep.passed:
            self.op.space_id = ref.space_id
            return {"passed": True, "space_id": ref.space_id}
        self.journal.count_parity_failures(sorted({f.model for f in rep.failed_checks if f.parity}), self.version)
        own = fork_space_id(ref.space_id, cand.space_id, cand.manifest.files)
        self.op.space_id = own
        reason = "parity gate failed (a different embedding space): " + "; ".join(rep.failures)
        if self.opts.store is None:
            raise Rejected(
                f"{reason}. Not promoted: rebuild the store's embeddings in the candidate's space first "
                f"(`licsearch reindex --store DIR --bundle {self.opts.candidate}`), then roll out with --store DIR"
            )
        return {"passed": False, "failures": rep.failures, "space_id": own}

    def staged(self) -> Path:
        path = self.opts.state_dir / "bundles" / self.version
        space = _known(self.op.space_id, "space id")
        if not bundles.staged_ok(path, space):
            bundles.stage_candidate(self.opts.candidate, path, space)
        return path

    def space(self) -> dict[str, Any]:
        """The candidate's space in ``--store``: built (or completed) from the stored bitstreams."""
        from ..ops.reindex import reindex

        if self.opts.store is None:  # only scheduled with a store
            raise InputError("building a space needs --store DIR")
        rep = reindex(self.opts.store, bundle=self.staged(), progress=False)
        if rep.state not in (COMPLETE, ACTIVE):
            raise Rejected(
                f"space {rep.space_id} in {self.opts.store} is not complete ({rep.failed} points failed)",
                hint=f"see `licsearch reindex --store {self.opts.store} --space {rep.space_id}`",
            )
        return {"space_id": rep.space_id, "state": rep.state, "points": rep.points, "reembedded": rep.reembedded}

    def archive(self) -> dict[str, Any]:
        live_rec = self.journal.doc["versions"][self.op.live_version]
        live_mar = self.opts.model_store / live_rec["archives"]["encode"]
        staged = self.staged()
        settings = bundles.live_settings(live_mar, self.opts.startup_timeout_s)
        try:
            files = bundles.archive_candidate(
                staged, self.opts.model_store, self.version, settings, MODELS, handlers=self.opts.handlers
            )
        except LicsearchError as e:
            raise Rejected(f"the candidate cannot be archived: {e}") from e
        self.journal.doc["versions"][self.version] = _record(staged, self.opts.candidate, files)
        self.op.archived = files
        return {"archives": files}

    def register(self) -> dict[str, Any]:
        """Registers each model's candidate version next to the live one, the three at once (workers load in
        parallel); a version registered before this rollout (same archive) is reused."""
        from concurrent.futures import ThreadPoolExecutor

        reused, todo, earlier = [], [], []
        for m in MODELS:
            existing = self.mgmt.describe(m, self.version)
            if existing is None:
                todo.append(m)
            elif m in self.op.registered:
                earlier.append(m)  # registered by an interrupted run of this rollout: its worker may still load
            elif existing.ready:
                reused.append(m)
            else:
                raise Rejected(f"{m} version {self.version} is registered already without a ready worker")
        # journalled before the calls: a kill during them leaves "maybe registered", which cleanup undoes alike
        self.op.registered += [m for m in todo if m not in self.op.registered]
        self.op.reused = reused
        self.journal.save()

        def one(m: str) -> ManagementRefused | None:
            try:
                self.mgmt.register((self.op.archived or {})[m], m, workers=self.opts.workers)
            except ManagementRefused as e:
                return e
            crash_point("rollout.register.item")
            return None

        with ThreadPoolExecutor(max(1, len(todo))) as pool:
            refused = dict(zip(todo, pool.map(one, todo), strict=True))
        for m, e in refused.items():
            if e is not None:
                raise Rejected(f"{m}: the candidate's handler did not load: {e}")
        for m in earlier:
            self.wait_ready(m)
        return {"registered": todo, "reused": reused, "resumed": earlier}

    def wait_ready(self, model: str, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            d = self.mgmt.describe(model, self.version)
            if d is not None and d.ready:
                return
            if d is None or not d.workers or time.monotonic() > deadline:
                raise Rejected(f"{model}: the candidate's worker did not get ready ({d.workers if d else 'gone'})")
            time.sleep(1.0)

    def canary(self) -> dict[str, Any]:
        same = self.op.space_id == self.op.live_space
        routing = self.opts.state_dir / ROUTING_FILE
        if self.opts.canary_percent > 0 and same:
            write_routing(routing, self.op.id, dict.fromkeys(MODELS, self.version), self.opts.canary_percent,
                          self.opts.canary_window_s)  # fmt: skip
            self.hooks.log(f"rollout: canary: {self.opts.canary_percent:g} % of client traffic goes to {self.version}")
        elif self.opts.canary_percent > 0:
            self.hooks.log("rollout: canary: no client traffic routed (the candidate embeds into another space)")
        try:
            live = _known(self.op.live_version, "live version")
            rep = run_canary(
                self.client, live, self.version, self.opts.replay, same_space=same,
                thresholds=self.opts.canary, worker_pids=self.pids, on_round=self.hooks.on_round,
            )  # fmt: skip
            if self.opts.canary_window_s > 0 and not rep.failures:
                before = self.pids()
                time.sleep(self.opts.canary_window_s)
                after = self.pids()
                rep.failed_checks += [
                    worker_died(m, f"candidate worker died in the canary window ({m}: {before[m]} -> {after[m]})")
                    for m in MODELS
                    if before[m] != after[m]
                ]
        finally:
            clear_routing(routing)
        self.op.canary = rep.to_dict()
        if rep.failures:
            parity = sorted({f.model for f in rep.failed_checks if f.parity})
            if parity:
                self.journal.count_parity_failures(parity, self.version)
            raise Rejected("canary failed: " + "; ".join(rep.failures))
        self.op.decision = "promote"
        return {"passed": True, "latency_ratio": round(rep.latency_ratio, 3)}

    def pids(self) -> dict[str, list[int]]:
        out = {}
        for m in MODELS:
            d = self.mgmt.describe(m, self.version)
            out[m] = d.pids if d is not None and d.ready else []
        return out

    def promote(self) -> dict[str, Any]:
        for m in PROMOTE_ORDER:
            if m not in self.op.switched:
                self.op.switched.append(m)
                self.journal.save()
            if self.mgmt.default_version(m).version != self.version:
                self.mgmt.set_default(m, self.version)
            crash_point("rollout.promote.item")
        if "space" in self.op.done_steps and self.opts.store is not None:
            from ..ops.reindex import reindex

            self.op.store = str(self.opts.store.resolve())
            self.journal.save()
            reindex(self.opts.store, bundle=self.staged(), progress=False, activate=True)  # queries switch now
            self.op.space_activated = True
        self.journal.push_default(self.version, "promoted")
        return {"default": self.version}

    def cleanup(self) -> dict[str, Any]:
        return undo(self.mgmt, self.journal, self.op, self.opts.model_store, self.opts.state_dir)


def run_rollout(opts: RolloutOptions, hooks: Hooks | None = None) -> dict[str, Any]:
    """Runs (or resumes) the rollout of ``opts.candidate``; returns the report (see :func:`report`)."""
    from ..bundle.manifest import Manifest
    from ..serving.archive import default_version

    hooks = hooks or Hooks()
    candidate = opts.candidate.resolve()
    manifest = Manifest.load(candidate)
    version = opts.version or default_version(manifest)
    with locked(opts.state_dir):
        journal = Journal.load(opts.state_dir)
        op = journal.current
        if op is not None and (op.kind != "rollout" or op.candidate_version != version):
            what = f"{op.kind} of {op.candidate_version}"
            raise InputError(f"an unfinished {what} is in {opts.state_dir}", hint=RETRY_HINT)
        if op is None:
            op = new_operation("rollout", str(candidate), version)
            op.version_flag = opts.version
            journal.current = op
            journal.save()
        else:
            op.error = None
            hooks.log(f"rollout: resuming {op.id} at {op.phase}")
        run = _Run(dataclasses.replace(opts, candidate=candidate), journal, op, hooks)
        try:
            run.step("discover", run.discover)
        except LicsearchError:
            journal.current = None  # nothing was done yet: nothing to resume or undo
            journal.save()
            run.metrics()
            raise
        try:
            run.step("gate", run.gate)
            if not run.rejected and op.space_id != op.live_space:
                run.step("space", run.space)
            for name, fn in (("archive", run.archive), ("register", run.register), ("canary", run.canary)):
                if not run.rejected:
                    run.step(name, fn)
            if run.rejected:
                run.step("cleanup", run.cleanup)
                journal.finish(op, "rejected")
            else:
                run.step("promote", run.promote)
                journal.finish(op, "promoted")
        except (ManagementUnavailable, ServerUnavailable, ManagementRefused) as e:
            op.error = {"type": type(e).__name__, "message": str(e)}
            journal.save()
            hooks.log(f"rollout: stopped: {e}; {RETRY_HINT}")
        finally:
            run.metrics()
        return report(op, opts.state_dir)


def _record(bundle: Path, source: Path, archives: dict[str, str]) -> dict[str, Any]:
    from ..bundle.manifest import Manifest

    return {
        "bundle": str(bundle),
        "source": str(source),
        "manifest_sha256": bundles.manifest_digest(bundle),
        "space_id": Manifest.load(bundle).space_id,
        "archives": archives,
    }


def _known(value: str | None, what: str) -> str:
    """A figure an earlier step journalled (every step runs after the ones that set what it reads)."""
    if value is None:
        raise StoreError(f"the journalled rollout has no {what}: the journal is damaged", hint=RETRY_HINT)
    return value
