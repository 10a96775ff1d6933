"""The new-item tables built once from the new-item metrics (vlm4rec/pipeline/new_item_tables.py): seeds
grouped, ordered by validation, and the cold_start stage's plot data the same bytes as when it was built from
the results in memory."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from results_helpers import EVAL, prepared, study
from vlm4rec import tables
from vlm4rec.evaluation import ChanceReference, EvalData
from vlm4rec.pipeline.cold_start import chance_json
from vlm4rec.pipeline.new_item_tables import new_item_curves, new_item_table, split_spread_table
from vlm4rec.pipeline.stage_metrics import ChanceMetrics, MethodMetrics, NewItemMetrics


def test_new_item_tables_group_the_seeds_named_in_the_metrics() -> None:
    def entry(recall: float, validation: float) -> MethodMetrics:
        return MethodMetrics(test={"recall@20": recall, "ndcg@20": recall / 2}, validation={"ndcg@10": validation},
                             coverage={}, chosen={})

    methods = {"all": {"title": entry(0.5, 0.1), "fusion_gating@seed0": entry(0.25, 0.3),
                       "fusion_gating@seed1": entry(0.75, 0.3)}}
    methods["cold"] = {name: entry(2 * e.test["recall@20"], e.validation["ndcg@10"])
                       for name, e in methods["all"].items()}
    chance = ChanceMetrics(test={"recall@20": 0.01, "ndcg@20": 0.005}, validation={"ndcg@10": 0.2})
    new_items = NewItemMetrics(counts={}, metric="recall@20", no_signal={"ease": "no signal"}, hybrids="",
                               methods=methods,
                               chance={"all": chance, "cold": chance}, findings={}, model_findings={}, warm_cost={},
                               split_replicas={}, cost={})
    table = new_item_table(["recall@20"], new_items)
    assert table.loc["fusion_gating", "recall@20 (all)"] == 0.5 and table.loc["fusion_gating", "seeds"] == 2
    assert table.loc["fusion_gating", "recall@20 (cold)"] == 1.0
    assert table.loc["title", "seeds"] == 1 and table.loc["chance", "seeds"] == 1
    assert list(table.columns) == ["seeds", "validation", "recall@20 (all)", "recall@20 (cold)", "note"]
    assert table.loc["ease", "note"] == "no signal"
    # ordered by validation (fusion 0.3, chance 0.2, title 0.1), although the title is better on test
    assert list(table.index) == ["fusion_gating", "chance", "title", "ease"]
    curves = new_item_curves(new_items).query("candidates == 'all'").set_index("method")
    assert list(curves.columns) == ["k", "recall", "ndcg", "candidates"]
    assert curves.loc["fusion_gating", ["k", "recall", "ndcg", "candidates"]].tolist() == [20, 0.5, 0.25, "all"]
    assert curves.loc["chance", "recall"] == 0.01


def test_the_stage_plot_data_keeps_the_bytes_it_had_when_built_from_the_results(tmp_path) -> None:
    """What the cold_start stage wrote from its results and chance in memory (per candidate set, recall and
    NDCG curves merged) and what it writes now from the metrics it saves: the same CSV bytes."""
    data = prepared()
    results = study(data)
    split = EvalData.from_prepared(data)
    chance = ChanceReference.of(split.validation(), split.test(), [5, 10])
    sets = ("all", "cold")
    recall, ndcg = tables.metric_curves(results, "recall", chance), tables.metric_curves(results, "ndcg", chance)
    before = pd.concat([recall.merge(ndcg, on=["method", "k"]).assign(candidates=name) for name in sets],
                       ignore_index=True)
    before.to_csv(tmp_path / "before.csv", index=False)
    metrics = NewItemMetrics(counts={}, metric="recall@20", no_signal={}, hybrids="", findings={}, model_findings={},
                             warm_cost={},
                             split_replicas={}, cost={},
                             methods={name: tables.test_metrics_json(results) for name in sets},
                             chance={name: chance_json(chance, EVAL.select_metric) for name in sets})
    new_item_curves(metrics).to_csv(tmp_path / "after.csv", index=False)
    assert (tmp_path / "after.csv").read_bytes() == (tmp_path / "before.csv").read_bytes()
    # read back from the file (the report's way), the same rows, in the file's (sorted) method order
    metrics.save(tmp_path / "cold_start.json")
    loaded = new_item_curves(NewItemMetrics.load(tmp_path / "cold_start.json"))
    rows = ["candidates", "method", "k"]
    pd.testing.assert_frame_equal(loaded.sort_values(rows, ignore_index=True),
                                  before.sort_values(rows, ignore_index=True))


def test_the_split_spread_gives_each_replica_and_their_mean_sd_and_range() -> None:
    def entry(recall: float) -> MethodMetrics:
        return MethodMetrics(test={"recall@20": recall}, validation={"ndcg@10": 0.0}, coverage={}, chosen={})

    def replica(title: float, image: float, chance: float) -> dict:
        return {"counts": {}, "methods": {"cold": {"title": {"recall@20": title}, "image": {"recall@20": image}}},
                "chance": {"cold": {"recall@20": chance}}}

    chance = ChanceMetrics(test={"recall@20": 0.1}, validation={"ndcg@10": 0.0})
    new_items = NewItemMetrics(counts={}, metric="recall@20", no_signal={}, hybrids="", findings={},
                               model_findings={}, warm_cost={},
                               methods={"cold": {"title": entry(0.5), "image": entry(0.2)}}, chance={"cold": chance},
                               split_replicas={"random@seed0": replica(0.3, 0.4, 0.1),
                                               "random@seed1": replica(0.5, 0.1, 0.2),
                                               "random@seed2": replica(0.4, 0.1, 0.15)}, cost={})
    table = split_spread_table("recall@20", new_items)
    assert list(table.index) == ["title", "image", "chance"]  # by the random splits' mean: 0.4, 0.2, 0.15
    assert table.loc["title"].tolist() == pytest.approx([0.5, 0.3, 0.5, 0.4, 0.4, 0.1, 0.3, 0.5])
    assert table.loc["image", "sd"] == pytest.approx(np.std([0.4, 0.1, 0.1], ddof=1))
    assert table.loc["chance", "recall@20 (stage split)"] == 0.1
    assert split_spread_table("recall@20", new_items.model_copy(update={"split_replicas": {}})).empty
    assert split_spread_table("recall@20", new_items, "warm").empty  # no replica holds the warm setting


def test_a_seeded_family_on_the_stage_split_is_the_mean_over_its_seeds() -> None:
    def entry(recall: float) -> MethodMetrics:
        return MethodMetrics(test={"recall@20": recall}, validation={"ndcg@10": 0.0}, coverage={}, chosen={})

    chance = ChanceMetrics(test={"recall@20": 0.1}, validation={"ndcg@10": 0.0})
    replica = {"counts": {}, "methods": {"cold": {"fusion_gating": {"recall@20": 0.3}}},
               "chance": {"cold": {"recall@20": 0.1}}}
    new_items = NewItemMetrics(counts={}, metric="recall@20", no_signal={}, hybrids="", findings={},
                               model_findings={}, warm_cost={}, chance={"cold": chance},
                               methods={"cold": {"fusion_gating@seed0": entry(0.2), "fusion_gating@seed1": entry(0.5)}},
                               split_replicas={"random@seed0": replica, "random@seed1": replica}, cost={})
    table = split_spread_table("recall@20", new_items)
    assert table.loc["fusion_gating", "recall@20 (stage split)"] == pytest.approx(0.35)
