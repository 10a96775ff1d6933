"""Match stage: classic baselines and profile matching over every representation."""
from __future__ import annotations

from typing import Any

from vlm4rec.config import BaselineParams, ComputeParams, EvalParams, MatchParams, ProfileParams
from vlm4rec.data import load_prepared
from vlm4rec.distributed import ray_config
from vlm4rec.distributed.matching import ranker
from vlm4rec.evaluation import EvalData, MethodKey, MethodResult, select_and_test_methods
from vlm4rec.pipeline.outputs import PLOTS_DIR, PREPARED_DIR, RESULTS_DIR, peak_rss_mb, timed
from vlm4rec.pipeline.profiles import method_grid
from vlm4rec.pipeline.stage_metrics import MatchMetrics
from vlm4rec.tables import metric_curves, test_metrics_json, timing_json


def run(evaluation: EvalParams, match: MatchParams, profile: ProfileParams, baselines: BaselineParams,
        compute: ComputeParams) -> tuple[dict[MethodKey, MethodResult], dict[str, Any]]:
    """Classic baselines and profile matching over every representation, on the same users and items."""
    costs: dict[str, Any] = {}
    with timed(costs, "wall"):
        methods = method_grid(match.representations, "match.representations", profile, baselines)
        rank = ranker(ray_config(compute), evaluation.device, evaluation.block_size)
        data = EvalData.from_prepared(load_prepared(PREPARED_DIR), rank)
        results = select_and_test_methods(methods, data, evaluation.ks, evaluation.select_metric, RESULTS_DIR / "match")
    metrics = {"methods": test_metrics_json(results),
               "cost": costs | {"peak_rss_mb": round(peak_rss_mb(), 1), "methods": timing_json(results)}}
    MatchMetrics.model_validate(metrics).save(MatchMetrics.path())
    PLOTS_DIR.mkdir(exist_ok=True)
    metric_curves(results, "recall").to_csv(PLOTS_DIR / "match_recall_at_k.csv", index=False)
    metric_curves(results, "ndcg").to_csv(PLOTS_DIR / "match_ndcg_at_k.csv", index=False)
    return results, metrics
