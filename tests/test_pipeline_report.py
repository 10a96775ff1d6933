"""The report's findings (vlm4rec/pipeline/report.py): paired comparisons answered in words, choices made
on validation, Holm across the findings, caveats from the stage outputs."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from vlm4rec.data import PreparedData
from vlm4rec import slices
from vlm4rec.evaluation import MethodResult, save_result
from vlm4rec.metrics import ranking_metrics
from vlm4rec.pipeline import report
from vlm4rec.splits import targets_of
from vlm4rec.stats import holm

N_USERS, N_ITEMS = 40, 30
REPORT = {"findings": {"metric": "ndcg@10", "description": "description", "title": "title", "image": "image",
                       "slice_k": 10, "short_history": 3}}
EVAL = {"bootstrap_resamples": 999, "seed": 0, "select_metric": "ndcg@10"}


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


def method(name: str, data: PreparedData, hit_share: float, val: float, seed: int) -> MethodResult:
    """A method that ranks each user's test item first for a share of the users, else last."""
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
    return MethodResult(name, {}, pd.DataFrame(), val_per_user, per_user, topk, {"coverage@10": 1.0}, {})


@pytest.fixture(scope="module")
def setup() -> tuple[dict[str, MethodResult], PreparedData]:
    data = prepared()
    results = {"title": method("title", data, 0.2, 0.10, 1), "image": method("image", data, 0.2, 0.05, 2),
               "description": method("description", data, 0.9, 0.20, 3),
               # validation prefers fusion_a although fusion_b is better on test: the finding must use fusion_a
               "fusion_a@seed0": method("fusion_a@seed0", data, 0.3, 0.50, 4),
               "fusion_a@seed1": method("fusion_a@seed1", data, 0.3, 0.50, 5),
               "fusion_b": method("fusion_b", data, 0.95, 0.40, 6)}
    return results, data


def test_findings_answer_each_question_with_choices_made_on_validation(setup) -> None:
    results, data = setup
    found = {f.id: f for f in report.findings(results, EVAL, REPORT, ["title", "image", "description"], data)}
    assert set(found) == {"description_vs_image", "description_vs_title", "fusion_vs_best_single",
                          "description_vs_title_cold_items", "description_vs_title_short_histories",
                          "description_vs_image_cold_items", "description_vs_image_short_histories"}
    assert (found["fusion_vs_best_single"].method, found["fusion_vs_best_single"].against) == ("fusion_a", "description")
    assert found["description_vs_title"].answer.startswith("yes: description - title = +")
    assert found["fusion_vs_best_single"].answer.startswith("no, it is worse")
    cold = found["description_vs_title_cold_items"]
    assert cold.n_users == N_USERS // 2 and cold.metric == "recall@10"  # odd users have a cold test item
    assert found["description_vs_title_short_histories"].n_users == 16  # 2 or 3 train items: u % 5 in {0, 1}
    p = [f.p for f in found.values()]
    assert sorted(f.p_holm for f in found.values()) == pytest.approx(sorted(holm(p)))
    assert found["fusion_vs_best_single"].seeds == (2, 1) and found["description_vs_title"].seeds == (1, 1)


def test_an_unclear_difference_is_said_so() -> None:
    finding = report.Finding("x", "q?", "a", "b", "ndcg@10", "all", 10, (1, 1), 0.01, -0.02, 0.04, 0.01, p_holm=0.2)
    assert finding.answer.startswith("no clear difference: a - b = +0.0100 ndcg@10 [95% CI -0.0200, +0.0400], "
                                     "Holm-corrected paired-bootstrap p = 0.200")
    # significant p but a CI holding 0 cannot be a "yes" either
    assert replace(finding, p_holm=0.01).answer.startswith("no clear difference")
    assert replace(finding, ci_low=0.005, p_holm=0.01).answer.startswith("yes")


def test_caveats_name_the_grounder_the_split_and_the_robustness_check() -> None:
    grounding = {"grounder": {"backend": "tagger", "description_of_method": "tagger (not an LVLM)"},
                 "arms": {"image_only": {"ok": 90, "items": 100, "title_mention_rate": 0.05}}}
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


