"""The typed stage metrics: saved and loaded back to the same object, written as the same bytes as the
dictionaries the stages wrote before, and a renamed or missing field refused where it is read."""
from __future__ import annotations

import numpy as np
import pydantic
import pytest

from vlm4rec.pipeline.outputs import write_json
from vlm4rec.pipeline.stage_metrics import (AblationCellMetrics, EmbedMetrics, FusionMetrics, GraphCellMetrics,
                                            GroundMetrics, MatchMetrics, MethodMetrics, NewItemMetrics,
                                            PrepareMetrics, RobustnessMetrics, StageMetrics)

from results_helpers import graph_cell_metrics

ENTRY = {"test": {"ndcg@10": 0.25, "recall@20": 0.5}, "validation": {"ndcg@10": 0.5},
         "coverage": {"coverage@10": 0.1}, "chosen": {"l2": 100, "alpha": 0.25}}
NEW_ITEMS = {"counts": {"val_cold_items": 3, "test_cold_items": 4}, "metric": "recall@20",
             "no_signal": {"ease": "no signal"},
             "hybrids": "a note", "methods": {"all": {"title": ENTRY}, "cold": {"title": ENTRY}},
             "chance": {"all": {"test": {"ndcg@10": 0.0625}, "validation": {"ndcg@10": 0.125}}},
             "findings": {"all": [{"method": "d", "p": None, "mean_diff": 0.125}], "cold": []},
             "model_findings": {"collective_ease": {"all": [], "cold": [{"method": "collective_ease-d", "p": 0.5}]}},
             "warm_cost": {"warm": [{"method": "title", "reference": "lightgcn", "mean_diff": -0.25}], "hybrid": []},
             "split_replicas": {"random@seed0": {"counts": {"test_pairs": 3}, "methods": {"cold": {}}, "chance": {}}},
             "cost": {"wall_s": 1.5, "peak_rss_mb": 10.0, "methods": {"title": {"fit_s": 0.1}}}}
COST = {"wall_s": 2.5, "peak_rss_mb": 100.0, "methods": {"title": {"fit_s": 0.1}}}
# What each stage wrote as a plain dictionary, with the value types it writes (numpy integers from pandas
# counts, nulls, integers next to floats).
STAGES: list[tuple[type[StageMetrics], dict]] = [
    (PrepareMetrics, {"dataset": "ml-1m", "universe": "catalogue", "split_protocol": "temporal_ratio",
                      "counts": {"users": 10, "items": 20, "items_without_positives_but_rated": 1},
                      "source_counts": {"interactions": np.int64(300)}, "dropped_in_preparation": {"users": 2},
                      "cost": {"wall_s": 1.25, "peak_rss_mb": 50.0}}),
    (GroundMetrics, {"grounder": {"backend": "tagger", "model": "m", "description_of_method": "a tagger"},
                     "arms": {"image_only": {"ok": 9, "items": 10, "title_mention_rate": 0.5, "wall_s": 1.0}},
                     "cost": {"wall_s": 1.5, "peak_rss_mb": 60.0}}),
    (EmbedMetrics, {"representations": {"title": {"dim": 8, "coverage": 1.0, "fallback": 0, "missing": 0}},
                    "without_content": ["description"], "image_failures": [{"item_idx": 3, "error": "unreadable"}],
                    "cost": {"wall_s": 3.0, "text_s": 1.0, "images_per_s": 12.5}}),
    (MatchMetrics, {"methods": {"title": ENTRY, "ease": ENTRY}, "cost": COST}),
    (RobustnessMetrics, {"protocol": "global_time",
                         "methods": {"title": ENTRY | {"test_with_history": {"ndcg@10": 0.25},
                                                       "cold_start": {"test": {}, "lists": "no such users"}}},
                         "chance": {"test_with_history": {"ndcg@10": 0.0625}},
                         "split": {"test": {"interactions": np.int64(7), "users": np.int64(3)}},
                         "test_users": {"all": 3, "with_history": 3, "cold_start": 0}, "cost": COST}),
    (FusionMetrics, {"methods": {"fusion_gating@seed0": ENTRY},
                     "training": {"gating-0": {"kind": "gating", "seed": 0, "config": {"temperature": 0.1},
                                               "best_epoch": 2, "epochs_run": 5, "stopped_early": True}},
                     "cost": COST | {"train_s": {"gating-0": 0.5}}}),
    (AblationCellMetrics, {"configurations": [{"cell": {"representation": "title", "aggregation": "mean",
                                                        "cap": "all"}, "representation": "title",
                                               "chosen": {"shrink": 0}, "select_metric": "ndcg@10",
                                               "validation": {"ndcg@10": 0.5}, "test": {"ndcg@10": 0.25},
                                               "wall_s": 0.125}],
                           "cost": {"wall_s": 0.125, "peak_rss_mb": 70.0}}),
]


