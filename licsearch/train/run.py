"""A training run's output folder: checkpoints that resume exactly, a JSONL log and a provenance record.

Layout of ``OUT``::

    checkpoint/weights.safetensors   tensors of the trainable modules, names prefixed by the module's name
    checkpoint/optimizer.pt          optimizer and RNG states: torch.save of tensors and plain containers only,
                                     read back with weights_only=True (no pickled code runs)
    checkpoint/state.json            step, options, cumulative training seconds, last metrics
    log.jsonl                        one JSON object per logged step, and one per evaluation
    provenance.json                  data, options, command line, hardware, versions, final metrics, outputs
    *.safetensors                    the trained weights, usable as ``--codec-weights`` etc.

A checkpoint is written to a temporary folder and swapped in by renames, so a run killed at any moment leaves
the previous checkpoint or the new one. Data order and augmentations are a function of (seed, step) (see
:mod:`.data`) and the RNG states are restored, so a resumed run continues as the uninterrupted one would.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from ..fsutil import atomic_write, fsync_dir
from ..model.weights import load_state_dict_file, save_state_dict, state_dict_sha256

if TYPE_CHECKING:
    import torch
    from torch import nn

CHECKPOINT = "checkpoint"
LOG_FILE = "log.jsonl"
PROVENANCE_FILE = "provenance.json"


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint holds.

    Attributes:
        step: the number of optimisation steps done.
        state: the JSON state (options, seconds, metrics).
        tensors: the modules' tensors, names prefixed by ``<module name>.``.
        extra: optimizer states by name (``optimizers``) and RNG states (``rng``).
    """

    step: int
    state: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    extra: dict[str, Any]

    def restore(self, modules: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer]) -> None:
        """Loads module weights, optimizer states and RNG states in place."""
        import torch

        for name, module in modules.items():
            prefix = f"{name}."
            module.load_state_dict({k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)})
        for name, opt in optimizers.items():
            opt.load_state_dict(self.extra["optimizers"][name])
        rng = self.extra.get("rng", {})
        if "cpu" in rng:
            torch.set_rng_state(rng["cpu"])
        if rng.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])


class RunDir:
    """The output folder of one training run.

    Args:
        root: the folder (``--out``); created when missing.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.log_path = self.root / LOG_FILE

    def prepare(self, *, resume: bool, identity: Mapping[str, Any]) -> Checkpoint | None:
        """Creates the folder and returns the checkpoint to resume from, if any.

        Args:
            resume: continue from the folder's checkpoint (when there is none, start from step 0).
            identity: options that must be equal to resume (model shapes, data); checked against the checkpoint.
        """
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"{self.root} is a file", hint="pass a folder as --out")
        self.root.mkdir(parents=True, exist_ok=True)
        ck = self.load_checkpoint()
        if ck is not None and not resume:
            raise InputError(
                f"{self.root} holds a checkpoint at step {ck.step}",
                hint="pass --resume to continue it, or choose another --out",
            )
        if ck is None:
            self.log_path.unlink(missing_ok=True)
            return None
        saved = ck.state.get("identity", {})
        diff = sorted(k for k in identity if k in saved and saved[k] != _jsonable(identity[k]))
        if diff:
            raise InputError(
                f"cannot resume {self.root}: {', '.join(f'{k} was {saved[k]!r}' for k in diff)}",
                hint="resume with the options of the checkpoint, or choose another --out",
            )
        self._truncate_log(ck.step)
        return ck

    # -- checkpoints ----------------------------------------------------------------------------------------

    def save_checkpoint(
        self,
        step: int,
        modules: Mapping[str, nn.Module],
        optimizers: Mapping[str, torch.optim.Optimizer],
        state: Mapping[str, Any],
    ) -> None:
        """Writes the checkpoint for ``step`` (replacing the previous one atomically)."""
        import torch

        tmp, final, old = self.root / f".{CHECKPOINT}.tmp", self.root / CHECKPOINT, self.root / f".{CHECKPOINT}.old"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        tensors = {f"{n}.{k}": v for n, m in modules.items() for k, v in m.state_dict().items()}
        save_state_dict(tensors, tmp / "weights.safetensors")
        rng: dict[str, Any] = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        extra = {"optimizers": {n: o.state_dict() for n, o in optimizers.items()}, "rng": rng}
        torch.save(extra, tmp / "optimizer.pt")
        doc = {**_jsonable(dict(state)), "step": step, "saved_at": time.time()}
        (tmp / "state.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        fsync_dir(tmp)
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        fsync_dir(self.root)
        shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self) -> Checkpoint | None:
        """The last complete checkpoint (also one left behind by a run killed between the two renames)."""
        import torch

        for folder in (self.root / CHECKPOINT, self.root / f".{CHECKPOINT}.old"):
            if not (folder / "state.json").is_file():
                continue
            state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
            tensors = load_state_dict_file(folder / "weights.safetensors", what="checkpoint")
            extra = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
            return Checkpoint(step=int(state["step"]), state=state, tensors=tensors, extra=extra)
        return None

    # -- log and provenance ---------------------------------------------------------------------------------

    def log(self, record: Mapping[str, Any]) -> None:
        """Appends one JSON line to ``log.jsonl``."""
        with self.log_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(_jsonable(dict(record)), sort_keys=True) + "\n")

    def read_log(self) -> list[dict[str, Any]]:
        if not self.log_path.is_file():
            return []
        return [json.loads(line) for line in self.log_path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def _truncate_log(self, step: int) -> None:
        """Drops lines past ``step``: they came from steps the resumed run will do again."""
        kept = [r for r in self.read_log() if int(r.get("step", 0)) <= step]
        self.log_path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept), encoding="utf-8")

    def save_weights(self, name: str, state: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> dict[str, str]:
        """Writes ``OUT/name`` as safetensors; returns its path and weights fingerprint for the provenance."""
        path = self.root / name
        save_state_dict(state, path, {k: str(v) for k, v in metadata.items()})
        return {"path": str(path.resolve()), "sha256": state_dict_sha256(state)}

    def write_provenance(self, doc: Mapping[str, Any]) -> Path:
        """Writes ``provenance.json``: ``doc`` plus the command line, hardware and library versions."""
        path = self.root / PROVENANCE_FILE
        full = {
            **_jsonable(dict(doc)),
            "command": _command_line(),
            "cwd": os.getcwd(),
            "environment": environment(),
        }
        atomic_write(path, (json.dumps(full, indent=2, sort_keys=True) + "\n").encode())
        return path


def environment() -> dict[str, Any]:
    """Hardware and library versions, for the provenance record."""
    import torch

    from .. import __version__

    env: dict[str, Any] = {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "licsearch": __version__,
        "torch": torch.__version__,
    }
    for lib in ("compressai", "open_clip"):
        mod = sys.modules.get(lib)
        if mod is not None:
            env[lib] = getattr(mod, "__version__", "?")
    if torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return env


def _command_line() -> list[str]:
    """The command line as typed: ``python -m licsearch`` and the console script both read ``licsearch``."""
    entry = Path(sys.argv[0]).name
    return ["licsearch" if entry in ("__main__.py", "licsearch") else entry, *sys.argv[1:]]


def _jsonable(value: Any) -> Any:
    """Paths and tuples to JSON types, recursively."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