def test_a_bootstrap_too_coarse_for_holm_is_a_caveat() -> None:
    found = [report.Finding(str(i), "q?", "a", "b", "ndcg@10", "all", 10, (1, 1), 0.1, 0.05, 0.2, 0.01)
             for i in range(5)]
    assert report.p_floor_note(found, 999) is None  # 5 x 2 / 1000 = 0.01
    note = report.p_floor_note(found + [replace(found[0], p=float("nan"))], 199)  # 5 tested x 0.01 = 0.05
    assert note.startswith("With eval.bootstrap_resamples = 199 no p-value falls below 0.0100, so none of the 5")


def test_runs_that_reached_their_epoch_cap_are_named_in_a_caveat(setup) -> None:
    results, _ = setup
    curve = {"curve": [[0, 0.1], [4, 0.2]], "train_loss": [1.0] * 4, "best_epoch": 4, "epochs_run": 4}
    graph = {"lightgcn@seed0": replace(results["title"], training=curve | {"stopped_early": False}),
             "lightgcn@seed1": replace(results["title"], training=curve | {"stopped_early": False}),
             "vbpr-title-image@seed0": replace(results["title"], training=curve | {"stopped_early": True})}
    fusion = {"a": {"kind": "gating", "seed": 2, "config": {"temperature": 0.1}, "stopped_early": False},
              "b": {"kind": "attention", "seed": 0, "config": {"temperature": 0.1}, "stopped_early": True}}
    capped = report.runs_at_epoch_cap(results | graph, fusion)
    assert capped == ["lightgcn", 'fusion_gating seed 2 {"temperature": 0.1}']
    grounding = {"grounder": {"backend": "hf", "description_of_method": "an LVLM"}, "arms": {}}
    note = report.caveats(grounding, "global_time", None, capped)[-1]
    assert note.startswith("2 training run(s) reached their epoch cap") and "lightgcn; fusion_gating seed 2" in note


def test_a_slice_without_users_leaves_its_finding_out(setup) -> None:
    results, data = setup
    tight = {"findings": REPORT["findings"] | {"short_history": 1}}  # every user has at least 2 history items
    found = {f.id for f in report.findings(results, EVAL, tight, ["title", "image", "description"], data)}
    assert "description_vs_title_short_histories" not in found and "description_vs_title_cold_items" in found


def graph_cell(name: str, data: PreparedData, hit_share: float, seeds: int) -> dict[str, MethodResult]:
    return {f"{name}@seed{s}": method(f"{name}@seed{s}", data, hit_share, 0.1, 10 * s + len(name))
            for s in range(seeds)}


GRAPH_CELLS = {"vbpr-title-image": {"model": "vbpr", "modalities": ["title", "image"]},
               "vbpr-description-image": {"model": "vbpr", "modalities": ["description", "image"]}}


def test_graph_findings_resample_three_seeds_of_both_cells(setup) -> None:
    results, data = setup
    graph = graph_cell("vbpr-title-image", data, 0.2, 3) | graph_cell("vbpr-description-image", data, 0.9, 3)
    found = {f.id: f for f in report.findings(results | graph, EVAL, REPORT, ["title", "image", "description"],
                                              data, GRAPH_CELLS)}
    vbpr = found["vbpr_description_vs_title"]
    assert vbpr.seeds == (3, 3) and vbpr.answer.startswith("yes") and vbpr.answer.endswith("3 vs 3 seed(s)")


def test_a_seeded_cell_with_one_seed_gets_no_verdict_and_stays_out_of_holm(setup) -> None:
    results, data = setup
    graph = graph_cell("vbpr-title-image", data, 0.2, 1) | graph_cell("vbpr-description-image", data, 0.9, 3)
    found = report.findings(results | graph, EVAL, REPORT, ["title", "image", "description"], data, GRAPH_CELLS)
    vbpr = next(f for f in found if f.id == "vbpr_description_vs_title")
    assert vbpr.answer.startswith("one seed: no verdict: vbpr-description-image - vbpr-title-image = +")
    assert np.isnan(vbpr.p) and np.isnan(vbpr.p_holm) and "p =" not in vbpr.answer
    tested = [f for f in found if f is not vbpr]
    assert [f.p_holm for f in tested] == pytest.approx(list(holm([f.p for f in tested])))


