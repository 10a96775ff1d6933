from itertools import product

import numpy as np
import pandas as pd
import pytest

from vlm4rec.stats import (MIN_NONZERO_USERS, bootstrap_ci, bootstrap_distribution, bootstrap_p, draw_counts,
                            format_p, holm, holm_where_tested, p_floor, paired_tests, percentile_interval,
                            results_table, seed_inflation, two_way_replicates, vacuous_because)


def test_holm_against_hand_computation() -> None:
    # sorted: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06), 0.5 (x1 = 0.5)
    np.testing.assert_allclose(holm([0.03, 0.5, 0.01, 0.02]), [0.06, 0.5, 0.04, 0.06])
    # step-down monotonicity: 0.05 x 1 = 0.05 is raised to the earlier 0.04 x 2 = 0.08
    np.testing.assert_allclose(holm([0.05, 0.04]), [0.08, 0.08])
    np.testing.assert_allclose(holm([0.6, 0.9]), [1.0, 1.0])
    with pytest.raises(ValueError):
        holm([0.1, np.nan])


def test_bootstrap_ci_brackets_the_mean_and_is_seeded() -> None:
    values = np.random.default_rng(0).random(500)
    mean, low, high = bootstrap_ci(values, n_resamples=2000, seed=3)
    assert mean == pytest.approx(values.mean())
    assert low < mean < high
    # the percentile interval of the mean is close to the normal one for 500 uniform values
    half_width = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    assert high - low == pytest.approx(2 * half_width, rel=0.15)
    assert bootstrap_ci(values, n_resamples=2000, seed=3) == (mean, low, high)
    assert bootstrap_ci(values, n_resamples=2000, seed=4) != (mean, low, high)


def test_bootstrap_ci_of_constant_values_is_a_point() -> None:
    assert bootstrap_ci(np.full(10, 0.25)) == pytest.approx((0.25, 0.25, 0.25))
    with pytest.raises(ValueError):
        bootstrap_ci(np.array([]))


def long_table() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    ref = rng.random(80)
    frames = [pd.DataFrame({"method": "ref", "user_idx": np.arange(80), "ndcg@10": ref}),
              pd.DataFrame({"method": "better", "user_idx": np.arange(80), "ndcg@10": ref + 0.1
                            + 0.05 * rng.normal(size=80)}),
              pd.DataFrame({"method": "same", "user_idx": np.arange(80), "ndcg@10": ref}),
              # evaluated on a subset of users only: compared on the common ones
              pd.DataFrame({"method": "noisy", "user_idx": np.arange(10, 60),
                            "ndcg@10": ref[10:60] + 0.2 * rng.normal(size=50)})]
    return pd.concat(frames, ignore_index=True)


def test_paired_tests_p_is_the_bootstrap_of_the_mean_difference_and_holm() -> None:
    per_user = long_table()
    table = paired_tests(per_user, "ref", "ndcg@10", n_resamples=500).set_index("method")
    assert list(table.index) == ["better", "same", "noisy"]
    ref = per_user[per_user["method"] == "ref"].set_index("user_idx")["ndcg@10"]
    for method in ["better", "noisy"]:
        other = per_user[per_user["method"] == method].set_index("user_idx")["ndcg@10"]
        x, y = other.to_numpy(), ref.loc[other.index].to_numpy()
        row = table.loc[method]
        assert row["n_users"] == len(other)
        assert row["mean_diff"] == pytest.approx((x - y).mean())
        # unseeded arms: the paired bootstrap is the user bootstrap of the per-user differences
        replicates = bootstrap_distribution(x - y, None, 500)
        interval = tuple(np.quantile(replicates, [0.025, 0.975]))
        assert (row["diff_ci_low"], row["diff_ci_high"]) == pytest.approx(interval)
        assert row["p"] == pytest.approx(bootstrap_p(replicates))
    # identical arms test nothing: no p, out of Holm; a clear shift: no replicate <= 0, p at the floor 2 / 501
    assert table.loc["same", "verdict_blocked_by"] == "identical per-user values"
    assert np.isnan(table.loc["same", "p"]) and "p_holm" not in table  # unadjusted: the family is the caller's
    assert table.loc["better", "p"] == pytest.approx(2 / 501) == p_floor(500)
    assert table.loc["better", "p_at_floor"] and not table.loc["noisy", "p_at_floor"]
    assert (table.drop(index="same")["verdict_blocked_by"] == "").all()


