"""The new-item stage's glue: the dedicated cold-start recommenders' grids checked before any training, one warm
backbone per seed shared by every model and representation, and the random item split's replicas (what each
re-runs, a seeded method's mean over its seeds)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from vlm4rec.cold_start import CANDIDATE_SETS, NEW_ITEM_SETS, FittedOnce
from vlm4rec.errors import StudyError
from vlm4rec.evaluation import MethodKey
from vlm4rec.multimodal import LightGCN
from vlm4rec.pipeline import cold_start as stage
from vlm4rec.pipeline.cold_start import check_content_names, check_model_grids, split_replicas, warm_backbone
from vlm4rec.pipeline.new_item_data import new_item_split
from vlm4rec.representations import Representation

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


def test_every_representation_fed_to_a_model_is_checked_before_training(tmp_path, monkeypatch) -> None:
    embeddings = tmp_path / "data" / "embeddings"
    embeddings.mkdir(parents=True)
    for name in ("title", "image"):
        Representation(name, np.eye(3, dtype=np.float32), source="test", coverage=1.0, n_fallback=0,
                       n_missing=0).save(embeddings)
    monkeypatch.chdir(tmp_path)
    graph = section("graph", cells={"vbpr-title-image": {"model": "vbpr", "modalities": ["title", "image"]}})
    check_content_names(section("cold_start", model_content=["title"], graph_cells=["vbpr-title-image"]), graph)
    with pytest.raises(StudyError, match=r"cold_start.model_content names 'genres'.*title"):
        check_content_names(section("cold_start", model_content=["title", "genres"], graph_cells=[]), graph)
    graph = section("graph", cells={"vbpr-x-image": {"model": "vbpr", "modalities": ["x", "image"]}})
    with pytest.raises(StudyError, match=r"graph.cells.vbpr-x-image.modalities names 'x'"):
        check_content_names(section("cold_start", model_content=["title"], graph_cells=["vbpr-x-image"]), graph)


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


def _result(recall: float, ndcg: float) -> SimpleNamespace:
    """A stand-in for a MethodResult: only its test summary is read."""
    return SimpleNamespace(test_summary=lambda: {"recall@20": recall, "ndcg@10": ndcg})


class _Split:
    """A new-item split whose settings' test splits are named after the replica's seed and the setting."""

    def __init__(self, seed: int):
        self.seed = seed

    def with_candidates(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(test=lambda: (self.seed, name))


@pytest.mark.parametrize("replica_methods", ["profiles", "all"])
def test_each_random_split_reruns_the_methods_its_switch_names(monkeypatch, replica_methods: str) -> None:
    drawn, scored = [], []

    def new_item_data(cold_start, evaluation):
        assert cold_start.variant == "random"
        drawn.append(cold_start.seed)
        return _Split(cold_start.seed), {"test_items": cold_start.seed}

    def score_methods(data, evaluation, cold_start, fusion, graph, out_dir):
        assert out_dir is None  # the replicas save nothing under data/results
        scored.append(data.seed)
        seeds = {MethodKey("gating", 0): _result(data.seed, 0.0), MethodKey("gating", 1): _result(data.seed + 1, 0.0)}
        return {name: seeds for name in CANDIDATE_SETS}

    monkeypatch.setattr(stage, "new_item_data", new_item_data)
    monkeypatch.setattr(stage, "score_methods", score_methods)
    loaded = []
    monkeypatch.setattr(stage, "load_vectors",
                        lambda directory, name, key: loaded.append(name) or np.eye(3, dtype=np.float32))
    monkeypatch.setattr(stage, "evaluate", lambda model, split, ks: (None, (model.name, split)))
    monkeypatch.setattr(stage, "chance_per_user", lambda split, ks: split)
    monkeypatch.setattr(stage, "summarize", lambda split: {"summary of": split})
    cold = section("cold_start", split_seeds=[3, 5], replica_methods=replica_methods)
    out = split_replicas(section("eval"), cold, section("fusion"), section("graph"))
    assert drawn == [3, 5] and list(out) == ["random@seed3", "random@seed5"]
    replica = out["random@seed5"]
    assert replica["counts"] == {"test_items": 5}
    if replica_methods == "all":
        assert scored == [3, 5] and list(replica["methods"]) == list(CANDIDATE_SETS)
        assert replica["methods"]["warm"] == {"gating": {"recall@20": 5.5, "ndcg@10": 0.0}}
    else:
        assert scored == [] and list(replica["methods"]) == list(NEW_ITEM_SETS)
        assert loaded == cold.model_content  # each representation read once, not once per split and setting
        assert replica["methods"]["cold"] == {rep: {"summary of": (rep, (5, "cold"))} for rep in cold.model_content}
    assert replica["chance"] == {name: {"summary of": (5, name)} for name in replica["methods"]}
