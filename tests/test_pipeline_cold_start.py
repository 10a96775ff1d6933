"""The new-item stage's glue for the dedicated cold-start recommenders: grids checked before any training, one
warm backbone per seed shared by every model and representation."""
from __future__ import annotations

import pandas as pd
import pytest

from vlm4rec.cold_start import FittedOnce
from vlm4rec.errors import StudyError
from vlm4rec.multimodal import LightGCN
from vlm4rec.pipeline.cold_start import check_model_grids, warm_backbone
from vlm4rec.pipeline.new_item_data import new_item_split

from study_params import section


def test_every_grid_point_is_checked_against_its_model_before_training() -> None:
    check_model_grids(section("cold_start"))  # the repository's grids are valid
    bad = section("cold_start", models=["collective_ease"], model_grids={"collective_ease": {"alpha": [1.0, -2.0]}})
    with pytest.raises(StudyError, match=r"cold_start\.model_grids\.collective_ease: \{'alpha': -2\.0\}"):
        check_model_grids(bad)
    unknown = section("cold_start", models=["additive_ease"], model_grids={"additive_ease": {"depth": [2]}})
    with pytest.raises(StudyError, match="model_grids.additive_ease.*depth"):
        check_model_grids(unknown)
    # a grid of a model the stage does not run is not its concern
    check_model_grids(section("cold_start", models=[], model_grids={"aldi": {"depth": [2]}}))


def test_one_backbone_per_seed_in_the_graph_stages_lightgcn_form() -> None:
    graph = section("graph")
    backbone = warm_backbone(graph, epochs=7)
    first, again, other = backbone(0), backbone(0), backbone(1)
    assert isinstance(first, FittedOnce) and first is again and other is not first
    model = first.model
    assert isinstance(model, LightGCN) and model.epochs == 7 and model.unseen_items == "content"
    assert model.l2 == graph.chosen_scale.grids["lightgcn"]["l2"][0]
    assert model.options.seed == 0 and other.model.options.seed == 1


def test_a_share_that_leaves_no_new_item_on_a_side_names_its_keys() -> None:
    inter = pd.DataFrame({"user_idx": [0, 0, 1], "item_idx": [0, 1, 2], "timestamp": [1, 2, 3],
                          "split": ["train", "test", "test"]})
    with pytest.raises(StudyError, match=r"cold_start.cold_share / cold_start.val_share: 3 items"):
        new_item_split(inter, section("cold_start", cold_share=0.1))
    labelled, val, test = new_item_split(inter, section("cold_start", cold_share=0.67))
    assert val.tolist() == [1] and test.tolist() == [2]
    assert labelled["split"].tolist() == ["train", "val", "test"]
