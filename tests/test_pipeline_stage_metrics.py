"""The typed stage metrics: saved and loaded back to the same object, written as the same bytes as the
dictionaries the stages wrote before, and a renamed or missing field refused where it is read."""
from __future__ import annotations

import pydantic
import pytest

from vlm4rec.pipeline.outputs import write_json
from vlm4rec.pipeline.stage_metrics import GraphCellMetrics, MethodMetrics, NewItemMetrics

from results_helpers import graph_cell_metrics

ENTRY = {"test": {"ndcg@10": 0.25, "recall@20": 0.5}, "validation": {"ndcg@10": 0.5},
         "coverage": {"coverage@10": 0.1}, "chosen": {"l2": 100, "alpha": 0.25}}
NEW_ITEMS = {"counts": {"val_cold_items": 3, "test_cold_items": 4}, "no_signal": {"ease": "no signal"},
             "hybrids": "a note", "methods": {"all": {"title": ENTRY}, "cold": {"title": ENTRY}},
             "chance": {"all": {"test": {"ndcg@10": 0.0625}, "validation": {"ndcg@10": 0.125}}},
             "findings": {"all": [{"method": "d", "p": None, "mean_diff": 0.125}], "cold": []},
             "cost": {"wall_s": 1.5, "peak_rss_mb": 10.0, "methods": {"title": {"fit_s": 0.1}}}}


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
