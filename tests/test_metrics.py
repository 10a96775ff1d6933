import math

import numpy as np
import pytest
import scipy.sparse as sp

from itertools import permutations

from vlm4rec.metrics import catalogue_coverage, chance_metrics, ranking_metrics, summarize


def targets_from(sets: list[set[int]], n_items: int) -> sp.csr_matrix:
    rows = [u for u, items in enumerate(sets) for _ in items]
    cols = [i for items in sets for i in sorted(items)]
    return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(sets), n_items))


def test_hand_computed_values() -> None:
    targets = targets_from([{1, 4}, {3}], 5)
    topk = np.array([[1, 2, 4, 0], [0, 2, 3, 1]])
    per_user = ranking_metrics(topk, targets, np.array([0, 1]), [2, 4])
    ideal_two = 1 + 1 / math.log2(3)
    expected = {
        "recall@2": [0.5, 0], "precision@2": [0.5, 0], "hit_rate@2": [1, 0], "mrr@2": [1, 0],
        "ndcg@2": [1 / ideal_two, 0],
        "recall@4": [1, 1], "precision@4": [0.5, 0.25], "hit_rate@4": [1, 1], "mrr@4": [1, 1 / 3],
        "ndcg@4": [1.5 / ideal_two, 0.5],
    }
    assert list(per_user["user_idx"]) == [0, 1]
    for column, values in expected.items():
        np.testing.assert_allclose(per_user[column], values, err_msg=column)


def loop_metrics(ranked: list[int], relevant: set[int], k: int) -> dict[str, float]:
    """The definitions, one user at a time, written as plain loops."""
    dcg, first, hits = 0.0, None, 0
    for position, item in enumerate(ranked[:k], start=1):
        if item in relevant:
            hits += 1
            dcg += 1 / math.log2(position + 1)
            first = first or position
    idcg = sum(1 / math.log2(p + 1) for p in range(1, min(len(relevant), k) + 1))
    return {f"recall@{k}": hits / len(relevant), f"precision@{k}": hits / k,
            f"hit_rate@{k}": float(hits > 0), f"mrr@{k}": 1 / first if first else 0.0,
            f"ndcg@{k}": dcg / idcg}


def test_matches_loop_formulation_on_random_data() -> None:
    rng = np.random.default_rng(7)
    n_users, n_items, ks = 60, 40, [1, 3, 10, 20]
    sets = [set(rng.choice(n_items, rng.integers(1, 15), replace=False).tolist()) for _ in range(n_users)]
    topk = np.array([rng.permutation(n_items)[:20] for _ in range(n_users)])
    users = rng.permutation(n_users)[:45]
    per_user = ranking_metrics(topk[users], targets_from(sets, n_items), users, ks)
    for row, user in enumerate(users):
        for k in ks:
            for column, value in loop_metrics(topk[user].tolist(), sets[user], k).items():
                assert per_user.loc[row, column] == pytest.approx(value), (user, column)


def test_users_without_targets_are_an_error() -> None:
    targets = targets_from([{1}, set()], 3)
    with pytest.raises(ValueError, match="no targets"):
        ranking_metrics(np.array([[0, 1], [1, 2]]), targets, np.array([0, 1]), [2])


def test_invalid_ranked_lists_are_errors() -> None:
    targets = targets_from([{1}], 3)
    with pytest.raises(ValueError, match="twice"):
        ranking_metrics(np.array([[1, 1]]), targets, np.array([0]), [2])
    with pytest.raises(ValueError, match="outside"):
        ranking_metrics(np.array([[1, 3]]), targets, np.array([0]), [2])
    with pytest.raises(ValueError, match="ranked list length"):
        ranking_metrics(np.array([[1, 2]]), targets, np.array([0]), [3])


def test_catalogue_coverage_counts_distinct_items_in_top_k() -> None:
    topk = np.array([[0, 1, 5], [0, 3, 6], [2, 1, 7]])
    assert catalogue_coverage(topk, 10, 1) == pytest.approx(0.2)  # {0, 2}
    assert catalogue_coverage(topk, 10, 2) == pytest.approx(0.4)  # {0, 1, 2, 3}
    assert catalogue_coverage(topk, 10, 3) == pytest.approx(0.7)


def test_summarize_macro_averages_users() -> None:
    per_user = ranking_metrics(np.array([[1, 2], [0, 2]]), targets_from([{1}, {2, 3}], 4),
                               np.array([0, 1]), [2])
    summary = summarize(per_user)
    assert summary["n_users"] == 2
    assert summary["recall@2"] == pytest.approx((1 + 0.5) / 2)
    assert "user_idx" not in summary


def random_ranking_means(lists: np.ndarray, relevant: set[int], n_items: int, ks: tuple[int, ...]) -> np.ndarray:
    """Mean of ranking_metrics over the given ranked lists, each scored against the same relevant set."""
    targets = targets_from([relevant] * len(lists), n_items)
    per_list = ranking_metrics(lists, targets, np.arange(len(lists)), ks)
    return per_list.drop(columns="user_idx").mean().to_numpy()


def test_chance_is_the_mean_over_every_permutation() -> None:
    """6 candidates, 2 relevant: the closed form equals the average of every metric over all 720 orderings."""
    ks = (1, 2, 3, 4)
    lists = np.array([p[:4] for p in permutations(range(6))])
    chance = chance_metrics(np.array([6]), np.array([2]), np.array([9]), ks)
    assert chance["user_idx"].tolist() == [9]
    np.testing.assert_allclose(chance.drop(columns="user_idx").to_numpy()[0],
                               random_ranking_means(lists, {0, 1}, 6, ks), rtol=1e-12)
    # by hand: hit_rate@2 = 1 - C(4, 2) / C(6, 2) = 1 - 6 / 15; mrr@2 = 2/6 + (4/6)(2/5) / 2
    assert chance.loc[0, "hit_rate@2"] == pytest.approx(0.6)
    assert chance.loc[0, "mrr@2"] == pytest.approx(1 / 3 + 4 / 30)


def test_chance_matches_a_seeded_monte_carlo_per_user() -> None:
    ks = (5, 10, 20)
    chance = chance_metrics(np.array([40, 25]), np.array([5, 1]), np.array([0, 1]), ks)
    rng = np.random.default_rng(0)
    for row, (n, relevant) in enumerate([(40, {0, 1, 2, 3, 4}), (25, {7})]):
        lists = np.stack([rng.permutation(n)[:20] for _ in range(20_000)])
        np.testing.assert_allclose(chance.drop(columns="user_idx").to_numpy()[row],
                                   random_ranking_means(lists, relevant, n, ks), atol=0.01)


def test_chance_rejects_users_without_targets() -> None:
    with pytest.raises(ValueError, match="chance"):
        chance_metrics(np.array([5]), np.array([0]), np.array([0]), (1,))
