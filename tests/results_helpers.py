"""Hand-built study results for the report's tests: a tiny prepared dataset, methods whose hits are drawn
per user, and the typed sections the findings take."""
from __future__ import annotations

import numpy as np
import pandas as pd

from vlm4rec.config import EvalParams, FindingsParams
from vlm4rec.data import PreparedData
from vlm4rec.evaluation import MethodKey, MethodResult
from vlm4rec.metrics import ranking_metrics
from vlm4rec.pipeline.stage_metrics import GraphCellMetrics, GraphCost, GraphTraining, MethodMetrics
from vlm4rec.splits import targets_of

N_USERS, N_ITEMS = 40, 30
EVAL = EvalParams(ks=[10], select_metric="ndcg@10", block_size=64, device="cpu", bootstrap_resamples=999, seed=0)
FINDINGS = FindingsParams(metric="ndcg@10", description="description", title="title", image="image", slice_k=10,
                          short_history=3)


def prepared() -> PreparedData:
    """User u has 2 + u % 5 train items, one test item; items >= 25 are never in train (cold)."""
    rng = np.random.default_rng(0)
    rows = []
    for user in range(N_USERS):
        train = rng.choice(25, size=2 + user % 5, replace=False)
        rows += [(user, int(i), t, "train") for t, i in enumerate(train)]
        rows.append((user, int(25 + user % 5) if user % 2 else int(rng.integers(0, 25)), 99, "test"))
    inter = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp", "split"]).assign(rating=5.0)
    items = pd.DataFrame({"item_idx": np.arange(N_ITEMS), "item_id": [str(i) for i in range(N_ITEMS)],
                          "has_image": True})
    users = pd.DataFrame({"user_idx": np.arange(N_USERS), "user_id": [str(u) for u in range(N_USERS)]})
    return PreparedData(items=items, users=users, interactions=inter)


def method(key: MethodKey, data: PreparedData, hit_share: float, val: float, seed: int) -> MethodResult:
    """A method that ranks each user's test item first for a share of the users, else not at all."""
    rng = np.random.default_rng(seed)
    test = data.interactions[data.interactions["split"] == "test"].set_index("user_idx")["item_idx"]
    topk = np.zeros((N_USERS, 10), dtype=np.int64)
    for user in range(N_USERS):
        others = [i for i in range(N_ITEMS) if i != test[user]]
        ranked = rng.permutation(others)[:10]
        if rng.random() < hit_share:
            ranked[0] = test[user]
        topk[user] = ranked
    users = np.arange(N_USERS)
    per_user = ranking_metrics(topk, targets_of(data.interactions, "test", N_USERS, N_ITEMS), users, [10])
    val_per_user = pd.DataFrame({"user_idx": users, "ndcg@10": np.full(N_USERS, val)})
    return MethodResult(key, {}, pd.DataFrame(), val_per_user, per_user, topk, {"coverage@10": 1.0}, {})


def study(data: PreparedData) -> dict[MethodKey, MethodResult]:
    """Three representations, a seeded fusion that validation prefers and an unseeded one better on test."""
    specs = [(MethodKey("title"), 0.2, 0.10, 1), (MethodKey("image"), 0.2, 0.05, 2),
             (MethodKey("description"), 0.9, 0.20, 3),
             # validation prefers fusion_gating although fusion_attention is better on test: the finding must use fusion_gating
             (MethodKey("fusion_gating", 0), 0.3, 0.50, 4), (MethodKey("fusion_gating", 1), 0.3, 0.50, 5),
             (MethodKey("fusion_attention"), 0.95, 0.40, 6)]
    return {key: method(key, data, hit, val, seed) for key, hit, val, seed in specs}


def graph_cell(name: str, data: PreparedData, hit_share: float, seeds: int) -> dict[MethodKey, MethodResult]:
    """``seeds`` seeds of a graph cell."""
    return {MethodKey(name, s): method(MethodKey(name, s), data, hit_share, 0.1, 10 * s + len(name))
            for s in range(seeds)}


def graph_cell_metrics(scale: str = "default", grid_size: int = 1, wall_s: float = 1.0, model: str = "vbpr",
                       schedule: dict[str, float | int] | None = None) -> GraphCellMetrics:
    """A graph cell's metrics file with the given scale, grid size, wall time, model and schedule (other
    fields small)."""
    entry = MethodMetrics(test={"ndcg@10": 0.25}, validation={"ndcg@10": 0.5}, coverage={"coverage@10": 0.1},
                          chosen={"l2": 0.01, "epochs": 4})
    return GraphCellMetrics(model=model, modalities=["title", "image"], scale=scale, regime="fast",
                            schedule=schedule or {"lr": 0.01, "epochs": 60, "eval_every": 4, "patience": 2},
                            selection="refit",
                            methods={"vbpr-title-image@seed0": entry},
                            training=GraphTraining(best_epoch=4, epochs_run=8, stopped_early=True,
                                                   validation_curve=[[0, 0.1], [4, 0.5], [8, 0.4]],
                                                   grid_size=grid_size),
                            cost=GraphCost(wall_s=wall_s, peak_rss_mb=100.0, methods={}))
