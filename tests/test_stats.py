from itertools import product

import numpy as np
import pandas as pd
import pytest

from vlm4rec.stats import (bootstrap_ci, bootstrap_distribution, bootstrap_p, format_p, holm, holm_where_tested,
                            paired_tests, percentile_interval, results_table)


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
    # identical arms: every replicate is 0, so p = 1; a clear shift: no replicate <= 0, p = 2 / 501
    assert table.loc["same", "p"] == 1.0
    assert table.loc["better", "p"] == pytest.approx(2 / 501)
    np.testing.assert_allclose(table["p_holm"], holm(table["p"]))
    assert (table["verdict_blocked_by"] == "").all()


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
    draws give the exact bootstrap distribution; its P(d <= 0) and quantiles are matched by resampling."""
    method = np.array([[0.0, 1.0], [0.4, 0.6]])
    reference = np.array([[0.2, 0.2], [0.5, 0.9]])
    exact = []
    for users in product(range(2), repeat=2):
        for ms in product(range(2), repeat=2):
            for rs in product(range(2), repeat=2):
                exact.append(method[list(ms)][:, list(users)].mean() - reference[list(rs)][:, list(users)].mean())
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
    assert np.isnan(table.loc["graph", "p_holm"])
    # the untested row is not in the Holm family: the other row keeps its own p
    assert table.loc["other", "p_holm"] == table.loc["other", "p"] == pytest.approx(2 / 201)
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
    """Each resample averages the cells of the drawn seeds and the drawn users (an independent loop)."""
    grid = np.random.default_rng(2).random((3, 40))
    mean, low, high = bootstrap_ci(grid, n_resamples=300, seed=7)
    rng = np.random.default_rng(7)
    users = rng.integers(0, 40, size=(300, 40))
    seeds = rng.integers(0, 3, size=(300, 3))
    loop = [grid[seeds[r]][:, users[r]].mean() for r in range(300)]
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
    assert (table.loc["learned", "mean"], table.loc["learned", "ci_low"], table.loc["learned", "ci_high"]) == \
        pytest.approx(bootstrap_ci(learned.to_numpy(), n_resamples=300))
    tests = paired_tests(per_user, "ref", "ndcg@10", n_resamples=300).set_index("method")
    diff = learned.mean(axis=0).to_numpy() - ref
    assert tests.loc["learned", "mean_diff"] == pytest.approx(diff.mean())
    assert tests.loc["learned", "diff_ci_low"] < diff.mean() < tests.loc["learned", "diff_ci_high"]
    assert tests.loc["learned", "diff_ci_low"] < 0.08  # the seed spread (0.05 vs 0.15) widens the interval
    with pytest.raises(ValueError, match="different users"):
        paired_tests(per_user[~((per_user["seed"] == 1) & (per_user["user_idx"] == 0))], "ref", "ndcg@10")


@pytest.mark.parametrize("p, text", [(0.5, "0.500"), (0.0321, "0.032"), (1.2e-4, "1.2e-04"), (0.0, "<1e-10")])
def test_p_values_are_printed_readably(p: float, text: str) -> None:
    assert format_p(p) == text
