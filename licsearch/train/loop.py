"""The step loop shared by every trainer: device choice, learning-rate schedule, logging, checkpoints, progress."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ..errors import InputError
from .run import Checkpoint, RunDir

if TYPE_CHECKING:
    import torch
    from torch import nn

Schedule = Literal["constant", "cosine"]
FINAL_WINDOW = 50  # the final metrics are means over this many last steps


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name} but no CUDA device is available", hint="use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise InputError(f"bad --device {name!r}", hint="use auto, cpu, cuda or cuda:N") from e


def lr_at(step: int, total: int, base: float, schedule: Schedule, warmup: int) -> float:
    """Learning rate for ``step`` (0-based): linear warm-up, then constant or cosine decay to zero."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant":
        return base
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class Trainer(Protocol):
    """What the loop drives: named modules and optimizers to checkpoint, and one optimisation step."""

    @property
    def modules(self) -> Mapping[str, nn.Module]: ...

    @property
    def optimizers(self) -> Mapping[str, torch.optim.Optimizer]: ...

    def step(self, step: int) -> dict[str, float]:
        """Runs optimisation step ``step`` (0-based) and returns its metrics."""
        ...


@dataclass(frozen=True)
class LoopOptions:
    """How long to train and how often to log, checkpoint and evaluate.

    Attributes:
        steps: total optimisation steps (a resumed run continues up to this number).
        checkpoint_every: steps between checkpoints; one is always written at the end.
        log_every: steps between log lines; each line holds the means over those steps.
        progress: show a progress bar (None: only on a terminal).
        eval_every: steps between evaluations (0: only at the end), when the trainer has one.
    """

    steps: int
    checkpoint_every: int = 1000
    log_every: int = 10
    progress: bool | None = None
    eval_every: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1")
        if self.eval_every < 0:
            raise InputError("--eval-every must not be negative")


@dataclass
class LoopResult:
    """Where the loop ended (and the checkpoint step it resumed from), total training time, the final figures."""

    step: int
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    resumed_from: int | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainReport:
    """What a trainer produced: output files (path and weights fingerprint) and its figures."""

    out: Path
    outputs: dict[str, dict[str, str]]
    result: LoopResult
    data: dict[str, Any] = field(default_factory=dict)


def run_loop(
    run: RunDir,
    trainer: Trainer,
    options: LoopOptions,
    *,
    resume_from: Checkpoint | None,
    state: Mapping[str, Any],
    evaluate: Callable[[int], dict[str, Any]] | None = None,
) -> LoopResult:
    """Trains from the checkpoint (or step 0) up to ``options.steps``.

    Args:
        run: the output folder.
        trainer: modules, optimizers and the step function.
        options: steps and intervals.
        resume_from: a checkpoint to restore before the first step.
        state: JSON-able facts kept in every checkpoint (``identity`` is compared on resume).
        evaluate: called with the step every ``eval_every`` steps and at the end; logged with ``"eval": true``.
    """
    from ..ops.progress import progress_bar

    start, seconds = 0, 0.0
    if resume_from is not None:
        resume_from.restore(trainer.modules, trainer.optimizers)
        start, seconds = resume_from.step, float(resume_from.state.get("seconds", 0.0))
    if start >= options.steps:
        raise InputError(
            f"the checkpoint in {run.root} is at step {start}, nothing left to do for --steps {options.steps}",
            hint="raise --steps to train further",
        )
    window: deque[dict[str, float]] = deque(maxlen=FINAL_WINDOW)
    pending: list[dict[str, float]] = []
    evaluation: dict[str, Any] = {}
    bar = progress_bar(options.steps, options.progress, "train", unit="step", initial=start)

    def checkpoint(step: int) -> None:
        extra = {"seconds": seconds, "metrics": _mean(list(window)), "evaluation": evaluation}
        run.save_checkpoint(step, trainer.modules, trainer.optimizers, {**state, **extra})

    try:
        for step in range(start, options.steps):
            t0 = time.perf_counter()
            metrics = trainer.step(step)
            seconds += time.perf_counter() - t0
            window.append(metrics)
            pending.append(metrics)
            done = step + 1
            if done % options.log_every == 0 or done == options.steps:
                record = {**_mean(pending), "step": done, "seconds": round(seconds, 3)}
                run.log(record)
                if bar is not None:
                    bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k in ("loss", "bpp", "psnr", "cos")})
                pending.clear()
            if evaluate is not None and (
                done == options.steps or (options.eval_every and done % options.eval_every == 0)
            ):
                evaluation = evaluate(done)
                run.log({**evaluation, "step": done, "eval": True, "seconds": round(seconds, 3)})
            if done % options.checkpoint_every == 0 or done == options.steps:
                checkpoint(done)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return LoopResult(
        step=options.steps,
        seconds=seconds,
        metrics=_mean(list(window)),
        evaluation=evaluation,
        resumed_from=None if resume_from is None else start,
    )


def _mean(records: list[dict[str, float]]) -> dict[str, float]:
    if not records:
        return {}
    return {k: sum(r[k] for r in records) / len(records) for k in records[0]}


def write_provenance(
    run: RunDir,
    *,
    kind: str,
    options: Any,
    data: Mapping[str, Any],
    result: LoopResult,
    outputs: Mapping[str, Any],
    **extra: Any,
) -> None:
    """The provenance record every trainer writes at the end (see :meth:`RunDir.write_provenance`).

    A resumed run records the resuming command line and ``resumed_from_step``; ``log.jsonl`` keeps the whole curve.
    """
    import dataclasses

    run.write_provenance(
        {
            "kind": kind,
            "data": dict(data),
            "options": dataclasses.asdict(options),
            "steps": result.step,
            "resumed_from_step": result.resumed_from,
            "seconds": round(result.seconds, 3),
            "seconds_per_step": round(result.seconds / max(1, result.step), 4),
            "final_metrics": result.metrics,
            "evaluation": result.evaluation,
            "outputs": dict(outputs),
            **extra,
        }
    )
