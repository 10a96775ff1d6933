"""Robustness stage: the match stage's methods re-evaluated under a second split protocol.

The study's default split is per-user temporal, which lets one user's training data postdate another
user's test data (a known leak for collaborative methods). Under ``global_time`` one time cut holds for
everybody; the report shows whether the ordering of the methods survives it.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from vlm4rec.data import load_prepared
from vlm4rec.distributed import ray_config_from_params
from vlm4rec.distributed.matching import ranker
from vlm4rec.evaluation import EvalData, select_and_test_methods
from vlm4rec.pipeline.match import method_grid
from vlm4rec.pipeline.outputs import METRICS_DIR, PREPARED_DIR, RESULTS_DIR, peak_rss_mb, timed, write_json
from vlm4rec.pipeline.tables import test_metrics_json, timing_json
from vlm4rec.splits import SplitConfig, assign_split
from vlm4rec.stage import exit_on_study_error, run_stage_function


def resplit(interactions: pd.DataFrame, robustness: dict[str, Any]) -> pd.DataFrame:
    """The prepared interactions labelled by the robustness protocol instead of the study's split."""
    config = SplitConfig(protocol=robustness["protocol"], val_ratio=robustness["val_ratio"],
                         test_ratio=robustness["test_ratio"])
    return interactions.assign(split=assign_split(interactions, config))


def run(eval: dict[str, Any], robustness: dict[str, Any], profile: dict[str, Any], baselines: dict[str, Any],
        compute: dict[str, Any]) -> dict[str, Any]:
    """The baselines and the main profile representations, selected and tested under
    ``robustness.protocol`` (global_time: one time cut for everybody, so no user's training data postdates
    another user's test data) on the same users, items and embeddings."""
    costs: dict[str, Any] = {}
    with timed(costs, "wall"):
        methods = method_grid(robustness["representations"], "robustness.representations", profile, baselines)
        prepared = load_prepared(PREPARED_DIR)
        inter = resplit(prepared.interactions, robustness)
        data = EvalData.from_interactions(inter, prepared.n_users, prepared.n_items, ranker(ray_config_from_params(compute), eval["device"], eval["block_size"]))
        results = select_and_test_methods(methods, data, eval["ks"], eval["select_metric"],
                                          RESULTS_DIR / robustness["protocol"])
    counts = inter.groupby("split").agg(interactions=("user_idx", "size"), users=("user_idx", "nunique"))
    metrics = {"protocol": robustness["protocol"], "methods": test_metrics_json(results),
               "split": counts.to_dict(orient="index"),
               "cost": costs | {"peak_rss_mb": round(peak_rss_mb(), 1), "methods": timing_json(results)}}
    write_json(METRICS_DIR / "robustness.json", metrics)
    return metrics


def main() -> None:
    """``python -m vlm4rec.pipeline.robustness``: the notebook-less robustness stage."""
    exit_on_study_error(lambda: run_stage_function("robustness", run))


if __name__ == "__main__":
    main()