def test_report_metrics_write_an_untested_p_as_null(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(report, "METRICS_DIR", tmp_path)
    finding = report.Finding("x", "q?", "a", "b", "ndcg@10", "all", 10, (1, 1), 0.1, 0.05, 0.2, float("nan"),
                             "one seed")
    report.write_report_metrics([finding], ["note"])
    written = json.loads((tmp_path / "report.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert written["findings"]["x"]["p"] is None and written["findings"]["x"]["seeds"] == [1, 1]
    assert written["findings"]["x"]["answer"].startswith("one seed: no verdict")


def test_only_the_graph_cells_in_params_are_loaded(tmp_path, monkeypatch, setup) -> None:
    results, data = setup
    monkeypatch.setattr(report, "RESULTS_DIR", tmp_path)
    for cell, hit in (("vbpr-title-image", 0.2), ("smore-description", 0.5)):  # the second is stale
        for name, r in graph_cell(cell, data, hit, 2).items():
            save_result(r, tmp_path / "graph" / cell / name)
    save_result(results["title"], tmp_path / "match" / "title")
    loaded = report.load_all_results(["vbpr-title-image", "lightgcn"])
    assert sorted(loaded) == ["title", "vbpr-title-image@seed0", "vbpr-title-image@seed1"]


def test_slices_and_galleries_show_seeded_families(setup) -> None:
    results, data = setup
    data = replace(data, items=data.items.assign(title=[f"t{i}" for i in range(N_ITEMS)], image_path=None))
    sliced = report.family_slices(results, ["fusion_a", "title", "absent"], data, k=10, metrics=["recall@10"])
    assert set(sliced["method"]) == {"fusion_a", "title"}
    per_seed = slices.slices_for_methods(
        {n: (results[n].test_topk, np.arange(N_USERS), results[n].test_per_user)
         for n in ("fusion_a@seed0", "fusion_a@seed1")},
        data, k=10, metrics=["recall@10"])
    expected = per_seed.groupby(["slice_kind", "slice"], sort=False)["value"].mean()
    got = sliced[sliced["method"] == "fusion_a"].set_index(["slice_kind", "slice"])["value"]
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), check_names=False)
    rows = report.user_gallery(results, ["fusion_a", "title", "absent"], data, n_users=1, k=3)
    assert [title for title, _, _ in rows[1:]] == ["fusion_a@seed0 top-3", "title top-3"]


def test_robustness_compares_users_with_history_and_reports_cold_start_apart(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(report, "METRICS_DIR", tmp_path)
    main = {m: {"test": {"ndcg@10": t}, "validation": {"ndcg@10": v}}
            for m, t, v in (("ease", 0.30, 0.20), ("title", 0.10, 0.25))}
    (tmp_path / "match.json").write_text(json.dumps({"methods": main}))
    robustness = {"protocol": "global_time", "test_users": {"all": 10, "with_history": 6, "cold_start": 4},
                  "methods": {"ease": {"test": {"ndcg@10": 0.05}, "test_with_history": {"ndcg@10": 0.08},
                                       "cold_start": {"test": {"ndcg@10": 0.01}, "lists": "one list for all"}},
                              "title": {"test": {"ndcg@10": 0.06}, "test_with_history": {"ndcg@10": 0.09},
                                        "cold_start": {"test": {"ndcg@10": 0.0}, "lists": "tied"}}}}
    table = report.robustness_table("ndcg@10", robustness)
    assert list(table.index) == ["title", "ease"]  # by the study split's validation, not by test
    assert list(table["global_time"]) == [0.09, 0.08] and list(table["rank (study_split)"]) == [2, 1]
    cold = report.cold_start_table("ndcg@10", robustness)
    assert cold.loc["ease", "lists"] == "one list for all" and cold.loc["title", "test ndcg@10"] == 0.0
    assert report.robustness_table("ndcg@10", None) is None


def test_graph_tuning_note_says_where_single_configurations_were_tuned(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(report, "METRICS_DIR", tmp_path)
    (tmp_path / "graph").mkdir()
    for cell, size in (("lightgcn", 1), ("vbpr-title-image", 4)):
        (tmp_path / "graph" / f"{cell}.json").write_text(json.dumps({"scale": "default",
                                                                      "training": {"grid_size": size}}))
    note = report.graph_tuning_note(["lightgcn", "vbpr-title-image"])
    assert note.startswith("1 graph cell(s) trained one configuration each (graph.scale: default)")
    assert report.GRAPH_TUNING_RECORD in note and note.endswith("Cells: lightgcn.")
    assert report.graph_tuning_note(["vbpr-title-image"]) is None
