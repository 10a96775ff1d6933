"""Fuse stage: weighted late fusion, learned content fusions over seeds, and content + EASE^R hybrids."""
from __future__ import annotations

import json
from typing import Any

import pandas as pd

from vlm4rec.config import EvalParams, FusionParams
from vlm4rec.data import load_prepared
from vlm4rec.distributed.matching import ranker
from vlm4rec.evaluation import (Candidate, EvalData, MethodKey, MethodResult, select_and_test_methods,
                                select_and_test_seeds)
from vlm4rec.fusion_candidates import FusionTrainer, hybrid_candidates, late_fusion_candidates
from vlm4rec.methods import fusion_method, hybrid_method
from vlm4rec.pipeline.outputs import (EMBEDDINGS_DIR, PLOTS_DIR, PREPARED_DIR, RESULTS_DIR, chosen_ease_l2,
                                      peak_rss_mb, timed)
from vlm4rec.pipeline.stage_metrics import FusionMetrics
from vlm4rec.tables import test_metrics_json, timing_json
from vlm4rec.representations import load_vectors


def run(evaluation: EvalParams, fusion: FusionParams) -> tuple[dict[MethodKey, MethodResult], dict[str, Any]]:
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
            fusion_method("late"): late_fusion_candidates(modalities, fusion.concat_grid_step)}
        l2 = chosen_ease_l2()
        for rep, vectors in hybrids.items():
            methods[hybrid_method(rep)] = hybrid_candidates(vectors, l2, fusion.hybrid_alpha_grid, rep)
        results = select_and_test_methods(methods, data, ks, metric, out)
        for kind in fusion.learned:
            results |= select_and_test_seeds(fusion_method(kind), trainer.candidates_for(kind), data,
                                             fusion.seeds, ks, metric, out)
    training = trainer.training_summary()
    metrics = {"methods": test_metrics_json(results), "training": training,
               "cost": costs | {"peak_rss_mb": round(peak_rss_mb(), 1), "methods": timing_json(results),
                                "train_s": {key: round(run.train_s, 2) for key, run in trainer.runs.items()}}}
    FusionMetrics.model_validate(metrics).save(FusionMetrics.path())
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
