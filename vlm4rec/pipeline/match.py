"""Match stage: classic baselines and profile matching over every representation."""
from __future__ import annotations

from itertools import product
from typing import Any

from vlm4rec.baselines import EASE, ItemKNNCF, MostPop
from vlm4rec.evaluation import Candidate, EvalData, MethodResult
from vlm4rec.pipeline.common import (METRICS_DIR, PLOTS_DIR, RESULTS_DIR, load_prepared_data,
                                     load_representation_vectors, metric_curves, peak_rss_mb,
                                     profile_candidates, run_methods, test_metrics_json, timed, write_json)


def baseline_candidates(method: str, baselines: dict[str, Any]) -> list[Candidate]:
    """The validation grid of a classic baseline, from ``params.yaml: baselines.<method>``."""
    if method == "mostpop":
        return [Candidate({}, MostPop)]
    if method == "itemknn_cf":
        grid = baselines["itemknn_cf"]
        return [Candidate({"k_neighbours": k, "shrinkage": s},
                          lambda k=k, s=s: ItemKNNCF(k_neighbours=k, shrinkage=s))
                for k, s in product(grid["k_neighbours"], grid["shrinkage"])]
    if method == "ease":
        return [Candidate({"l2": l2}, lambda l2=l2: EASE(l2=l2)) for l2 in baselines["ease"]["l2"]]
    raise ValueError(f"unknown baseline {method!r}; known: mostpop, itemknn_cf, ease")


def run(eval: dict[str, Any], match: dict[str, Any], profile: dict[str, Any],
                baselines: dict[str, Any]) -> tuple[dict[str, MethodResult], dict[str, Any]]:
    """Classic baselines and profile matching over every representation, on the same users and items."""
    costs: dict[str, Any] = {}
    with timed(costs, "wall"):
        data = EvalData.from_prepared(load_prepared_data())
        methods = {m: baseline_candidates(m, baselines) for m in baselines["methods"]}
        methods |= {rep: profile_candidates(load_representation_vectors(rep), profile, rep)
                    for rep in match["representations"]}
        results = run_methods(methods, data, eval, RESULTS_DIR / "match")
    metrics = {"methods": test_metrics_json(results),
               "cost": costs | {"peak_rss_mb": round(peak_rss_mb(), 1)}}
    write_json(METRICS_DIR / "match.json", metrics)
    PLOTS_DIR.mkdir(exist_ok=True)
    metric_curves(results, "recall").to_csv(PLOTS_DIR / "match_recall_at_k.csv", index=False)
    metric_curves(results, "ndcg").to_csv(PLOTS_DIR / "match_ndcg_at_k.csv", index=False)
    return results, metrics
