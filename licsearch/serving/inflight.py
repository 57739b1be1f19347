"""Requests a worker was answering when it died, counted by the next worker of the same model.

When a worker process dies (a crash, a SIGKILL, the OOM killer), TorchServe's frontend itself answers the requests
of the batch in hand with 500 (or 507) "Worker died."; the handler never replies, so ``licsearch_requests_total``
would miss them. So each worker journals the request ids of its batch (one small file per worker, replaced per
batch, removed once the batch is answered), and a worker starting for the same model archive counts the journals of
workers that are gone as requests answered with status 500 and error type ``WorkerDied``, then removes them.

The count is exact but for two windows of a few microseconds around each batch: a worker killed after the frontend
sent it a batch but before the journal is written (missed), or after the journal is removed but before the
frontend read the replies (counted twice: answered and died).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

WORKER_DIED = "WorkerDied"
"""The ``error_type`` label of requests whose worker died under them."""

WORKER_DIED_STATUS = 500
"""The status they are counted with: TorchServe's frontend answers them "Worker died." with 500, or with 507 when it
has already seen the worker exit with code 137 (a SIGKILL, which it takes for the OOM killer); which of the two
depends on that race, so both are counted as 500."""

JOURNAL_DIR = ".licsearch-inflight"
"""The journals' folder inside the model's extracted archive (shared by its workers, kept across restarts)."""


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie, exited but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class InflightJournal:
    """The request ids a worker is answering, on disk, so that they outlive the worker.

    Args:
        directory: the journals' folder, shared by every worker of one model archive.
        pid: this worker's process id.
    """

    def __init__(self, directory: Path, pid: int | None = None) -> None:
        self.directory = directory
        self.pid = pid if pid is not None else os.getpid()
        self.path = directory / f"{self.pid}.json"
        self.enabled = True
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self._disable(e)

    def begin(self, request_ids: Sequence[str | None]) -> None:
        """Records the batch now in hand (replacing the previous one)."""
        if not self.enabled:
            return
        tmp = self.directory / f".{self.pid}.tmp"
        try:
            tmp.write_text(json.dumps({"requests": [r or "" for r in request_ids]}), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as e:
            self._disable(e)

    def end(self) -> None:
        """The batch is answered."""
        if self.enabled:
            self.path.unlink(missing_ok=True)

    def orphans(self) -> list[str]:
        """Request ids journalled by workers that are gone; each journal is claimed by one worker only."""
        if not self.enabled:
            return []
        found: list[str] = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                pid = int(path.stem)
            except ValueError:
                continue
            if pid == self.pid or pid_alive(pid):
                continue
            claimed = self.directory / f".{path.stem}.claimed-by-{self.pid}"
            try:
                os.rename(path, claimed)  # atomic: of two workers starting at once, one wins
            except OSError:
                continue
            try:
                doc = json.loads(claimed.read_text(encoding="utf-8"))
                found += [str(r) for r in doc.get("requests", [])]
            except (OSError, ValueError, AttributeError):
                logger.warning("unreadable in-flight journal %s of worker %d", claimed, pid)
            claimed.unlink(missing_ok=True)
        return found

    def _disable(self, error: OSError) -> None:
        self.enabled = False
        logger.warning(
            "cannot journal in-flight requests in %s (%s): a dead worker's requests go uncounted", self.directory, error
        )
