"""The pure parts of the stage glue (vlm4rec/pipeline/*): grids, names, seed handling, sampling."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vlm4rec.data import RawDataset, dataset_counts, prepare
from vlm4rec.matching import ProfileRecommender
from vlm4rec.pipeline import ablate
from vlm4rec.pipeline.ablate import cell_representation, parse_cell
from vlm4rec.pipeline.stage_metrics import AblationCellMetrics
from vlm4rec.pipeline.study_files import cell_name
from vlm4rec.pipeline.prepare import rated_items_without_positive, sample_users, split_protocol
from vlm4rec.pipeline.profiles import profile_candidates
from vlm4rec.splits import SplitConfig

from study_params import section


def test_profile_candidates_try_the_knob_of_the_chosen_aggregation() -> None:
    vectors = np.eye(3, dtype=np.float32)
    profile = section("profile", aggregation="recency", history_cap=5, half_life_grid=[2, 8], knn_k_grid=[1])
    candidates = profile_candidates(vectors, profile, "title")
    assert [c.config for c in candidates] == [
        {"aggregation": "recency", "history_cap": 5, "half_life": 2},
        {"aggregation": "recency", "history_cap": 5, "half_life": 8}]
    model = candidates[1].build()
    assert isinstance(model, ProfileRecommender) and model.half_life == 8 and model.history_cap == 5
    assert [c.config for c in profile_candidates(vectors, profile.model_copy(update={"aggregation": "mean"}), "t")] == [
        {"aggregation": "mean", "history_cap": 5}]


def test_cell_names_and_representations() -> None:
    grounded = {"representation": "description", "arm": "image_only", "aggregation": "mean", "cap": "all"}
    assert cell_name(grounded) == "description-image_only-mean-all"
    assert cell_representation(grounded) == "description_image_only"
    plain = {"representation": "image", "aggregation": "knn_sum", "cap": 20}
    assert cell_name(plain) == "image-knn_sum-20" and cell_representation(plain) == "image"


def test_the_ablations_stage_writes_its_plot_table_ordered_by_validation(tmp_path, monkeypatch) -> None:
    """Three configurations of two representations: ordered by validation NDCG (not test), the best per
    representation selected, each labelled for the bar plot, and the file holds the returned table."""
    monkeypatch.chdir(tmp_path)

    def row(representation: str, aggregation: str, val: float, test: float) -> dict:
        return {"cell": {"representation": representation, "aggregation": aggregation, "cap": "all"},
                "representation": representation, "chosen": {}, "select_metric": "ndcg@10",
                "validation": {"ndcg@10": val}, "test": {"ndcg@10": test}, "wall_s": 1.0}

    for name, rows in {"title": [row("title", "mean", 0.2, 0.9), row("title", "recency", 0.3, 0.1)],
                       "image": [row("image", "mean", 0.25, 0.5)],
                       "title_meta": [row("title_meta", "mean", 0.9, 0.9)]}.items():  # a cell params no longer names
        AblationCellMetrics.model_validate({"configurations": rows, "cost": {}}).save(AblationCellMetrics.path(name))
    cells = ablate.run(section("ablation", grounded=[], ungrounded=["title", "image"]))
    assert cells["cell"].tolist() == ["title / recency / cap all", "image / mean / cap all", "title / mean / cap all"]
    assert cells["selected"].tolist() == [True, True, False]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "plots" / "ablations.csv"), cells)


def test_parse_cell_reads_yaml_scalars() -> None:
    assert parse_cell(["cap=20", "arm=image_only", "x=all"]) == {"cap": 20, "arm": "image_only", "x": "all"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_cell(["cap"])


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


def test_items_rated_below_the_threshold_are_counted_apart_from_never_rated_ones() -> None:
    """Items a, b, c, d: a has a positive, b only a rating of 2, c a positive of a user dropped for too few
    positives, d no rating at all. Without a positive: b, c, d; of those rated: b and c."""
    inter = pd.DataFrame({"user_id": ["u", "u", "u", "v"], "item_id": ["a", "a2", "b", "c"],
                          "rating": [5.0, 5.0, 2.0, 5.0], "timestamp": [1, 2, 3, 4]})
    items = pd.DataFrame({"item_id": ["a", "a2", "b", "c", "d"], "title": list("AXBCD")})
    raw = RawDataset("t", inter, items)
    prepared = prepare(raw, min_rating=4, min_positives=2, split=SplitConfig(), universe="catalogue")
    assert dataset_counts(prepared)["items_without_positives"] == 3
    assert rated_items_without_positive(raw, prepared) == 2
    assert split_protocol(raw, section("split", protocol="temporal_ratio")) == "temporal_ratio"
    given = RawDataset("t", inter.assign(split="train"), items)
    assert split_protocol(given, section("split", protocol="temporal_ratio")) == "source"