def test_bootstrap_p_by_hand() -> None:
    # 2 of 9 replicates <= 0, 7 >= 0: p = 2 * (2 + 1) / 10
    assert bootstrap_p(np.array([-0.1, 0.0, 0.2, 0.3, 0.1, 0.5, 0.4, 0.6, 0.7])) == pytest.approx(0.6)
    assert bootstrap_p(np.full(9, 0.1)) == pytest.approx(0.2)   # nothing <= 0: 2 * 1 / 10
    assert bootstrap_p(np.zeros(9)) == 1.0                      # all ties: capped at 1
    assert bootstrap_p(np.full(9, -0.1)) == pytest.approx(0.2)  # symmetric in the sign


def test_bootstrap_p_and_the_percentile_interval_agree() -> None:
    """p < 0.05 exactly when 0 is outside the 95% interval, on data around the boundary."""
    rng = np.random.default_rng(5)
    for shift in np.linspace(0.0, 0.25, 11):
        replicates = bootstrap_distribution(shift + rng.normal(size=60), None, 999, seed=1)
        low, high = percentile_interval(replicates)
        assert (bootstrap_p(replicates) < 0.05) == (low > 0 or high < 0) or \
            min(abs(low), abs(high)) < 1e-3  # only at the boundary can the add-one correction differ


def test_paired_bootstrap_matches_an_exact_enumeration() -> None:
    """Two users, two seeds per arm: the 4 x 4 x 4 equally likely (users, method seeds, reference seeds)
    draws give the exact bootstrap distribution (each arm's seed deviation from its all-seed mean on the drawn
    users scaled by sqrt(2 / 1)); its P(d <= 0) and quantiles are matched by resampling."""
    method = np.array([[0.0, 1.0], [0.4, 0.6]])
    reference = np.array([[0.2, 0.2], [0.5, 0.9]])

    def arm(grid: np.ndarray, seeds: tuple[int, ...], users: tuple[int, ...]) -> float:
        overall = grid[:, list(users)].mean()
        return overall + np.sqrt(2) * (grid[list(seeds)][:, list(users)].mean() - overall)

    exact = []
    for users in product(range(2), repeat=2):
        for ms in product(range(2), repeat=2):
            for rs in product(range(2), repeat=2):
                exact.append(arm(method, ms, users) - arm(reference, rs, users))
    exact = np.array(exact)
    replicates = bootstrap_distribution(method, reference, 40_000, seed=2)
    assert (replicates <= 0).mean() == pytest.approx((exact <= 0).mean(), abs=0.01)
    values, counts = np.unique(np.round(exact, 9), return_counts=True)
    drawn = dict(zip(*np.unique(np.round(replicates, 9), return_counts=True)))
    assert set(drawn) == set(values)
    for value, count in zip(values, counts):
        assert drawn[value] / len(replicates) == pytest.approx(count / 64, abs=0.01)


