"""One iterative trainer: the epoch loop, early-stopping rule, training log and training options shared by the
BPR recommenders (:mod:`vlm4rec.multimodal.bpr`) and the learned fusions (:mod:`vlm4rec.fusion`).

``TrainingOptions`` where a fit runs and the seed of its own random generators (as LensKit's
                    ``TrainingOptions``): a fit draws from ``options.numpy_rng()`` and
                    ``options.torch_generator()``, never from numpy's or torch's global state.
``EarlyStopping``   the rule (as Cornac's ``Recommender.early_stop``): a monitored value, maximised or
                    minimised, checked now and then; a check improves when it beats the best by more than
                    ``min_delta``; ``patience`` checks in a row without improvement stop training.
``TrainingLog``     what a run did: checked values, training losses, best and stopped epoch.
``train_epochs``    the loop: train an epoch, check when due, keep a copy of the best state, stop by the
                    rule, restore the best state.

With a check every epoch, "checks without improvement" is "epochs since the best epoch", so one rule serves
the BPR models (a validation metric every ``eval_every`` epochs) and the fusions (a validation loss every
epoch).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Literal

import numpy as np
from tqdm import tqdm

if TYPE_CHECKING:
    import torch
    from torch import nn

Mode = Literal["max", "min"]


@dataclass(frozen=True)
class TrainingOptions:
    """Where a fit runs and what seeds it: ``device`` ``cpu``, ``cuda`` / ``cuda:N`` or ``auto`` (CUDA where
    present), and ``seed``, from which each fit draws fresh generators (two fits with one seed draw alike)."""

    device: str = "cpu"
    seed: int = 0

    def numpy_rng(self) -> np.random.Generator:
        """A fresh numpy generator seeded with ``seed`` (orders, negatives, held-out items)."""
        return np.random.default_rng(self.seed)

    def torch_generator(self) -> torch.Generator:
        """A fresh CPU torch generator seeded with ``seed`` (initial weights, dropout masks): the same stream
        as torch's global CPU generator after ``torch.manual_seed(seed)``, without touching it."""
        import torch

        return torch.Generator().manual_seed(self.seed)

    def torch_device(self) -> torch.device:
        """``device`` resolved; an error naming the device when it is malformed or this machine lacks it
        (:func:`vlm4rec.config.device_problem`, the check params.yaml's devices pass at load)."""
        import torch

        from vlm4rec.config import device_problem

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        problem = device_problem(self.device)
        if problem:
            raise ValueError(f"device {self.device!r} (cpu, cuda, cuda:N or auto): {problem}")
        return torch.device(self.device)


@dataclass
class EarlyStopping:
    """Early stopping on a monitored value (``mode`` ``max``: a metric; ``min``: a loss).

    The first check (the untrained state, epoch 0) is the baseline and never counts against patience.
    A later check improves when it beats the best value by more than ``min_delta`` (``value - min_delta >
    best`` in ``max`` mode); ``patience`` checks in a row that do not improve set ``stopped_epoch`` (the
    epoch of the last of them). A NaN value never improves, and a NaN baseline counts as the worst value.
    """

    mode: Mode
    patience: int
    min_delta: float = 0.0
    best_value: float = field(init=False, default=math.nan)
    best_epoch: int = field(init=False, default=0)
    stopped_epoch: int | None = field(init=False, default=None)
    checks: int = field(init=False, default=0)
    checks_without_gain: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {self.mode!r}")
        if self.patience < 1 or not self.min_delta >= 0:
            raise ValueError(f"need patience >= 1 and min_delta >= 0, got patience={self.patience}, "
                             f"min_delta={self.min_delta}")

    def update(self, epoch: int, value: float) -> bool:
        """Record the check of ``epoch``; True when it is the new best (the caller keeps that state)."""
        self.checks += 1
        if self.checks == 1 or self._improves(value):
            worst = -math.inf if self.mode == "max" else math.inf
            self.best_value, self.best_epoch, self.checks_without_gain = worst if math.isnan(value) else value, epoch, 0
            return True
        self.checks_without_gain += 1
        if self.checks_without_gain >= self.patience:
            self.stopped_epoch = epoch
        return False

    def _improves(self, value: float) -> bool:
        if self.mode == "max":
            return value - self.min_delta > self.best_value
        return value + self.min_delta < self.best_value

    @property
    def stopped(self) -> bool:
        return self.stopped_epoch is not None


