"""Result tables (vlm4rec/tables.py): seeded families with seed-aware CIs, paired-test layout, seed spread,
curves and the metrics JSON keyed by result name."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vlm4rec.config import EvalParams
from vlm4rec.evaluation import MethodKey, MethodResult
from vlm4rec import tables
from vlm4rec.evaluation import ChanceReference
from vlm4rec.tables import method_group
from vlm4rec.stats import bootstrap_ci, format_p

N_USERS = 50


def result(key: MethodKey, ndcg: np.ndarray, val: float = 0.1, config: dict | None = None) -> MethodResult:
    per_user = pd.DataFrame({"user_idx": np.arange(N_USERS), "ndcg@10": ndcg, "recall@10": ndcg / 2,
                             "recall@20": ndcg})
    val_per_user = pd.DataFrame({"user_idx": np.arange(N_USERS), "ndcg@10": np.full(N_USERS, val)})
    return MethodResult(key=key, config=config or {}, val_grid=pd.DataFrame(), val_per_user=val_per_user,
                        test_per_user=per_user, test_topk=np.zeros((N_USERS, 20), dtype=np.int64),
                        coverage={"coverage@10": 0.5}, timing={"fit_s": 1.23456})


@pytest.fixture(scope="module")
def results() -> dict[MethodKey, MethodResult]:
    rng = np.random.default_rng(0)
    base = rng.random(N_USERS)
    keys = [MethodKey("title"), MethodKey("fusion_gating", 0), MethodKey("fusion_gating", 1)]
    return {keys[0]: result(keys[0], base, 0.2),
            keys[1]: result(keys[1], base + 0.05 + 0.01 * rng.random(N_USERS), 0.3),
            keys[2]: result(keys[2], base + 0.15 + 0.01 * rng.random(N_USERS), 0.3)}


EVAL = EvalParams(ks=[10], select_metric="ndcg@10", block_size=64, device="cpu", bootstrap_resamples=200, seed=0)


def test_main_table_treats_seeds_as_one_family_with_a_seed_aware_ci(results) -> None:
    long, wide = tables.main_table(results, EVAL, metrics=("recall@10", "ndcg@10"))
    assert list(wide.index) == ["fusion_gating", "title"]  # sorted by validation (0.3, 0.2)
    assert list(wide["validation ndcg@10"]) == [0.3, 0.2]
    assert wide.loc["fusion_gating", "seeds"] == 2 and wide.loc["title", "seeds"] == 1
    row = long[(long["method"] == "fusion_gating") & (long["metric"] == "ndcg@10")].iloc[0]
    grid = np.stack([results[MethodKey("fusion_gating", s)].test_per_user["ndcg@10"] for s in (0, 1)])
    # the same seed-aware bootstrap (each arm's seed draws come from its own stream: equal up to the draws)
    assert (row["mean"], row["ci_low"], row["ci_high"]) == pytest.approx(bootstrap_ci(grid, 200), rel=0.03)
    assert wide.loc["fusion_gating", "resampling"] == "users x seeds (seed deviation inflated)"


def test_paired_test_table_has_one_row_per_metric_and_method_and_a_column_group_per_reference(results) -> None:
    long, wide = tables.paired_test_table(results, ["title", "missing"], ["ndcg@10", "recall@20"], EVAL)
    assert set(long["reference"]) == {"title"}
    assert list(wide.index) == [("ndcg@10", "fusion_gating"), ("recall@20", "fusion_gating")]
    assert list(wide.columns) == [("title", "difference"), ("title", tables.P_COLUMN)]
    assert tables.P_COLUMN == "p (paired bootstrap; exploratory, unadjusted)"
    assert wide.loc[("ndcg@10", "fusion_gating"), ("title", tables.P_COLUMN)] == \
        format_p(long.loc[0, "p"], bool(long.loc[0, "p_at_floor"]))  # the raw p, never a Holm p
    assert wide.loc[("ndcg@10", "fusion_gating"), ("title", "difference")].startswith("+0.10")


def test_main_table_is_sorted_by_validation_not_test() -> None:
    rng = np.random.default_rng(1)
    base = rng.random(N_USERS)
    better_on_test = {MethodKey(m): result(MethodKey(m), ndcg, val=v) for m, ndcg, v in (("a", base + 0.3, 0.1),
                                                                                         ("b", base, 0.4))}
    _, wide = tables.main_table(better_on_test, EVAL, metrics=("recall@10", "ndcg@10"))
    assert list(wide.index) == ["b", "a"]


def test_a_seeded_family_with_one_seed_gets_no_verdict(results) -> None:
    one_seed = {k: v for k, v in results.items() if k != MethodKey("fusion_gating", 1)}
    long, wide = tables.paired_test_table(one_seed, ["title"], ["ndcg@10"], EVAL)
    assert wide.loc[("ndcg@10", "fusion_gating"), ("title", tables.P_COLUMN)] == "not tested: one seed"
    assert np.isnan(long.loc[0, "p"])


def test_curves_average_seeds_and_metrics_json_holds_validation_and_timing(results) -> None:
    curves = tables.metric_curves(results, "recall").set_index(["method", "k"])["recall"]
    expected = np.mean([results[MethodKey("fusion_gating", s)].test_summary()["recall@20"] for s in (0, 1)])
    assert curves[("fusion_gating", 20)] == pytest.approx(expected)
    entries = tables.test_metrics_json(results)
    assert list(entries) == ["title", "fusion_gating@seed0", "fusion_gating@seed1"]  # keyed by the result names
    entry = entries["title"]
    assert entry["validation"] == {"ndcg@10": pytest.approx(0.2)} and "fit_s" not in str(entry)
    assert tables.timing_json(results)["title"] == {"fit_s": 1.235}
    assert list(tables.timing_json(results)) == list(entries)
    spread = tables.seed_spread(results, "ndcg@10")
    assert spread.loc["fusion_gating", "n_seeds"] == 2 and "title" not in spread.index
    a, b = (results[MethodKey("fusion_gating", s)].test_summary()["ndcg@10"] for s in (0, 1))
    assert spread.loc["fusion_gating", ["mean", "std"]].tolist() == pytest.approx(
        [(a + b) / 2, abs(a - b) / np.sqrt(2)])  # sample std of two values
    assert spread.loc["fusion_gating", "per seed"] == f"{a:.4f}, {b:.4f}"
    # t interval on two seeds: mean +- t(0.975, 1) * std / sqrt(2), t(0.975, 1) = 12.70620
    half = 12.70620 * abs(a - b) / np.sqrt(2) / np.sqrt(2)
    assert spread.loc["fusion_gating", ["t95_low", "t95_high"]].tolist() == pytest.approx(
        [(a + b) / 2 - half, (a + b) / 2 + half], abs=1e-6)


def chance_reference(test_value: float, val_value: float) -> ChanceReference:
    def frame(value: float) -> pd.DataFrame:
        return pd.DataFrame({"user_idx": np.arange(N_USERS), "ndcg@10": np.full(N_USERS, value),
                             "recall@10": np.full(N_USERS, value / 2), "recall@20": np.full(N_USERS, value)})
    return ChanceReference(frame(val_value), frame(test_value))


def test_chance_is_a_row_of_every_table_ordered_by_its_validation_value(results) -> None:
    chance = chance_reference(0.01, 0.25)  # validation 0.25: between fusion_gating (0.3) and title (0.2)
    long, wide = tables.main_table(results, EVAL, metrics=("recall@10", "ndcg@10"), chance=chance)
    assert list(wide.index) == ["fusion_gating", tables.CHANCE, "title"]
    assert wide.loc[tables.CHANCE, "seeds"] == 1
    assert wide.loc[tables.CHANCE, "ndcg@10"] == "0.0100 [0.0100, 0.0100]"
    paired, _ = tables.paired_test_table(results, [tables.CHANCE], ["ndcg@10"], EVAL, chance=chance)
    row = paired.set_index("method").loc["title"]
    title = results[MethodKey("title")].test_per_user["ndcg@10"]
    assert row["mean_diff"] == pytest.approx(title.mean() - 0.01) and row["verdict_blocked_by"] == ""
    curves = tables.metric_curves(results, "recall", chance=chance).set_index(["method", "k"])["recall"]
    assert curves[(tables.CHANCE, 20)] == pytest.approx(0.01)


def test_method_groups_follow_the_catalogue_kinds() -> None:
    reps = ["title", "image"]
    assert [method_group(m, reps) for m in ("ease", "image", "hybrid_title_ease", "fusion_late", "smore-x")] == [
        "collaborative baselines", "profile matching (one representation)", "content fusions and hybrids",
        "content fusions and hybrids", "multimodal recommenders"]


def test_the_ablation_view_places_chance_by_its_validation_value() -> None:
    cells = pd.DataFrame({"representation": ["a", "b", "c"], "selected": [True, True, False],
                          "val_ndcg@10": [0.3, 0.2, 0.1], "test_ndcg@10": [0.1, 0.5, 0.9]})
    values = pd.DataFrame({"user_idx": [0, 1], "ndcg@10": [0.1, 0.2]})  # validation mean 0.15
    view = tables.ablation_view(cells, ChanceReference(values, values / 10), "ndcg@10", top=2)
    assert view["representation"].tolist() == ["a", "b", "chance"]  # top 2 by validation, then chance (0.15)
    assert view.loc[2, "test_ndcg@10"] == pytest.approx(0.015) and not view.loc[2, "selected"]


def test_a_seeded_family_is_summarised_by_the_mean_over_its_seeds() -> None:
    def result(key: MethodKey, recall: list[float]) -> MethodResult:
        per_user = pd.DataFrame({"user_idx": range(len(recall)), "recall@20": recall})
        return MethodResult(key=key, config={}, val_grid=pd.DataFrame(), val_per_user=per_user,
                            test_per_user=per_user, test_topk=np.zeros((len(recall), 1), dtype=np.int64),
                            coverage={}, timing={}, diagnostics={}, select_metric="recall@20")

    results = {MethodKey("gating", 0): result(MethodKey("gating", 0), [0.0, 0.4]),
               MethodKey("gating", 1): result(MethodKey("gating", 1), [0.2, 0.6]),
               MethodKey("title"): result(MethodKey("title"), [0.1, 0.2])}
    summaries = tables.family_test_summaries(results)
    assert summaries["gating"] == pytest.approx({"recall@20": 0.3, "n_users": 2})  # (0.2 + 0.4) / 2
    assert summaries["title"] == pytest.approx({"recall@20": 0.15, "n_users": 2})