def test_a_saved_metrics_file_loads_back_to_the_same_object(tmp_path) -> None:
    graph = graph_cell_metrics(grid_size=3)
    graph.save(tmp_path / "graph.json")
    assert GraphCellMetrics.load(tmp_path / "graph.json") == graph
    new_items = NewItemMetrics.model_validate(NEW_ITEMS)
    new_items.save(tmp_path / "cold_start.json")
    assert NewItemMetrics.load(tmp_path / "cold_start.json") == new_items


def test_the_json_bytes_are_those_of_the_untyped_dictionary(tmp_path) -> None:
    """What the stages wrote before the schema (a plain dictionary through write_json) and what they write
    now are the same bytes: an integer stays an integer, a null a null."""
    write_json(tmp_path / "old.json", NEW_ITEMS)
    NewItemMetrics.model_validate(NEW_ITEMS).save(tmp_path / "new.json")
    assert (tmp_path / "new.json").read_bytes() == (tmp_path / "old.json").read_bytes()
    graph = graph_cell_metrics().as_json()
    write_json(tmp_path / "old_graph.json", graph)
    GraphCellMetrics.model_validate(graph).save(tmp_path / "new_graph.json")
    assert (tmp_path / "new_graph.json").read_bytes() == (tmp_path / "old_graph.json").read_bytes()


def test_a_renamed_or_missing_field_is_refused_naming_it() -> None:
    with pytest.raises(pydantic.ValidationError, match="hybrid_note"):
        NewItemMetrics.model_validate(NEW_ITEMS | {"hybrid_note": NEW_ITEMS["hybrids"]})
    renamed = {k: v for k, v in ENTRY.items() if k != "chosen"} | {"config": {}}
    with pytest.raises(pydantic.ValidationError, match="chosen"):
        MethodMetrics.model_validate(renamed)


@pytest.mark.parametrize(("model", "payload"), STAGES, ids=[model.__name__ for model, _ in STAGES])
def test_each_stage_writes_the_bytes_of_its_dictionary_and_loads_them_back(tmp_path, model, payload) -> None:
    write_json(tmp_path / "old.json", payload)
    typed = model.model_validate(payload)
    typed.save(tmp_path / "new.json")
    assert (tmp_path / "new.json").read_bytes() == (tmp_path / "old.json").read_bytes()
    assert model.load(tmp_path / "new.json") == typed


@pytest.mark.parametrize(("model", "payload"), STAGES, ids=[model.__name__ for model, _ in STAGES])
def test_each_stage_refuses_a_renamed_field_naming_it(model, payload) -> None:
    first, *_ = sorted(payload)
    renamed = {k: v for k, v in payload.items() if k != first} | {f"{first}_renamed": payload[first]}
    with pytest.raises(pydantic.ValidationError, match=f"{first}_renamed") as error:
        model.model_validate(renamed)
    assert f"\n{first}\n  Field required" in str(error.value)  # and the one it no longer holds
