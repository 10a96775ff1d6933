"""Fuse stage: weighted concat, learned fusions over seeds, and content + EASE^R hybrids."""
from __future__ import annotations

import json
from itertools import product
from typing import Any

import numpy as np
import pandas as pd
import torch

from vlm4rec.baselines import EASE
from vlm4rec.evaluation import Candidate, EvalData, MethodResult
from vlm4rec.fusion import FusionResult, fit_fusion_seeds, weighted_concat
from vlm4rec.matching import ProfileRecommender, ScoreMix
from vlm4rec.pipeline.common import (METRICS_DIR, PLOTS_DIR, RESULTS_DIR, load_prepared_data,
                                     load_representation_vectors, method_family, peak_rss_mb, run_methods,
                                     test_metrics_json, timed, write_json)


def simplex_grid(names: list[str], step: float) -> list[dict[str, float]]:
    """Every weight vector over ``names`` with entries in multiples of ``step`` summing to one."""
    n_steps = round(1 / step)
    if not np.isclose(n_steps * step, 1.0):
        raise ValueError(f"concat_grid_step must divide 1, got {step}")
    return [{n: c / n_steps for n, c in zip(names, counts)}
            for counts in product(range(n_steps + 1), repeat=len(names)) if sum(counts) == n_steps]


def concat_candidates(modalities: dict[str, np.ndarray], step: float) -> list[Candidate]:
    """Weighted concat (= late score fusion) over the weight simplex, each with the mean profile."""
    return [Candidate({"weights": w}, lambda w=w: ProfileRecommender(weighted_concat(modalities, w),
                                                                      name="fusion_concat"))
            for w in simplex_grid(list(modalities), step)]


def hybrid_candidates(vectors: np.ndarray, l2: float, alphas: list[float], name: str) -> list[Candidate]:
    """Content profile score mixed with EASE^R (its L2 as chosen on validation by the match stage)."""
    return [Candidate({"alpha": a, "ease_l2": l2},
                      lambda a=a: ScoreMix(ProfileRecommender(vectors, name=name), EASE(l2=l2), alpha=a,
                                           name=f"hybrid_{name}_ease"))
            for a in alphas]


def seed_method(kind: str, seed: int) -> str:
    """Result name of one seed of a learned fusion (the report groups them by the part before '@')."""
    return f"fusion_{kind}@seed{seed}"


def run(eval: dict[str, Any], fusion: dict[str, Any]) -> tuple[dict[str, MethodResult], dict[str, Any]]:
    """Weighted concat, learned fusions over seeds, and content + EASE^R hybrids; same users and items."""
    costs: dict[str, Any] = {}
    data = EvalData.from_prepared(load_prepared_data())
    modalities = {name: load_representation_vectors(name) for name in fusion["modalities"]}
    out = RESULTS_DIR / "fusion"
    training: dict[str, Any] = {}
    with timed(costs, "wall"):
        methods: dict[str, list[Candidate]] = {
            "fusion_concat": concat_candidates(modalities, fusion["concat_grid_step"])}
        train_options = {k: fusion[k] for k in ("epochs", "patience", "batch_size", "lr", "negatives")}
        for kind in fusion["learned"]:
            runs = fit_fusion_seeds(kind, modalities, data.train_history, data.train_history,
                                    data.val_targets, seeds=fusion["seeds"], dim=fusion["dim"], **train_options)
            for run in runs:
                name = seed_method(kind, run.seed)
                methods[name] = [Candidate({"kind": kind, "seed": run.seed, "best_epoch": run.best_epoch},
                                           lambda v=run.vectors, n=name: ProfileRecommender(v, name=n))]
                training[name] = {"best_epoch": run.best_epoch, "train_s": round(run.train_s, 2),
                                  "val_loss_curve": run.val_loss_curve,
                                  "modality_weights": modality_weight_summary(run, modalities)}
        l2 = json.loads((RESULTS_DIR / "match" / "ease" / "chosen.json").read_text())["config"]["l2"]
        for rep in fusion["hybrid_representations"]:
            methods[f"hybrid_{rep}_ease"] = hybrid_candidates(load_representation_vectors(rep), l2,
                                                              fusion["hybrid_alpha_grid"], rep)
        results = run_methods(methods, data, eval, out)
    metrics = {"methods": test_metrics_json(results), "training": training,
               "cost": costs | {"peak_rss_mb": round(peak_rss_mb(), 1)}}
    write_json(METRICS_DIR / "fusion.json", metrics)
    curves = [{"method": m, "epoch": e, "val_loss": v} for m, t in training.items()
              for e, v in enumerate(t["val_loss_curve"])]
    PLOTS_DIR.mkdir(exist_ok=True)
    pd.DataFrame(curves, columns=["method", "epoch", "val_loss"]).to_csv(
        PLOTS_DIR / "fusion_val_loss.csv", index=False)
    return results, metrics


def modality_weight_summary(run: FusionResult, modalities: dict[str, np.ndarray]) -> dict[str, float] | None:
    """Mean weight a trained attention / gating fusion puts on each modality (None for spectral)."""
    if not hasattr(run.model, "modality_weights"):
        return None
    with torch.no_grad():
        weights = run.model.modality_weights({n: torch.as_tensor(x) for n, x in modalities.items()})
    return {name: float(w) for name, w in zip(run.model.names, weights.mean(dim=0).tolist())}


def seed_spread(results: dict[str, MethodResult], metric: str) -> pd.DataFrame:
    """Mean and standard deviation over seeds of a seeded method's test ``metric``."""
    rows = [{"method": method_family(m), "seed": m.split("@")[1], metric: r.test_summary()[metric]}
            for m, r in results.items() if "@" in m]
    if not rows:
        return pd.DataFrame(columns=["n_seeds", "mean", "std"])
    frame = pd.DataFrame(rows)
    return frame.groupby("method")[metric].agg(n_seeds="size", mean="mean", std="std")
