"""The validation grids of the content fusions and hybrids (the fuse and new-item stages share them): the
weighted late fusion over the weight simplex, the content + EASE^R hybrids over the content weight, and the
learned fusions over their training knobs, trained once per (kind, configuration, seed) by
:class:`FusionTrainer`."""
from __future__ import annotations

import json
from itertools import product
from typing import Any, Callable

import numpy as np
import torch

from vlm4rec.baselines import EASE
from vlm4rec.config import FusionParams
from vlm4rec.evaluation import Candidate, EvalData, MethodKey
from vlm4rec.fusion import FusionResult, WeightedLateFusion, fit_fusion_seeds, modality_ablation
from vlm4rec.matching import ProfileRecommender, ScoreMix
from vlm4rec.methods import fusion_method, hybrid_method


def simplex_grid(names: list[str], step: float) -> list[dict[str, float]]:
    """Every weight vector over ``names`` with entries in multiples of ``step`` summing to one."""
    n_steps = round(1 / step)
    if not np.isclose(n_steps * step, 1.0):
        raise ValueError(f"concat_grid_step must divide 1, got {step}")
    return [{n: c / n_steps for n, c in zip(names, counts)}
            for counts in product(range(n_steps + 1), repeat=len(names)) if sum(counts) == n_steps]


def late_fusion_candidates(modalities: dict[str, np.ndarray], step: float) -> list[Candidate]:
    """Weighted late fusion over the weight simplex (weights chosen on validation)."""
    return [Candidate({"weights": w}, lambda w=w: WeightedLateFusion(modalities, w))
            for w in simplex_grid(list(modalities), step)]


def hybrid_candidates(vectors: np.ndarray, l2: float, alphas: list[float], name: str) -> list[Candidate]:
    """Content profile score mixed with EASE^R (its L2 as chosen on validation by the match stage); the
    candidates share EASE^R's inverse per history (:func:`~vlm4rec.baselines.ease_weights` is memoised)."""
    return [Candidate({"alpha": a, "ease_l2": l2},
                      lambda a=a: ScoreMix(ProfileRecommender(vectors, name=name), EASE(l2=l2), alpha=a,
                                           name=hybrid_method(name)))
            for a in alphas]


def learned_grid(kind: str, fusion: FusionParams) -> list[dict[str, Any]]:
    """The validation grid of a learned fusion: temperature x weight decay (x combine for frequency_filter)."""
    combines = fusion.combine_grid if kind == "frequency_filter" else [None]
    return [{"temperature": t, "weight_decay": w} | ({"combine": c} if c is not None else {})
            for t, w, c in product(fusion.temperature_grid, fusion.weight_decay_grid, combines)]


class FusionTrainer:
    """Trains each (kind, configuration, seed) at most once and keeps the runs for the metrics, so that the
    selection grid (first seed) and the refit of the chosen configuration per seed share work."""

    def __init__(self, modalities: dict[str, np.ndarray], data: EvalData, fusion: FusionParams):
        self.modalities, self.data, self.fusion = modalities, data, fusion
        self.runs: dict[str, FusionResult] = {}

    def vectors(self, kind: str, config: dict[str, Any], seed: int) -> np.ndarray:
        key = json.dumps({"kind": kind, "config": config, "seed": seed}, sort_keys=True)
        if key not in self.runs:
            f = self.fusion
            module_options = ({"hidden": f.attention_hidden} if kind == "attention" else
                              {"combine": config["combine"]} if kind == "frequency_filter" else {})
            self.runs[key] = fit_fusion_seeds(
                kind, self.modalities, self.data.train_history, self.data.train_history, self.data.val_targets,
                seeds=[seed], dim=f.dim, module_options=module_options, epochs=f.epochs,
                patience=f.patience, batch_size=f.batch_size, lr=f.lr, negatives=f.negatives,
                temperature=config["temperature"], weight_decay=config["weight_decay"])[0]
        return self.runs[key].vectors

    def candidates_for(self, kind: str) -> Callable[[int], list[Candidate]]:
        def grid(seed: int) -> list[Candidate]:
            return [Candidate(config, lambda c=config: ProfileRecommender(self.vectors(kind, c, seed),
                                                                          name=MethodKey(fusion_method(kind), seed).name))
                    for config in learned_grid(kind, self.fusion)]
        return grid

    def training_summary(self) -> dict[str, Any]:
        """Per trained run: configuration, best epoch (0 = the untrained projection won), curves, learned
        modality weights and how much the validation loss rises when each modality is zeroed (no wall
        times: those go to the stage's cost)."""
        summary = {}
        for key, run in self.runs.items():
            spec = json.loads(key)
            summary[key] = spec | {
                "best_epoch": run.best_epoch, "stopped_at_epoch_0": run.best_epoch == 0,
                "epochs_run": len(run.train_loss_curve), "stopped_early": run.stopped_early,
                "val_loss_curve": run.val_loss_curve, "train_loss_curve": run.train_loss_curve,
                "modality_weights": modality_weight_summary(run, self.modalities),
                "val_loss_increase_without": modality_ablation(
                    run.model, self.modalities, self.data.train_history, self.data.val_targets,
                    spec["config"]["temperature"])}
        return summary


def modality_weight_summary(run: FusionResult, modalities: dict[str, np.ndarray]) -> dict[str, float] | None:
    """Mean weight a trained attention / gating fusion puts on each modality (None for frequency_filter)."""
    if not hasattr(run.model, "modality_weights"):
        return None
    with torch.no_grad():
        weights = run.model.modality_weights({n: torch.as_tensor(x) for n, x in modalities.items()})
    return {name: float(w) for name, w in zip(run.model.names, weights.mean(dim=0).tolist())}
