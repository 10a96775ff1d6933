"""The pure parts of the stage glue (vlm4rec/pipeline/*): grids, names, seed handling, sampling."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vlm4rec.data import RawDataset
from vlm4rec.matching import ProfileRecommender
from vlm4rec.pipeline.ablate import cell_name, cell_representation
from vlm4rec.pipeline.common import collapse_seeds, method_family, profile_candidates
from vlm4rec.pipeline.fuse import seed_method, simplex_grid
from vlm4rec.pipeline.match import baseline_candidates
from vlm4rec.pipeline.prepare import sample_users


def test_simplex_grid_enumerates_every_weight_vector_summing_to_one() -> None:
    grid = simplex_grid(["a", "b", "c"], 0.5)
    assert sorted(tuple(w.values()) for w in grid) == sorted(
        [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)])
    assert len(simplex_grid(["a", "b", "c"], 0.25)) == 15  # C(4 + 2, 2)
    with pytest.raises(ValueError, match="divide 1"):
        simplex_grid(["a"], 0.3)


def test_profile_candidates_try_the_knob_of_the_chosen_aggregation() -> None:
    vectors = np.eye(3, dtype=np.float32)
    profile = {"aggregation": "recency", "history_cap": 5, "half_life_grid": [2, 8], "knn_k_grid": [1]}
    candidates = profile_candidates(vectors, profile, "title")
    assert [c.config for c in candidates] == [
        {"aggregation": "recency", "history_cap": 5, "half_life": 2},
        {"aggregation": "recency", "history_cap": 5, "half_life": 8}]
    model = candidates[1].build()
    assert isinstance(model, ProfileRecommender) and model.half_life == 8 and model.history_cap == 5
    assert [c.config for c in profile_candidates(vectors, profile | {"aggregation": "mean"}, "t")] == [
        {"aggregation": "mean", "history_cap": 5}]


def test_baseline_candidates_cover_the_params_grid() -> None:
    grid = {"itemknn_cf": {"k_neighbours": [10, 20], "shrinkage": [0, 5]}, "ease": {"l2": [1.0]}}
    assert len(baseline_candidates("itemknn_cf", grid)) == 4
    assert baseline_candidates("ease", grid)[0].build().l2 == 1.0
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_candidates("bpr", grid)


def test_cell_names_and_representations() -> None:
    grounded = {"representation": "description", "arm": "image_only", "aggregation": "mean", "cap": "all"}
    assert cell_name(grounded) == "description-image_only-mean-all"
    assert cell_representation(grounded) == "description_image_only"
    plain = {"representation": "image", "aggregation": "knn_sum", "cap": 20}
    assert cell_name(plain) == "image-knn_sum-20" and cell_representation(plain) == "image"


def test_collapse_seeds_averages_each_user_over_seeds_and_keeps_other_methods() -> None:
    per_user = pd.DataFrame({
        "method": [seed_method("gating", 0)] * 2 + [seed_method("gating", 1)] * 2 + ["title"] * 2,
        "user_idx": [0, 1, 0, 1, 0, 1], "recall@10": [0.0, 1.0, 1.0, 1.0, 0.5, 0.25]})
    collapsed = collapse_seeds(per_user).set_index(["method", "user_idx"])["recall@10"]
    assert collapsed.to_dict() == {("fusion_gating", 0): 0.5, ("fusion_gating", 1): 1.0,
                                   ("title", 0): 0.5, ("title", 1): 0.25}
    assert method_family("fusion_gating@seed1") == "fusion_gating" and method_family("ease") == "ease"


def test_sample_users_is_seeded_and_keeps_every_row_of_the_sampled_users() -> None:
    inter = pd.DataFrame({"user_id": [str(u) for u in range(10) for _ in range(3)], "item_id": "i",
                          "rating": 5.0, "timestamp": 0})
    raw = RawDataset("t", inter, pd.DataFrame({"item_id": ["i"]}))
    first, again = sample_users(raw, 4, seed=1), sample_users(raw, 4, seed=1)
    assert first.interactions["user_id"].nunique() == 4
    assert first.interactions.equals(again.interactions)
    assert (first.interactions.groupby("user_id").size() == 3).all()
    assert first.counts["sampled_users"] == 4
    assert sample_users(raw, None, seed=1) is raw