def test_paired_tests_resample_the_reference_seeds() -> None:
    """A reference whose training seed moves every user (seed offsets -0.05, 0.01, 0.07: the method is as
    good as a typical seed, but the three drawn seeds average +0.01). Averaging the seeds first calls the
    -0.01 significant; resampling them widens the interval to hold 0, and p agrees."""
    rng = np.random.default_rng(6)
    base = rng.random(300)
    offsets = [-0.05, 0.01, 0.07]
    rows = [pd.DataFrame({"method": "ref", "seed": s, "user_idx": np.arange(300), "ndcg@10": base + o})
            for s, o in enumerate(offsets)]
    rows += [pd.DataFrame({"method": "new", "seed": s, "user_idx": np.arange(300),
                           "ndcg@10": base + 0.01 * rng.normal(size=300)}) for s in range(3)]
    per_user = pd.concat(rows, ignore_index=True)
    row = paired_tests(per_user, "ref", "ndcg@10", n_resamples=1000).iloc[0]
    assert row["n_seeds"] == 3 and row["n_seeds_reference"] == 3
    averaged = per_user.groupby(["method", "user_idx"])["ndcg@10"].mean().unstack("user_idx")
    _, low_avg, high_avg = bootstrap_ci(averaged.loc["new"] - averaged.loc["ref"], n_resamples=1000)
    assert row["diff_ci_high"] - row["diff_ci_low"] > 3 * (high_avg - low_avg)
    assert row["diff_ci_low"] < 0 < row["diff_ci_high"] and row["p"] > 0.05
    assert high_avg < 0  # the old way: seed-averaged differences


def test_single_seed_of_a_seeded_method_gets_no_verdict() -> None:
    rng = np.random.default_rng(7)
    ref = rng.random(50)
    per_user = pd.concat([pd.DataFrame({"method": "ref", "user_idx": np.arange(50), "ndcg@10": ref}),
                          pd.DataFrame({"method": "graph", "seed": 0.0, "user_idx": np.arange(50),
                                        "ndcg@10": ref + 0.2}),
                          pd.DataFrame({"method": "other", "user_idx": np.arange(50), "ndcg@10": ref + 0.2})],
                         ignore_index=True)
    table = paired_tests(per_user, "ref", "ndcg@10", n_resamples=200).set_index("method")
    assert table.loc["graph", "verdict_blocked_by"] == "one seed" and np.isnan(table.loc["graph", "p"])
    assert table.loc["other", "p"] == pytest.approx(2 / 201)
    np.testing.assert_allclose(holm_where_tested([0.01, np.nan, 0.02]), [0.02, np.nan, 0.02])


def test_paired_tests_reject_bad_tables() -> None:
    per_user = long_table()
    with pytest.raises(ValueError, match="reference"):
        paired_tests(per_user, "missing", "ndcg@10")
    with pytest.raises(ValueError, match="more than one row"):
        paired_tests(pd.concat([per_user, per_user.iloc[:1]]), "ref", "ndcg@10")


def test_results_table_has_mean_and_ci_per_method_and_metric() -> None:
    per_user = long_table().assign(recall=lambda t: t["ndcg@10"] / 2)
    table = results_table(per_user, ["ndcg@10", "recall"], n_resamples=200)
    assert len(table) == 8
    row = table[(table["method"] == "noisy") & (table["metric"] == "recall")].iloc[0]
    values = per_user.loc[per_user["method"] == "noisy", "recall"].to_numpy()
    assert (row["mean"], row["ci_low"], row["ci_high"]) == pytest.approx(
        bootstrap_ci(values, n_resamples=200))
    assert row["n_users"] == 50


def test_seeded_bootstrap_matches_a_loop_over_the_same_draws() -> None:
    """Each resample averages the cells of the drawn users, then moves by sqrt(3 / 2) times the deviation of
    the drawn seeds' mean from it (an independent loop over the same streams: users first, then the seeds)."""
    grid = np.random.default_rng(2).random((3, 40))
    mean, low, high = bootstrap_ci(grid, n_resamples=300, seed=7)
    users_stream, seeds_stream = np.random.SeedSequence(7).spawn(2)
    users = np.random.default_rng(users_stream).integers(0, 40, size=(300, 40))
    seeds = np.random.default_rng(seeds_stream).integers(0, 3, size=(300, 3))
    loop = [grid[:, users[r]].mean() + np.sqrt(1.5) * (grid[seeds[r]][:, users[r]].mean() - grid[:, users[r]].mean())
            for r in range(300)]
    assert mean == pytest.approx(grid.mean())
    assert (low, high) == pytest.approx(tuple(np.quantile(loop, [0.025, 0.975])))


