"""The report stage's glue (vlm4rec/pipeline/report.py): stage outputs read back, caveats from them, the
report's metrics written, tables formatted for the notebook. The statistics are tested in test_findings.py."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from results_helpers import EVAL, FINDINGS, graph_cell, graph_cell_metrics, prepared, study
from study_params import REPO
from vlm4rec.config import GraphCellParams, GraphParams, MatchParams, ReportParams
from vlm4rec.data import PreparedData
from vlm4rec.evaluation import ChanceReference, MethodKey, MethodResult, save_result, study_chance
from vlm4rec.cold_start import new_item_findings
from vlm4rec.findings import Finding, findings
from vlm4rec.pipeline import report
from vlm4rec.errors import StudyError
from vlm4rec.pipeline.cold_start import json_records
from vlm4rec.pipeline.outputs import read_metrics
from vlm4rec.pipeline.stage_metrics import (EmbedMetrics, FusionMetrics, GraphCellMetrics, GroundMetrics,
                                            MatchMetrics, NewItemMetrics, PrepareMetrics,
                                            RobustnessMetrics)
from vlm4rec.pipeline.study_files import StudyFiles
from vlm4rec.splits import targets_of


@pytest.fixture(scope="module")
def setup() -> tuple[dict[MethodKey, MethodResult], PreparedData]:
    data = prepared()
    return study(data), data


def write_metrics(root: Path, name: str, payload: dict) -> None:
    path = root / "metrics" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def ground_metrics(backend: str, description: str, arms: dict) -> GroundMetrics:
    return GroundMetrics(grounder={"backend": backend, "model": "m", "description_of_method": description},
                         arms=arms, cost={})


def save_caveat_inputs() -> None:
    """The ground, prepare and fusion metrics the report's caveats read: an LVLM, a global time split, no
    learned fusion."""
    ground_metrics("hf", "an LVLM", {}).save(GroundMetrics.path())
    PrepareMetrics(dataset="d", universe="catalogue", split_protocol="global_time", counts={}, source_counts={},
                   dropped_in_preparation={}, cost={}).save(PrepareMetrics.path())
    FusionMetrics(methods={}, training={}, cost={}).save(FusionMetrics.path())


def test_caveats_name_the_grounder_the_split_and_the_robustness_check() -> None:
    grounding = ground_metrics("tagger", "tagger (not an LVLM)",
                               {"image_only": {"ok": 90, "items": 100, "title_mention_rate": 0.05}})
    robustness = pd.DataFrame({"study_split": [0.3, 0.2, 0.1], "global_time": [0.2, 0.25, 0.05]})
    notes = report.caveats(grounding, "temporal_ratio", robustness,
                           cold_start={"all": 1785, "with_history": 1125, "cold_start": 660})
    assert notes[0] == "Every description comes from: tagger (not an LVLM)."
    assert any("not a vision-language model" in n for n in notes)
    assert any("90 of 100 items described; 5.0%" in n for n in notes)
    assert any("Kendall's tau between the two protocols' orderings of 3 methods (global time cut: users with a "
               "history only): 0.33" in n for n in notes)
    assert any(n.startswith("Under the global time cut 660 of 1,785 test users (37%) have no history") for n in notes)
    assert not any("favours" in n for n in notes)
    assert report.caveats(grounding, "source", None)[-1] == \
        "The split is the source's own (split.protocol was not applied)."
    assert report.caveats(grounding, "global_time", None, more=[None, "extra"])[-1] == "extra"
    assert not any("global time cut" in n for n in report.caveats(grounding, "global_time", None))
    assert not any("epoch cap" in n for n in notes)


def test_runs_that_reached_their_epoch_cap_are_named_in_a_caveat(setup) -> None:
    results, _ = setup
    title = results[MethodKey("title")]
    curve = {"curve": [[0, 0.1], [4, 0.2]], "train_loss": [1.0] * 4, "best_epoch": 4, "epochs_run": 4}
    graph = {MethodKey("lightgcn", 0): replace(title, training=curve | {"stopped_early": False}),
             MethodKey("lightgcn", 1): replace(title, training=curve | {"stopped_early": False}),
             MethodKey("vbpr-title-image", 0): replace(title, training=curve | {"stopped_early": True})}
    fusion = {"a": {"kind": "gating", "seed": 2, "config": {"temperature": 0.1}, "stopped_early": False},
              "b": {"kind": "attention", "seed": 0, "config": {"temperature": 0.1}, "stopped_early": True}}
    capped = report.runs_at_epoch_cap(results | graph, fusion)
    assert capped == ["lightgcn", 'fusion_gating seed 2 {"temperature": 0.1}']
    grounding = ground_metrics("hf", "an LVLM", {})
    note = report.caveats(grounding, "global_time", None, capped)[-1]
    assert note.startswith("2 training run(s) reached their epoch cap") and "lightgcn; fusion_gating seed 2" in note
    assert list(report.graph_training_curves(graph)["cell"]) == ["lightgcn", "lightgcn", "vbpr-title-image",
                                                                 "vbpr-title-image"]  # seeds share selection


def test_report_metrics_write_an_untested_p_as_null(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    finding = Finding("x", "q?", "a", "b", "ndcg@10", "all", 10, (1, 1), 0.1, 0.05, 0.2, float("nan"), "one seed")
    report.write_report_metrics([finding], ["note"])
    written = json.loads((tmp_path / "metrics" / "report.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert written["findings"]["x"]["p"] is None and written["findings"]["x"]["seeds"] == [1, 1]
    assert written["findings"]["x"]["answer"].startswith("not tested (one seed)")
    assert written["findings"]["x"]["verdict"] == "not tested (one seed)" and not written["findings"]["x"]["confirmatory"]


def test_the_stage_writes_the_findings_and_their_caveats(tmp_path, monkeypatch, setup) -> None:
    results, data = setup
    monkeypatch.chdir(tmp_path)
    save_caveat_inputs()
    params = ReportParams(findings=FINDINGS, references=["title"], gallery_methods=[], slice_methods=[],
                          gallery_users=0)
    graph = GraphParams.model_construct(cells={})  # the report stage's graph section holds only graph.cells
    found, notes = report.write_findings(results, data, EVAL, MatchParams(representations=["title", "image",
                                         "description"], reference="title"), graph, params, ["data/results/match/x"])
    assert [f.id for f in found] == [f.id for f in findings(results, EVAL, FINDINGS, ["title", "image",
                                                                                     "description"], data)]
    assert notes == ["Every description comes from: an LVLM.", "1 result folder(s) or metrics file(s) on disk are not "
                     "part of the study params.yaml describes (left by an earlier run) and were ignored: "
                     "data/results/match/x."]
    written = read_metrics("report")
    assert sorted(written["findings"]) == sorted(f.id for f in found) and written["caveats"] == notes
    assert written["ignored"] == ["data/results/match/x"]
    assert written["findings"]["description_vs_title"]["difference"] == found[1].difference


def test_the_graph_table_formats_each_models_comparison_and_its_cost(tmp_path, monkeypatch, setup) -> None:
    results, data = setup
    monkeypatch.chdir(tmp_path)
    cells = {"vbpr-title-image": GraphCellParams(model="vbpr", modalities=["title", "image"]),
             "vbpr-description-image": GraphCellParams(model="vbpr", modalities=["description", "image"])}
    for cell, seconds in (("vbpr-title-image", 1.25), ("vbpr-description-image", 2.5)):
        graph_cell_metrics(wall_s=seconds).save(GraphCellMetrics.path(cell))
    graph = graph_cell("vbpr-title-image", data, 0.2, 1) | graph_cell("vbpr-description-image", data, 0.9, 2)
    found = findings(results | graph, EVAL, FINDINGS, ["title", "image", "description"], data, cells)
    table = report.graph_table(results | graph, EVAL, FINDINGS, cells, data, found)
    row = table.loc["VBPR"]
    assert row["cells"] == "vbpr-description-image vs vbpr-title-image" and row["seeds"] == "2 vs 1"
    assert row["ndcg@10: p"] == "not tested: one seed"
    assert row["wall_s (both cells)"] == 3.8  # round(3.75, 1)
    assert report.graph_table(results, EVAL, FINDINGS, cells, data, found[:1]).empty


def test_the_report_reads_exactly_the_named_results_and_lists_the_others_as_ignored(tmp_path, monkeypatch,
                                                                                    setup) -> None:
    results, data = setup
    monkeypatch.chdir(tmp_path)
    shutil.copy2(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    for cell, hit in (("vbpr-title-image", 0.2), ("smore-description", 0.5)):  # the second is stale
        for key, r in graph_cell(cell, data, hit, 2).items():
            save_result(r, tmp_path / "data" / "results" / "graph" / cell / key.name)
        write_metrics(tmp_path, f"graph/{cell}", {})
    for method in ("title", "image"):  # image is no longer in params
        save_result(results[MethodKey(method)], tmp_path / "data" / "results" / "match" / method)
    graph = Path("data/results/graph/vbpr-title-image")
    study = StudyFiles((Path("data/results/match/title"), graph / "vbpr-title-image@seed0",
                        graph / "vbpr-title-image@seed1"), (Path("metrics/graph/vbpr-title-image.json"),))
    loaded = report.load_all_results(study)
    assert list(loaded) == [MethodKey("title"), MethodKey("vbpr-title-image", 0), MethodKey("vbpr-title-image", 1)]
    assert loaded[MethodKey("vbpr-title-image", 1)].key == MethodKey("vbpr-title-image", 1)
    assert study.ignored() == ["data/results/graph/smore-description/smore-description@seed0",
                               "data/results/graph/smore-description/smore-description@seed1",
                               "data/results/match/image", "metrics/graph/smore-description.json"]
    assert report.ignored_note(study.ignored()).startswith("4 result folder(s) or metrics file(s) on disk are not")
    (tmp_path / "metrics/graph/vbpr-title-image.json").unlink()
    shutil.rmtree(tmp_path / "data/results/match/title")
    with pytest.raises(StudyError, match=r"^the study params.yaml describes lacks 2 output\(s\): data/results/match/"
                                         r"title \(run `dvc repro` or the match stage first\); metrics/graph/"
                                         r"vbpr-title-image.json \(run `dvc repro` or the graph@vbpr-title-image "
                                         r"stage first\)$"):
        report.load_all_results(study)


def test_coverage_and_chosen_configurations_are_per_family(tmp_path, monkeypatch, setup) -> None:
    results, _ = setup
    monkeypatch.chdir(tmp_path)
    EmbedMetrics(representations={"title": {"coverage": 0.75}}, without_content=[], image_failures=[],
                 cost={}).save(EmbedMetrics.path())
    seeded = {key: replace(r, coverage={"coverage@10": 0.1 * (1 + (key.seed or 0))}, config={"s": key.seed})
              for key, r in results.items()}
    coverage = report.coverage_columns(seeded)
    assert coverage.loc["fusion_gating", "catalogue_coverage@10"] == pytest.approx((0.1 + 0.2) / 2)
    assert coverage.loc["title", "item_coverage"] == 0.75 and np.isnan(coverage.loc["fusion_gating", "item_coverage"])
    assert report.chosen_configurations(seeded)["fusion_gating"] == '{"s": 0}'


def test_robustness_compares_users_with_history_and_reports_cold_start_apart(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    entry = {"coverage": {}, "chosen": {}}
    main = {m: entry | {"test": {"ndcg@10": t}, "validation": {"ndcg@10": v}}
            for m, t, v in (("ease", 0.30, 0.20), ("title", 0.10, 0.25))}
    MatchMetrics.model_validate({"methods": main, "cost": {}}).save(MatchMetrics.path())
    robustness = RobustnessMetrics.model_validate({
        "protocol": "global_time", "test_users": {"all": 10, "with_history": 6, "cold_start": 4}, "split": {},
        "methods": {"ease": entry | {"test": {"ndcg@10": 0.05}, "validation": {},
                                     "test_with_history": {"ndcg@10": 0.08},
                                     "cold_start": {"test": {"ndcg@10": 0.01}, "lists": "one list for all"}},
                    "title": entry | {"test": {"ndcg@10": 0.06}, "validation": {},
                                      "test_with_history": {"ndcg@10": 0.09},
                                      "cold_start": {"test": {"ndcg@10": 0.0}, "lists": "tied"}}},
        "chance": {"test_with_history": {"ndcg@10": 0.015}}, "cost": {}})
    table = report.robustness_table("ndcg@10", robustness)
    assert list(table.index) == ["title", "ease"]  # by the study split's validation, not by test
    assert list(table["global_time"]) == [0.09, 0.08] and list(table["rank (study_split)"]) == [2, 1]
    cold = report.cold_start_table("ndcg@10", robustness)
    assert cold.loc["ease", "lists"] == "one list for all" and cold.loc["title", "test ndcg@10"] == 0.0
    assert report.robustness_table("ndcg@10", None) is None
    assert report.load_robustness() is None
    chance_values = pd.DataFrame({"user_idx": [0, 1], "ndcg@10": [0.01, 0.03]})  # mean 0.02
    with_chance = report.robustness_table("ndcg@10", robustness, ChanceReference(chance_values * [1, 11], chance_values))
    assert list(with_chance.index) == ["title", "chance", "ease"]  # chance's validation 0.22 sits between
    assert with_chance.loc["chance", ["study_split", "global_time"]].tolist() == pytest.approx([0.02, 0.015])


def test_graph_tuning_note_says_where_single_configurations_were_tuned(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for cell, size in (("lightgcn", 1), ("vbpr-title-image", 4)):
        graph_cell_metrics(scale="default", grid_size=size).save(GraphCellMetrics.path(cell))
    note = report.graph_tuning_note(["lightgcn", "vbpr-title-image"])
    assert note.startswith("1 graph cell(s) trained one configuration each (graph.scale: default)")
    assert report.GRAPH_TUNING_RECORD in note and note.endswith("Cells: lightgcn.")
    assert report.graph_tuning_note(["vbpr-title-image"]) is None


def test_graph_schedule_note_shows_each_models_schedule_and_the_selection_protocol(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    common = {"lr": 0.05, "lr_decay": 1.0, "lr_decay_step": 50.0, "epochs": 60, "eval_every": 4, "patience": 2}
    graph_cell_metrics(model="lightgcn", schedule=common).save(GraphCellMetrics.path("lightgcn"))
    assert report.graph_schedule_note(["lightgcn", "not-run"]).startswith("The graph models share one schedule")
    graph_cell_metrics(model="smore", schedule=common | {"lr_decay": 0.96}).save(GraphCellMetrics.path("smore-x"))
    note = report.graph_schedule_note(["lightgcn", "smore-x"])
    assert note.startswith("The graph models do not share one schedule, so a difference between two models")
    assert ("lightgcn: Adam lr 0.05, at most 60 epochs, a validation check every 4, stop after 2 checks without "
            "gain; smore: Adam lr 0.05 x 0.96 per 50 epochs, at most 60 epochs") in note
    assert note.endswith("Tested after graph.selection: refit (docs/protocol.md, section 6).")
    assert report.graph_schedule_note(["not-run"]) is None


def test_regime_gap_note_gives_each_models_gap_and_the_caveats_of_the_2_percent_rule() -> None:
    """Gaps from the settled levels' means over seeds (hand-computed): LightGCN 0.0712 / 0.0720 - 1 = -1.1%,
    VBPR 0.0700 / 0.0725 - 1 = -3.4% (beyond the rule); FREEDOM has no paper run, SMORE no record."""
    runs = lambda *settled: [{"seed": seed, "settled": value} for seed, value in enumerate(settled)]
    record = {"models": {"lightgcn": {"fast": runs(0.0710, 0.0714), "paper": runs(0.0720)},
                         "vbpr": {"fast": runs(0.0700), "paper": runs(0.0720, 0.0730)},
                         "freedom": {"fast": runs(0.0750), "paper": []}}}
    note = report.regime_gap_note(record, {"lightgcn", "vbpr", "freedom", "smore"})
    assert "LightGCN -1.1% (2 vs 1 seed(s)); VBPR -3.4% (1 vs 2 seed(s))." in note
    assert "More than the study's 2% below the paper regime: VBPR; their findings carry this caveat" in note
    assert note.endswith("Regime gap not measured with the study's options: FREEDOM, SMORE; their findings carry "
                         "that caveat.")
    assert report.regime_gap_note(None, {"lightgcn"}).startswith("Regime gap not measured")
    assert report.regime_gap_note(record, set()) is None


def test_common_schedule_note_is_restated_only_beside_the_results_it_was_measured_with() -> None:
    schedule = {"lr": 0.0125, "lr_decay": 1.0, "lr_decay_step": 50.0, "epochs": 100, "eval_every": 2, "patience": 10}
    difference = {"method": "a-description-image", "against": "a-title-image", "difference": -0.0032,
                  "ci_low": -0.005, "ci_high": -0.0013}
    record = {"default": {"cells": [{"cell": "lightgcn", "test_mean": 0.0973}]},
              "common": {"cells": [{"cell": "lightgcn", "test_mean": 0.1012, "schedule": schedule}],
                         "within_model": [difference], "between_models": []}}
    note = report.common_schedule_note(record, {"lightgcn": 0.0973, "title": 0.05})
    assert "(Adam lr 0.0125, at most 100 epochs, a validation check every 2, stop after 10 checks" in note
    assert "default -> common: lightgcn 0.0973 -> 0.1012." in note
    assert "a-description-image - a-title-image -0.0032 [-0.0050, -0.0013]" in note
    assert "not restated" in report.common_schedule_note(record, {"lightgcn": 0.0970})
    assert "not restated" in report.common_schedule_note(record, {})
    assert report.common_schedule_note(None, {"lightgcn": 0.0973}) is None


def interval_excludes_zero(entry: dict) -> bool:
    return entry["ci_low"] > 0 or entry["ci_high"] < 0


def test_every_verdict_of_a_generated_report_agrees_with_its_interval_and_p(tmp_path, monkeypatch, setup) -> None:
    """A report generated from small synthetic results (representations, a seeded fusion, two multimodal cells,
    chance, and new-item comparisons written as the new-item stage writes them): every finding's verdict
    agrees with its unadjusted CI, its p and, when confirmatory, its Holm p over the confirmatory family."""
    results, data = setup
    monkeypatch.chdir(tmp_path)
    save_caveat_inputs()
    cells = {"vbpr-title-image": GraphCellParams(model="vbpr", modalities=["title", "image"]),
             "vbpr-description-image": GraphCellParams(model="vbpr", modalities=["description", "image"])}
    graph_results = graph_cell("vbpr-title-image", data, 0.3, 3) | graph_cell("vbpr-description-image", data, 0.35, 3)
    chance = study_chance(data, EVAL.ks)
    targets = targets_of(data.interactions, "test", data.n_users, data.n_items)
    records = new_item_findings(results, targets, "description", "recall@10", chance, EVAL.bootstrap_resamples)
    NewItemMetrics(counts={}, metric="recall@20", no_signal={}, hybrids="", methods={}, chance={},
                   findings={"cold": json_records(records)},
                   model_findings={}, warm_cost={}, split_replicas={},
                   cost={}).save(NewItemMetrics.path())
    params = ReportParams(findings=FINDINGS, references=["title"], gallery_methods=[], slice_methods=[],
                          gallery_users=0)
    found, _ = report.write_findings(results | graph_results, data, EVAL, MatchParams(
        representations=["title", "image", "description"], reference="title"), GraphParams.model_construct(cells=cells),
        params, chance=chance)
    written = read_metrics("report")["findings"]
    assert {"vbpr_description_vs_title", "new_items_description_vs_title", "new_items_description_vs_image",
            "description_vs_chance"} <= set(written)
    confirmatory = [e for e in written.values() if e["confirmatory"] and e["p"] is not None]
    assert {e["family_size"] for e in confirmatory} == {len(confirmatory)} and len(confirmatory) >= 5
    verdicts = set()
    for fid, entry in written.items():
        verdict = entry["verdict"]
        verdicts.add(verdict.split(" (")[0].split(" over")[0])
        assert entry["answer"].startswith(f"{verdict}: ")
        if verdict.startswith("not tested"):
            assert entry["p"] is None and entry["verdict_blocked_by"] in verdict
            continue
        assert f"unadjusted 95% CI {entry['ci_low']:+.4f}, {entry['ci_high']:+.4f}" in entry["answer"]
        if verdict in ("no clear difference", "not distinguishable from chance"):
            assert not interval_excludes_zero(entry), fid
            continue
        assert interval_excludes_zero(entry), fid  # every other verdict rests on an interval without 0
        if verdict.startswith("not significant after Holm"):
            assert entry["confirmatory"] and entry["p_holm"] >= 0.05
            assert verdict == f"not significant after Holm over m = {entry['family_size']}"
            continue
        assert verdict.startswith("yes" if entry["difference"] > 0 else "no, it is worse"), fid
        assert entry["confirmatory"] == (entry["p_holm"] is not None)
        if entry["confirmatory"]:
            assert entry["p_holm"] < 0.05 and f"Holm over m = {entry['family_size']}" in entry["answer"]
        else:
            assert verdict.endswith("(exploratory, unadjusted)") and "(exploratory, unadjusted)" in entry["answer"]
        assert entry["p"] < 0.05 or min(abs(entry["ci_low"]), abs(entry["ci_high"])) < 1e-3, fid
    assert {"yes", "no clear difference"} <= verdicts  # the synthetic report exercises several verdicts


def test_findings_are_listed_confirmatory_first_then_exploratory_then_not_tested() -> None:
    base = Finding("description_vs_title", "Q1?", "a", "b", "ndcg@10", "all", 10, (1, 1), 0.1, 0.05, 0.2, 0.01,
                   p_holm=0.02, family_size=1)
    found = [replace(base, id="fusion_vs_best_single", question="Q2?", p_holm=float("nan"), family_size=0), base,
             replace(base, id="hybrid_vs_ease", question="Q3?", p=float("nan"), p_holm=float("nan"),
                     verdict_blocked_by="identical per-user values")]
    text = report.findings_markdown(found)
    assert text.index("**Confirmatory") < text.index("Q1?") < text.index("**Exploratory") < text.index("Q2?") \
        < text.index("**Not tested") < text.index("Q3?")
    assert "* **Q3?** not tested (identical per-user values): a - b" in text