@dataclass
class TrainingLog:
    """How a training run went: the monitored value after every check (epoch 0 = the untrained state),
    the mean training loss per epoch, the epoch whose state was kept (0 = the untrained state was best)
    and whether early stopping ended it (False: it ran to its epoch cap, its curve may still have been
    improving). Holds no wall times, so that it can be saved with the results and stay identical across
    reruns."""

    curve: list[tuple[int, float]] = field(default_factory=list)   # (epoch, monitored value)
    train_loss: list[float] = field(default_factory=list)          # index e-1 = epoch e
    best_epoch: int = 0
    stopped_early: bool = False

    @property
    def epochs_run(self) -> int:
        return len(self.train_loss)

    @property
    def stopped_epoch(self) -> int | None:
        """The epoch early stopping ended the run at (None: it ran to its cap)."""
        return self.epochs_run if self.stopped_early else None

    @property
    def values(self) -> list[float]:
        """The monitored values in check order."""
        return [value for _, value in self.curve]

    def as_dict(self) -> dict[str, object]:
        return {"curve": [[int(e), float(v)] for e, v in self.curve], "train_loss": list(map(float, self.train_loss)),
                "best_epoch": int(self.best_epoch), "epochs_run": self.epochs_run,
                "stopped_early": bool(self.stopped_early)}


def train_epochs(module: nn.Module, run_epoch: Callable[[int], float], epochs: int,
                 check: Callable[[int], float] | None = None, stopping: EarlyStopping | None = None,
                 eval_every: int = 1, progress: str | None = None) -> TrainingLog:
    """Train ``module`` for up to ``epochs`` epochs; ``run_epoch(epoch)`` trains epoch ``epoch`` (from 1)
    and returns its mean loss.

    Without ``check``: exactly ``epochs`` epochs, the last state kept. With ``check(epoch)`` (the monitored
    value of the current state) and ``stopping``: a check before training (epoch 0), after every
    ``eval_every``-th epoch and after the last; a deep copy of the state of every new best check; training
    ends when ``stopping`` says so and ``module`` ends holding the best checked state. ``progress`` names a
    progress bar (none by default)."""
    if (check is None) != (stopping is None):
        raise ValueError("check and stopping go together: give both or neither")
    log = TrainingLog()
    best_state = None
    if check is not None and stopping is not None:
        _checked(log, stopping, 0, check(0))
        best_state = copy.deepcopy(module.state_dict())
    bar = tqdm(range(1, epochs + 1), unit="epoch", desc=progress, disable=progress is None)
    for epoch in bar:
        log.train_loss.append(run_epoch(epoch))
        if check is None or stopping is None or (epoch % eval_every and epoch != epochs):
            continue
        value = check(epoch)
        bar.set_postfix(train_loss=f"{log.train_loss[-1]:.3f}", value=f"{value:.3f}", best=stopping.best_epoch)
        if _checked(log, stopping, epoch, value):
            best_state = copy.deepcopy(module.state_dict())
        elif stopping.stopped:
            break
    bar.close()
    if stopping is not None:
        log.best_epoch, log.stopped_early = stopping.best_epoch, stopping.stopped
    if best_state is not None:
        module.load_state_dict(best_state)
    return log


def _checked(log: TrainingLog, stopping: EarlyStopping, epoch: int, value: float) -> bool:
    """Record a check in the log and the rule; True when it is the new best."""
    log.curve.append((epoch, value))
    return stopping.update(epoch, value)
