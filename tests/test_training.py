"""vlm4rec.training: the early-stopping rule on hand-computed sequences, the epoch loop's checks, kept state
and log, and the training options' generators."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from vlm4rec.training import EarlyStopping, TrainingLog, TrainingOptions, train_epochs


def run_rule(rule: EarlyStopping, values: list[float], epochs: list[int] | None = None) -> list[bool]:
    """Feed ``values`` (checked at ``epochs``, default 0, 1, 2, ...) until the rule stops; the improvements."""
    improved = []
    for epoch, value in zip(epochs or range(len(values)), values):
        improved.append(rule.update(epoch, value))
        if rule.stopped:
            break
    return improved


# --------------------------------------------------------------------------- the rule

def test_max_mode_counts_checks_without_gain_and_stops_at_patience() -> None:
    rule = EarlyStopping("max", patience=2)
    # baseline 0.1; 0.2 and 0.5 improve; 0.5 (a tie) and 0.4 do not: the second of them stops at epoch 4
    assert run_rule(rule, [0.1, 0.2, 0.5, 0.5, 0.4, 0.9]) == [True, True, True, False, False]
    assert (rule.best_value, rule.best_epoch, rule.stopped_epoch) == (0.5, 2, 4)


def test_min_mode_keeps_the_lowest_value() -> None:
    rule = EarlyStopping("min", patience=3)
    # 2.0 -> 1.5 (gain) -> 1.7, 1.6 (no gain, count 2) -> 1.2 (gain, count reset) -> 1.3, 1.2, 1.9: stop at 7
    assert run_rule(rule, [2.0, 1.5, 1.7, 1.6, 1.2, 1.3, 1.2, 1.9, 0.1]) == [True, True, False, False, True,
                                                                            False, False, False]
    assert (rule.best_value, rule.best_epoch, rule.stopped_epoch) == (1.2, 4, 7)


def test_min_delta_requires_a_gain_larger_than_it() -> None:
    rule = EarlyStopping("max", patience=2, min_delta=0.05)
    # 0.10 -> 0.14 (+0.04: no gain) -> 0.20 (+0.10 over 0.10: gain) -> 0.24 (+0.04), 0.25 (+0.05, not more): stop
    assert run_rule(rule, [0.10, 0.14, 0.20, 0.24, 0.25]) == [True, False, True, False, False]
    assert (rule.best_value, rule.best_epoch, rule.stopped_epoch) == (0.20, 2, 4)
    loss = EarlyStopping("min", patience=1, min_delta=0.5)
    assert run_rule(loss, [3.0, 2.4, 2.6]) == [True, True, False]  # 3.0 - 2.4 = 0.6 > 0.5; then +0.2
    assert (loss.best_epoch, loss.stopped_epoch) == (1, 2)


def test_patience_counts_checks_not_epochs() -> None:
    """Checks every 5 epochs: two checks without gain after the best at epoch 5 stop at epoch 15."""
    rule = EarlyStopping("max", patience=2)
    assert run_rule(rule, [0.0, 0.3, 0.2, 0.1, 0.9], epochs=[0, 5, 10, 15, 20]) == [True, True, False, False]
    assert (rule.best_epoch, rule.stopped_epoch, rule.checks_without_gain) == (5, 15, 2)


def test_the_baseline_never_counts_and_nan_never_improves() -> None:
    rule = EarlyStopping("max", patience=1)
    assert run_rule(rule, [math.nan, 0.0]) == [True, True]  # a NaN baseline is the worst value: 0.0 beats it
    assert (rule.best_value, rule.best_epoch, rule.stopped) == (0.0, 1, False)
    assert run_rule(rule, [math.nan], epochs=[2]) == [False]
    assert rule.stopped_epoch == 2
    loss = EarlyStopping("min", patience=2)
    assert run_rule(loss, [1.0, math.nan, math.nan]) == [True, False, False]
    assert (loss.best_value, loss.stopped_epoch) == (1.0, 2)


def test_bad_rules_are_refused() -> None:
    for bad in ({"mode": "up", "patience": 1}, {"mode": "max", "patience": 0},
                {"mode": "min", "patience": 1, "min_delta": -0.1}):
        with pytest.raises(ValueError):
            EarlyStopping(**bad)


# --------------------------------------------------------------------------- the loop

class Counter(nn.Module):
    """A one-parameter module whose "training" adds one per epoch: its state names the epoch it is at."""

    def __init__(self) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.zeros(()))

    def run_epoch(self, epoch: int) -> float:
        with torch.no_grad():
            self.value += 1
        return 10.0 - epoch


def scripted(values: dict[int, float], module: Counter, seen: list[tuple[int, float]]):
    """A check returning ``values[epoch]``, recording the epoch it was called at and the module's state."""
    def check(epoch: int) -> float:
        seen.append((epoch, module.value.item()))
        return values[epoch]
    return check


