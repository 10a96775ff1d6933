"""The study's findings (vlm4rec/findings.py): paired comparisons answered in words, choices made on
validation, the slices the findings restrict to, Holm across a family of findings."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from results_helpers import EVAL, FINDINGS, N_ITEMS, N_USERS, graph_cell, prepared, study
from vlm4rec import findings as F
from vlm4rec import slices
from vlm4rec.config import GraphCellParams
from vlm4rec.data import PreparedData
from vlm4rec.evaluation import MethodKey, MethodResult
from vlm4rec.stats import holm

REPRESENTATIONS = ["title", "image", "description"]
GRAPH_CELLS = {"vbpr-title-image": GraphCellParams(model="vbpr", modalities=["title", "image"]),
               "vbpr-description-image": GraphCellParams(model="vbpr", modalities=["description", "image"]),
               "smore-title-image": GraphCellParams(model="smore", modalities=["title", "image"]),
               "smore-description-image": GraphCellParams(model="smore", modalities=["description", "image"])}


@pytest.fixture(scope="module")
def setup() -> tuple[dict[MethodKey, MethodResult], PreparedData]:
    data = prepared()
    return study(data), data


def test_families_group_seeds_and_validation_chooses(setup) -> None:
    results, _ = setup
    grouped = F.families(results)
    assert list(grouped) == ["title", "image", "description", "fusion_gating", "fusion_attention"]
    assert grouped["fusion_gating"] == [MethodKey("fusion_gating", 0), MethodKey("fusion_gating", 1)]
    # validation ndcg@10: fusion_gating 0.5 > fusion_attention 0.4, although fusion_attention hits 95% of test users
    assert F.best_by_validation(results, ["fusion_attention", "fusion_gating", "absent"], "ndcg@10") == "fusion_gating"
    with pytest.raises(ValueError, match="none of"):
        F.best_by_validation(results, ["absent"], "ndcg@10")


def test_a_comparison_of_constant_differences_has_a_point_ci() -> None:
    """Every user gains exactly 0.25: the mean difference, both CI bounds are 0.25 (any resample) and the
    bootstrap puts no replicate at or beyond 0 (p at its floor, 2 / (resamples + 1), printed as a bound)."""
    users = np.arange(12)
    base = np.tile([0.0, 0.1, 0.2, 0.3, 0.5, 0.5], 2)
    per_user = pd.concat([pd.DataFrame({"method": "a", "seed": np.nan, "user_idx": users, "m": base + 0.25}),
                          pd.DataFrame({"method": "b", "seed": np.nan, "user_idx": users, "m": base})])
    finding = F.compare("x", "q?", per_user, "a", "b", "m", "all", EVAL)
    assert (finding.n_users, finding.seeds) == (12, (1, 1))
    assert (finding.difference, finding.ci_low, finding.ci_high) == pytest.approx((0.25, 0.25, 0.25))
    assert finding.p == pytest.approx(2 / (EVAL.bootstrap_resamples + 1)) and finding.p_at_floor
    assert "p < 0.002 (exploratory, unadjusted)" in finding.answer
    assert F.compare("x", "q?", per_user, "a", "absent", "m", "all", EVAL) is None


def test_the_difference_of_seeded_arms_is_the_mean_over_users_of_their_seed_means(setup) -> None:
    results, _ = setup
    found = {f.id: f for f in F.findings(results, EVAL, FINDINGS, REPRESENTATIONS, setup[1])}
    fusion = found["fusion_vs_best_single"]
    seeds = np.stack([results[MethodKey("fusion_gating", s)].test_per_user["ndcg@10"] for s in (0, 1)]).mean(axis=0)
    expected = np.mean(seeds - results[MethodKey("description")].test_per_user["ndcg@10"].to_numpy())
    assert fusion.difference == pytest.approx(expected) and fusion.seeds == (2, 1)


def test_findings_answer_each_question_with_choices_made_on_validation(setup) -> None:
    results, data = setup
    found = {f.id: f for f in F.findings(results, EVAL, FINDINGS, REPRESENTATIONS, data)}
    assert set(found) == {"description_vs_image", "description_vs_title", "description_vs_fusion",
                          "fusion_vs_best_single", "description_vs_title_cold_items",
                          "description_vs_title_short_histories", "description_vs_image_cold_items",
                          "description_vs_image_short_histories"}
    fusion = found["fusion_vs_best_single"]
    assert (fusion.method, fusion.against) == ("fusion_gating", "description")
    assert (found["description_vs_fusion"].method, found["description_vs_fusion"].against) == ("description",
                                                                                              "fusion_gating")
    assert found["description_vs_title"].answer.startswith("yes: description - title = +")
    assert "p < 0.002, Holm over m = 3: p < 0.006" in found["description_vs_title"].answer  # floor 2 / 1000
    assert found["fusion_vs_best_single"].answer.startswith("no, it is worse (exploratory, unadjusted)")
    cold = found["description_vs_title_cold_items"]
    assert cold.n_users == N_USERS // 2 and cold.metric == "recall@10"  # odd users have a cold test item
    assert found["description_vs_title_short_histories"].n_users == 16  # 2 or 3 train items: u % 5 in {0, 1}
    confirmatory = [f for f in found.values() if f.confirmatory]
    assert {f.id for f in confirmatory} == {"description_vs_image", "description_vs_title", "description_vs_fusion"}
    assert [f.p_holm for f in confirmatory] == pytest.approx(list(holm([f.p for f in confirmatory])))
    assert all(np.isnan(f.p_holm) and f.family_size == 0 for f in found.values() if not f.confirmatory)
    assert found["fusion_vs_best_single"].seeds == (2, 1) and found["description_vs_title"].seeds == (1, 1)


def test_recall_on_cold_items_counts_each_users_cold_test_item_in_the_top_k(setup) -> None:
    """Odd users' test item is cold (25 + u % 5, never in train): their recall@10 over cold items is 1 when
    that item is in their top-10, else 0; even users have no cold test item and no row."""
    results, data = setup
    table = F.restricted_per_user(results, ["description", "fusion_gating"], data, items=F.new_test_items(data), k=10)
    assert F.new_test_items(data).tolist() == list(range(25, N_ITEMS))
    for key in (MethodKey("description"), MethodKey("fusion_gating", 1)):
        seed = -1 if key.seed is None else key.seed
        rows = table[(table["method"] == key.family) & (table["seed"].fillna(-1) == seed)]
        topk = results[key].test_topk
        expected = {u: float(25 + u % 5 in topk[u, :10]) for u in range(1, N_USERS, 2)}
        assert dict(zip(rows["user_idx"], rows["recall@10"])) == expected


def test_verdicts_agree_with_their_interval_and_their_family() -> None:
    finding = F.Finding("description_vs_title", "q?", "a", "b", "ndcg@10", "all", 10, (1, 1), 0.01, -0.02, 0.04,
                        0.3, p_holm=0.6, family_size=4)
    assert finding.answer.startswith("no clear difference: a - b = +0.0100 ndcg@10 [unadjusted 95% CI -0.0200, "
                                     "+0.0400; resampling users x seeds (seed deviation inflated)], p = 0.300, "
                                     "Holm over m = 4: p = 0.600")
    # a CI that excludes 0 with a Holm p above 0.05 says so, never "no clear difference"
    excluded = replace(finding, ci_low=0.005, p=0.02, p_holm=0.08)
    assert excluded.verdict == "not significant after Holm over m = 4"
    assert replace(excluded, p_holm=0.01).verdict == "yes"
    assert replace(excluded, id="x").verdict == "yes (exploratory, unadjusted)"  # not in the family
    assert replace(finding, against="chance").verdict == "not distinguishable from chance"
    assert replace(finding, verdict_blocked_by="identical per-user values").answer.startswith(
        "not tested (identical per-user values): a - b")


def test_a_bootstrap_too_coarse_for_holm_is_a_caveat() -> None:
    found = [F.Finding(f"m{i}_description_vs_title", "q?", "a", "b", "ndcg@10", "all", 10, (1, 1), 0.1, 0.05, 0.2,
                       0.01) for i in range(5)]
    assert F.p_floor_note(found, 999) is None  # 5 x 2 / 1000 = 0.01
    more = found + [replace(found[0], p=float("nan")), replace(found[0], id="exploratory")]
    note = F.p_floor_note(more, 199)  # 5 tested confirmatory x 0.01 = 0.05
    assert note.startswith("With eval.bootstrap_resamples = 199 no p-value falls below 0.0100, so none of the 5 "
                           "tested confirmatory")


def test_a_slice_without_users_leaves_its_finding_out(setup) -> None:
    results, data = setup
    tight = FINDINGS.model_copy(update={"short_history": 1})  # every user has at least 2 history items
    found = {f.id for f in F.findings(results, EVAL, tight, REPRESENTATIONS, data)}
    assert "description_vs_title_short_histories" not in found and "description_vs_title_cold_items" in found


def test_graph_findings_resample_three_seeds_of_both_cells(setup) -> None:
    results, data = setup
    graph = graph_cell("vbpr-title-image", data, 0.2, 3) | graph_cell("vbpr-description-image", data, 0.9, 3)
    found = {f.id: f for f in F.findings(results | graph, EVAL, FINDINGS, REPRESENTATIONS, data, GRAPH_CELLS)}
    vbpr = found["vbpr_description_vs_title"]
    assert vbpr.seeds == (3, 3) and vbpr.answer.startswith("yes") and vbpr.answer.endswith("3 vs 3 seed(s)")
    assert "smore_description_vs_title" not in found  # no smore results


def test_a_seeded_cell_with_one_seed_gets_no_verdict_and_stays_out_of_holm(setup) -> None:
    results, data = setup
    graph = graph_cell("vbpr-title-image", data, 0.2, 1) | graph_cell("vbpr-description-image", data, 0.9, 3)
    found = F.findings(results | graph, EVAL, FINDINGS, REPRESENTATIONS, data, GRAPH_CELLS)
    vbpr = next(f for f in found if f.id == "vbpr_description_vs_title")
    assert vbpr.answer.startswith("not tested (one seed): vbpr-description-image - vbpr-title-image = +")
    assert np.isnan(vbpr.p) and np.isnan(vbpr.p_holm) and "p =" not in vbpr.answer
    tested = [f for f in found if f is not vbpr and f.confirmatory]
    assert [f.p_holm for f in tested] == pytest.approx(list(holm([f.p for f in tested])))
    assert {f.family_size for f in tested} == {len(tested)}


def test_model_comparisons_reuse_the_confirmatory_findings_and_test_cold_items_exploratorily(setup) -> None:
    results, data = setup
    graph = {}
    for cell, hit in (("vbpr-title-image", 0.2), ("vbpr-description-image", 0.9), ("smore-title-image", 0.4),
                      ("smore-description-image", 0.5)):
        graph |= graph_cell(cell, data, hit, 2)
    found = F.findings(results | graph, EVAL, FINDINGS, REPRESENTATIONS, data, GRAPH_CELLS)
    compared = F.graph_comparisons(results | graph, EVAL, FINDINGS, GRAPH_CELLS, data, found)
    assert [(c.model, c.cells) for c in compared] == [("vbpr", ("vbpr-description-image", "vbpr-title-image")),
                                                      ("smore", ("smore-description-image", "smore-title-image"))]
    by_id = {f.id: f for f in found}
    assert [c.overall for c in compared] == [by_id["vbpr_description_vs_title"], by_id["smore_description_vs_title"]]
    assert all(not c.cold.confirmatory and np.isnan(c.cold.p_holm) for c in compared)
    assert compared[0].cold.metric == "recall@10" and compared[0].cold.n_users == N_USERS // 2
    assert F.graph_comparisons(results, EVAL, FINDINGS, GRAPH_CELLS, data, found) == []


def test_slices_of_a_seeded_family_are_the_mean_of_its_seeds(setup) -> None:
    results, data = setup
    sliced = F.family_slices(results, ["fusion_gating", "title", "absent"], data, k=10, metrics=["recall@10"])
    assert set(sliced["method"]) == {"fusion_gating", "title"}
    per_seed = slices.slices_for_methods(
        {key.name: (results[key].test_topk, np.arange(N_USERS), results[key].test_per_user)
         for key in (MethodKey("fusion_gating", 0), MethodKey("fusion_gating", 1))},
        data, k=10, metrics=["recall@10"])
    expected = per_seed.groupby(["slice_kind", "slice"], sort=False)["value"].mean()
    got = sliced[sliced["method"] == "fusion_gating"].set_index(["slice_kind", "slice"])["value"]
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), check_names=False)