def test_seeded_bootstrap_carries_the_seed_to_seed_variation() -> None:
    base = np.random.default_rng(3).random(400)
    same = np.stack([base, base, base])
    shifted = same + np.array([[-0.05], [0.0], [0.05]])  # a training seed moves every user's value
    _, low_same, high_same = bootstrap_ci(same, n_resamples=1000)
    _, low_user, high_user = bootstrap_ci(base, n_resamples=1000)
    assert high_same - low_same == pytest.approx(high_user - low_user, rel=0.15)
    _, low, high = bootstrap_ci(shifted, n_resamples=1000)
    _, low_avg, high_avg = bootstrap_ci(shifted.mean(axis=0), n_resamples=1000)
    assert high - low > 1.5 * (high_avg - low_avg)  # averaging seeds first hides their spread


def test_seeded_methods_in_results_table_and_paired_tests() -> None:
    rng = np.random.default_rng(4)
    ref = rng.random(60)
    rows = [pd.DataFrame({"method": "ref", "user_idx": np.arange(60), "ndcg@10": ref})]
    for s, shift in enumerate([0.05, 0.15]):
        rows.append(pd.DataFrame({"method": "learned", "seed": s, "user_idx": np.arange(60),
                                  "ndcg@10": ref + shift + 0.01 * rng.normal(size=60)}))
    per_user = pd.concat(rows, ignore_index=True)
    table = results_table(per_user, ["ndcg@10"], n_resamples=300).set_index("method")
    assert table.loc["learned", "n_seeds"] == 2 and table.loc["ref", "n_seeds"] == 1
    learned = per_user[per_user["method"] == "learned"].pivot(index="seed", columns="user_idx", values="ndcg@10")
    # the same procedure (the arm's own seed stream differs with its place in the table)
    assert (table.loc["learned", "mean"], table.loc["learned", "ci_low"], table.loc["learned", "ci_high"]) == \
        pytest.approx(bootstrap_ci(learned.to_numpy(), n_resamples=300), rel=0.03)
    tests = paired_tests(per_user, "ref", "ndcg@10", n_resamples=300).set_index("method")
    diff = learned.mean(axis=0).to_numpy() - ref
    assert tests.loc["learned", "mean_diff"] == pytest.approx(diff.mean())
    assert tests.loc["learned", "diff_ci_low"] < diff.mean() < tests.loc["learned", "diff_ci_high"]
    assert tests.loc["learned", "diff_ci_low"] < 0.08  # the seed spread (0.05 vs 0.15) widens the interval
    with pytest.raises(ValueError, match="different users"):
        paired_tests(per_user[~((per_user["seed"] == 1) & (per_user["user_idx"] == 0))], "ref", "ndcg@10")


@pytest.mark.parametrize("p, text", [(0.5, "0.500"), (0.0321, "0.032"), (1.2e-4, "1.2e-04"), (0.0, "<1e-10"),
                                     (np.nan, "not tested")])
def test_p_values_are_printed_readably(p: float, text: str) -> None:
    assert format_p(p) == text


def test_a_p_at_the_resolution_floor_is_printed_as_a_bound() -> None:
    # 10,000 resamples: the floor 2 / 10,001 = 0.00019998 prints as "< 0.0002"; Holm over m = 8 moves that
    # bound to 8 x 0.00019998 = 0.0015998, printed rounded up, "< 0.0016"
    assert format_p(p_floor(10_000), at_floor=True) == "< 0.0002"
    assert format_p(holm([p_floor(10_000)] * 8)[0], at_floor=True) == "< 0.0016"
    assert format_p(1.0, at_floor=True) == "1.000"  # a Holm p capped at 1 is no bound


def test_draw_counts_are_resamples_with_replacement() -> None:
    counts = np.concatenate(list(draw_counts(7, 2_000, np.random.default_rng(0), chunk=300)))
    assert counts.shape == (2_000, 7) and (counts.sum(axis=1) == 7).all()
    # each unit is drawn Binomial(7, 1/7) times: mean 1, variance 6/7
    assert counts.mean() == pytest.approx(1.0, abs=0.03) and counts.var() == pytest.approx(6 / 7, abs=0.05)


