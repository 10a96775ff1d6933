"""Fuse stage: weighted late fusion, learned content fusions over seeds, and content + EASE^R hybrids."""
from __future__ import annotations

import json
from itertools import product
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from vlm4rec.baselines import EASE
from vlm4rec.config import EvalParams, FusionParams
from vlm4rec.data import load_prepared
from vlm4rec.distributed.matching import ranker
from vlm4rec.evaluation import (Candidate, EvalData, MethodKey, MethodResult, select_and_test_methods,
                                select_and_test_seeds)
from vlm4rec.fusion import FusionResult, WeightedLateFusion, fit_fusion_seeds, modality_ablation
from vlm4rec.matching import ProfileRecommender, Recommender, ScoreMix
from vlm4rec.pipeline.outputs import (EMBEDDINGS_DIR, METRICS_DIR, PLOTS_DIR, PREPARED_DIR, RESULTS_DIR,
                                      peak_rss_mb, timed, write_json)
from vlm4rec.tables import test_metrics_json, timing_json
from vlm4rec.representations import load_vectors
from vlm4rec.stage_outputs import read_output


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


def hybrid_candidates(vectors: np.ndarray, l2: float, alphas: list[float], name: str,
                      ease: Recommender | None = None) -> list[Candidate]:
    """Content profile score mixed with EASE^R (its L2 as chosen on validation by the match stage): a fresh
    EASE^R per candidate, or the given ``ease`` model (built with that L2) shared by them."""
    return [Candidate({"alpha": a, "ease_l2": l2},
                      lambda a=a: ScoreMix(ProfileRecommender(vectors, name=name), ease or EASE(l2=l2), alpha=a,
                                           name=f"hybrid_{name}_ease"))
            for a in alphas]


def chosen_ease_l2() -> float:
    """The EASE^R L2 penalty the match stage chose on validation (its ``chosen.json``)."""
    return read_output(RESULTS_DIR / "match" / "ease" / "chosen.json",
                       lambda path: json.loads(path.read_text())["config"]["l2"])


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
                                                                          name=MethodKey(f"fusion_{kind}", seed).name))
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


def run(evaluation: EvalParams, fusion: FusionParams) -> tuple[dict[str, MethodResult], dict[str, Any]]:
    """Weighted late fusion, learned fusions over seeds, and content + EASE^R hybrids; same users and items."""
    costs: dict[str, Any] = {}
    data = EvalData.from_prepared(load_prepared(PREPARED_DIR), ranker(None, evaluation.device, evaluation.block_size))
    modalities = {name: load_vectors(EMBEDDINGS_DIR, name, "fusion.modalities") for name in fusion.modalities}
    hybrids = {name: load_vectors(EMBEDDINGS_DIR, name, "fusion.hybrid_representations")
               for name in fusion.hybrid_representations}
    out = RESULTS_DIR / "fusion"
    ks, metric = evaluation.ks, evaluation.select_metric
    trainer = FusionTrainer(modalities, data, fusion)
    with timed(costs, "wall"):
        methods: dict[str, list[Candidate]] = {
            "fusion_late": late_fusion_candidates(modalities, fusion.concat_grid_step)}
        l2 = chosen_ease_l2()
        for rep, vectors in hybrids.items():
            methods[f"hybrid_{rep}_ease"] = hybrid_candidates(vectors, l2, fusion.hybrid_alpha_grid, rep)
        results = select_and_test_methods(methods, data, ks, metric, out)
        for kind in fusion.learned:
            results |= select_and_test_seeds(f"fusion_{kind}", trainer.candidates_for(kind), data,
                                             fusion.seeds, ks, metric, out)
    training = trainer.training_summary()
    metrics = {"methods": test_metrics_json(results), "training": training,
               "cost": costs | {"peak_rss_mb": round(peak_rss_mb(), 1), "methods": timing_json(results),
                                "train_s": {key: round(run.train_s, 2) for key, run in trainer.runs.items()}}}
    write_json(METRICS_DIR / "fusion.json", metrics)
    PLOTS_DIR.mkdir(exist_ok=True)
    validation_curves(training).to_csv(PLOTS_DIR / "fusion_val_loss.csv", index=False)
    return results, metrics


def validation_curves(training: dict[str, Any]) -> pd.DataFrame:
    """Validation loss per epoch (epoch 0 = untrained) of every trained run, labelled by kind, config and
    seed (plot data)."""
    rows = [{"run": f"{t['kind']} {json.dumps(t['config'], sort_keys=True)} seed {t['seed']}", "kind": t["kind"],
             "seed": t["seed"], "epoch": epoch, "val_loss": loss}
            for t in training.values() for epoch, loss in enumerate(t["val_loss_curve"])]
    return pd.DataFrame(rows, columns=["run", "kind", "seed", "epoch", "val_loss"])


def modality_weight_summary(run: FusionResult, modalities: dict[str, np.ndarray]) -> dict[str, float] | None:
    """Mean weight a trained attention / gating fusion puts on each modality (None for frequency_filter)."""
    if not hasattr(run.model, "modality_weights"):
        return None
    with torch.no_grad():
        weights = run.model.modality_weights({n: torch.as_tensor(x) for n, x in modalities.items()})
    return {name: float(w) for name, w in zip(run.model.names, weights.mean(dim=0).tolist())}