def test_checks_every_eval_every_epochs_and_after_the_last_restoring_the_best_state() -> None:
    module, seen = Counter(), []
    values = {0: 0.1, 4: 0.3, 8: 0.2, 10: 0.25}
    log = train_epochs(module, module.run_epoch, 10, scripted(values, module, seen), EarlyStopping("max", 5),
                       eval_every=4)
    assert seen == [(0, 0.0), (4, 4.0), (8, 8.0), (10, 10.0)]  # epoch 0, every 4th and the last
    assert log.curve == [(0, 0.1), (4, 0.3), (8, 0.2), (10, 0.25)]
    assert log.train_loss == [9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0]
    assert (log.best_epoch, log.epochs_run, log.stopped_early, log.stopped_epoch) == (4, 10, False, None)
    assert module.value.item() == 4.0  # the state of the best check, restored


def test_early_stop_ends_training_and_the_log_serialises_as_before() -> None:
    module, seen = Counter(), []
    values = {0: 1.0, 1: 0.5, 2: 0.6, 3: 0.7}
    log = train_epochs(module, module.run_epoch, 20, scripted(values, module, seen), EarlyStopping("min", 2))
    assert [epoch for epoch, _ in seen] == [0, 1, 2, 3]
    assert (log.best_epoch, log.epochs_run, log.stopped_early, log.stopped_epoch) == (1, 3, True, 3)
    assert module.value.item() == 1.0
    assert log.values == [1.0, 0.5, 0.6, 0.7]
    assert log.as_dict() == {"curve": [[0, 1.0], [1, 0.5], [2, 0.6], [3, 0.7]], "train_loss": [9.0, 8.0, 7.0],
                             "best_epoch": 1, "epochs_run": 3, "stopped_early": True}


def test_without_a_check_every_epoch_runs_and_the_last_state_stays() -> None:
    module = Counter()
    log = train_epochs(module, module.run_epoch, 3)
    assert (log.curve, log.epochs_run, log.best_epoch, log.stopped_early) == ([], 3, 0, False)
    assert module.value.item() == 3.0
    with pytest.raises(ValueError, match="together"):
        train_epochs(module, module.run_epoch, 3, check=lambda epoch: 0.0)


def test_an_untrained_best_restores_the_initial_state() -> None:
    module = Counter()
    log = train_epochs(module, module.run_epoch, 2, lambda epoch: -epoch, EarlyStopping("max", 5))
    assert (log.best_epoch, log.epochs_run, module.value.item()) == (0, 2, 0.0)
    assert TrainingLog().as_dict()["best_epoch"] == 0


# --------------------------------------------------------------------------- options

def test_generators_replay_the_global_streams_without_touching_them() -> None:
    """options.torch_generator() draws what torch's global generator draws after torch.manual_seed(seed), and
    numpy_rng() what default_rng(seed) draws; neither reads or changes the global states."""
    options = TrainingOptions(seed=11)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    drawn = torch.randn(5, generator=options.torch_generator())
    ints = options.numpy_rng().integers(0, 100, 5)
    assert torch.equal(torch.get_rng_state(), torch_state)
    np.testing.assert_array_equal(np.random.get_state()[1], numpy_state)
    torch.manual_seed(11)
    assert torch.equal(drawn, torch.randn(5))
    np.testing.assert_array_equal(ints, np.random.default_rng(11).integers(0, 100, 5))


def test_devices() -> None:
    assert TrainingOptions("cpu").torch_device() == torch.device("cpu")
    assert TrainingOptions("auto").torch_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="'tpu' .*must be cpu, cuda or cuda:N"):
        TrainingOptions("tpu").torch_device()
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            TrainingOptions("cuda").torch_device()