def test_seed_inflation_gives_the_seed_mean_its_unbiased_variance() -> None:
    """Three seeds with no user variation: resampling them gives their mean the plug-in variance
    (2 / 3) s^2 / 3; the inflated replicates have s^2 / 3, s^2 the seed values' n - 1 variance."""
    offsets = np.array([0.0, 0.03, 0.09])
    grid = np.tile(offsets[:, None], (1, 20))
    replicates = bootstrap_distribution(grid, None, 40_000, seed=1)
    assert seed_inflation(3) == pytest.approx(np.sqrt(1.5))
    assert replicates.var() == pytest.approx(offsets.var(ddof=1) / 3, rel=0.03)


def test_vacuous_comparisons_are_named() -> None:
    values = np.random.default_rng(0).random((1, 30))
    assert vacuous_because(values, values.copy(), "recall@20") == "identical per-user values"
    assert vacuous_because(np.zeros((1, 30)), np.zeros((3, 30)), "recall@20").startswith("both arms constant")
    sparse = np.zeros((1, 30))
    sparse[0, :MIN_NONZERO_USERS - 1] = 1.0
    assert vacuous_because(sparse, np.zeros((1, 30)), "recall@20") == \
        f"{MIN_NONZERO_USERS - 1} user(s) with a non-zero recall@20, fewer than {MIN_NONZERO_USERS}"
    assert vacuous_because(values, values + 0.1, "recall@20") == ""


def test_two_way_bootstrap_widens_around_one_dominant_item() -> None:
    """20 users with one target each: 16 on item 0 (the dominant item), 4 on item 1; the method hits item 0
    and never item 1, the reference hits nothing, so the per-user difference is 1 on item 0's users and 0
    on item 1's (mean 0.8). Resampling users only, the difference is a share of 16-of-20 users: its 95% CI
    is about 0.8 +- 1.96 sqrt(0.8 * 0.2 / 20) = [0.62, 0.98]. Resampling the two items as well, a quarter of
    the replicates draw item 1 twice (only item 1's users count: difference 0) and a quarter item 0 twice
    (difference 1), so by hand the 2.5% and 97.5% quantiles are exactly 0 and 1: the interval spans [0, 1]."""
    users, items = np.arange(20), np.array([0] * 16 + [1] * 4)
    method, reference = (items == 0).astype(float), np.zeros(20)
    low_user, high_user = percentile_interval(bootstrap_distribution(method, reference, 10_000, seed=0))
    assert 0.6 <= low_user < high_user <= 1.0 and low_user > 0.55
    arms = two_way_replicates(users, items, [method, reference], 10_000, seed=0)
    difference = arms[0] - arms[1]
    assert len(difference) > 9_900  # only draws of item 1 twice with none of its 4 users drawn are undefined
    assert percentile_interval(difference) == (0.0, 1.0)
    assert (difference == 0).mean() == pytest.approx(0.25, abs=0.015)
    assert (difference == 1).mean() == pytest.approx(0.25 + 0.5 * 0.8 ** 20, abs=0.015)


def test_two_way_bootstrap_averages_per_user_recall() -> None:
    """Every replicate is a weighted mean of per-user recalls over the drawn targets: an arm that hits every
    pair with probability 0.5 (chance) has recall 0.5 in every replicate, whatever users and items are drawn."""
    users = np.array([0, 0, 1, 1, 1, 2])
    items = np.array([0, 1, 0, 2, 3, 1])
    hits = np.array([1.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    half = np.full(6, 0.5)
    arms = two_way_replicates(users, items, [hits, half, np.stack([hits, half])], 2_000, seed=3)
    assert np.allclose(arms[1], 0.5)
    assert arms[0].min() >= 0 and arms[0].max() <= 1 and arms[0].std() > 0
    with pytest.raises(ValueError, match="pairs"):
        two_way_replicates(users, items, [hits[:5]], 10)
