"""Robustness stage: the match stage's methods re-evaluated under a second split protocol.

The study's default split is per-user temporal, which lets one user's training data postdate another
user's test data (a temporal leak). Under ``global_time`` one time cut holds for everybody; the report
shows whether the ordering of the methods survives it.

The two protocols do not test the same users: under ``global_time`` a user whose whole activity falls after
the cut has test items but no history (on ML-1M, about a third of the test users), and every history-based
method can only return its tie order for them. The comparison of protocols therefore uses the users with a
non-empty history (``test_with_history``); the users without one are reported apart (``cold_start``: their
number, their metrics and what each method's lists are for them).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from vlm4rec.config import BaselineParams, ComputeParams, EvalParams, ProfileParams, RobustnessParams
from vlm4rec.data import load_prepared
from vlm4rec.distributed import ray_config
from vlm4rec.distributed.matching import ranker
from vlm4rec.evaluation import EvalData, MethodResult, chance_per_user, select_and_test_methods
from vlm4rec.metrics import summarize
from vlm4rec.pipeline.profiles import method_grid
from vlm4rec.pipeline.outputs import PREPARED_DIR, RESULTS_DIR, peak_rss_mb, timed
from vlm4rec.pipeline.stage_metrics import RobustnessMetrics
from vlm4rec.tables import test_metrics_json, timing_json
from vlm4rec.splits import SplitConfig, assign_split
from vlm4rec.stage import exit_on_study_error, run_stage_function


def resplit(interactions: pd.DataFrame, robustness: RobustnessParams) -> pd.DataFrame:
    """The prepared interactions labelled by the robustness protocol instead of the study's split."""
    config = SplitConfig(protocol=robustness.protocol, val_ratio=robustness.val_ratio, test_ratio=robustness.test_ratio)
    return interactions.assign(split=assign_split(interactions, config))


def cold_start_lists(topk: np.ndarray) -> str:
    """What a method returns to users without history, from their ranked lists (rows of ``topk``): one list
    in item-index order (every score tied, ties broken by index), one list for everybody (e.g. popularity),
    or how many distinct lists."""
    if len(topk) == 0:
        return "no such users"
    if (topk == np.arange(topk.shape[1])).all():
        return "one list for all, in item-index order (every score tied)"
    distinct = len(np.unique(topk, axis=0))
    return "one list for all" if distinct == 1 else f"{distinct:,} distinct lists for {len(topk):,} users"


def history_split_metrics(result: MethodResult, with_history: np.ndarray) -> dict[str, Any]:
    """A method's test metrics on the users with a non-empty test-time history, and on the others (their
    metrics and what its lists are for them). ``with_history`` is a bool mask over all users."""
    users = result.test_per_user["user_idx"].to_numpy()
    has = with_history[users]
    cold = result.test_per_user[~has]
    return {"test_with_history": summarize(result.test_per_user[has]),
            "cold_start": {"test": summarize(cold) if len(cold) else {},
                           "lists": cold_start_lists(result.test_topk[~has])}}


def run(evaluation: EvalParams, robustness: RobustnessParams, profile: ProfileParams, baselines: BaselineParams,
        compute: ComputeParams) -> dict[str, Any]:
    """The baselines and the main profile representations, selected and tested under
    ``robustness.protocol`` (global_time: one time cut for everybody, so no user's training data postdates
    another user's test data) on the same items and embeddings. The protocol decides which users have test
    items and which of them have a history; both counts go to the metrics, with each method's numbers on
    the users with a history and on those without (:func:`history_split_metrics`), and chance on the users
    with a history (the expected metrics of a random ranking of their unseen items)."""
    costs: dict[str, Any] = {}
    with timed(costs, "wall"):
        methods = method_grid(robustness.representations, "robustness.representations", profile, baselines)
        prepared = load_prepared(PREPARED_DIR)
        inter = resplit(prepared.interactions, robustness)
        rank = ranker(ray_config(compute), evaluation.device, evaluation.block_size)
        data = EvalData.from_interactions(inter, prepared.n_users, prepared.n_items, rank)
        results = select_and_test_methods(methods, data, evaluation.ks, evaluation.select_metric,
                                          RESULTS_DIR / robustness.protocol)
    counts = inter.groupby("split").agg(interactions=("user_idx", "size"), users=("user_idx", "nunique"))
    with_history = np.diff(data.trainval_history.matrix.indptr) > 0
    test_users = data.test_users
    entries = test_metrics_json(results)
    for key, result in results.items():
        entries[key.name] |= history_split_metrics(result, with_history)
    chance = chance_per_user(data.test(), evaluation.ks)
    metrics = {"protocol": robustness.protocol, "methods": entries,
               "chance": {"test_with_history": summarize(chance[with_history[chance["user_idx"].to_numpy()]])},
               "split": counts.to_dict(orient="index"),
               "test_users": {"all": len(test_users), "with_history": int(with_history[test_users].sum()),
                              "cold_start": int((~with_history[test_users]).sum())},
               "cost": costs | {"peak_rss_mb": round(peak_rss_mb(), 1), "methods": timing_json(results)}}
    RobustnessMetrics.model_validate(metrics).save(RobustnessMetrics.path())
    return metrics


def main() -> None:
    """``python -m vlm4rec.pipeline.robustness``: the notebook-less robustness stage."""
    exit_on_study_error(lambda: run_stage_function("robustness", run))


if __name__ == "__main__":
    main()
