"""Match stage: classic baselines and profile matching over every representation."""
from __future__ import annotations

from itertools import product
from typing import Any, get_args

from vlm4rec.baselines import EASE, ItemKNNCF, MostPop
from vlm4rec.config import BaselineName, BaselineParams, ComputeParams, EvalParams, MatchParams, ProfileParams
from vlm4rec.data import load_prepared
from vlm4rec.distributed import ray_config
from vlm4rec.distributed.matching import ranker
from vlm4rec.evaluation import Candidate, EvalData, MethodResult, select_and_test_methods
from vlm4rec.pipeline.outputs import (EMBEDDINGS_DIR, METRICS_DIR, PLOTS_DIR, PREPARED_DIR, RESULTS_DIR,
                                      peak_rss_mb, timed, write_json)
from vlm4rec.pipeline.profiles import profile_candidates
from vlm4rec.tables import metric_curves, test_metrics_json, timing_json
from vlm4rec.representations import load_vectors


def baseline_candidates(method: str, baselines: BaselineParams) -> list[Candidate]:
    """The validation grid of a classic baseline, from ``params.yaml: baselines.<method>``."""
    if method == "mostpop":
        return [Candidate({}, MostPop)]
    if method == "itemknn_cf":
        grid = baselines.itemknn_cf
        return [Candidate({"k_neighbours": k, "shrinkage": s},
                          lambda k=k, s=s: ItemKNNCF(k_neighbours=k, shrinkage=s))
                for k, s in product(grid.k_neighbours, grid.shrinkage)]
    if method == "ease":
        return [Candidate({"l2": l2}, lambda l2=l2: EASE(l2=l2)) for l2 in baselines.ease.l2]
    raise ValueError(f"unknown baseline {method!r}; known: {', '.join(get_args(BaselineName))}")


def method_grid(representations: list[str], key: str, profile: ProfileParams,
                baselines: BaselineParams) -> dict[str, list[Candidate]]:
    """Every baseline of ``baselines.methods`` and a profile matcher per representation (read now, so that
    an unknown name fails before any work, naming the params ``key``)."""
    methods = {m: baseline_candidates(m, baselines) for m in baselines.methods}
    return methods | {rep: profile_candidates(load_vectors(EMBEDDINGS_DIR, rep, key), profile, rep)
                      for rep in representations}


def run(evaluation: EvalParams, match: MatchParams, profile: ProfileParams, baselines: BaselineParams,
        compute: ComputeParams) -> tuple[dict[str, MethodResult], dict[str, Any]]:
    """Classic baselines and profile matching over every representation, on the same users and items."""
    costs: dict[str, Any] = {}
    with timed(costs, "wall"):
        methods = method_grid(match.representations, "match.representations", profile, baselines)
        rank = ranker(ray_config(compute), evaluation.device, evaluation.block_size)
        data = EvalData.from_prepared(load_prepared(PREPARED_DIR), rank)
        results = select_and_test_methods(methods, data, evaluation.ks, evaluation.select_metric, RESULTS_DIR / "match")
    metrics = {"methods": test_metrics_json(results),
               "cost": costs | {"peak_rss_mb": round(peak_rss_mb(), 1), "methods": timing_json(results)}}
    write_json(METRICS_DIR / "match.json", metrics)
    PLOTS_DIR.mkdir(exist_ok=True)
    metric_curves(results, "recall").to_csv(PLOTS_DIR / "match_recall_at_k.csv", index=False)
    metric_curves(results, "ndcg").to_csv(PLOTS_DIR / "match_ndcg_at_k.csv", index=False)
    return results, metrics
