"""CF baselines against hand-computed values and independent formulations, plus the shared contract."""
from __future__ import annotations

from typing import get_args

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse as sp
from recommender_contract import RecommenderContract, mean_recall_at_10
from study_params import section

from vlm4rec import baselines
from vlm4rec.baselines import (EASE, ItemKNNCF, MostPop, baseline_candidates, cosine_topk_similarity, ease_weights,
                               spd_inverse)
from vlm4rec.config import BaselineName
from vlm4rec.matching import Recommender, recommend
from vlm4rec.splits import History


def history_of(dense: np.ndarray) -> History:
    matrix = sp.csr_matrix(np.asarray(dense, dtype=np.float32))
    return History(matrix=matrix, recency=matrix.copy())


def random_binary(n_users: int, n_items: int, density: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((n_users, n_items)) < density).astype(np.float64)


SMALL = np.array([[1, 1, 0],
                  [1, 1, 1],
                  [0, 1, 1]], dtype=np.float64)


def test_mostpop_scores_train_popularity_for_every_user():
    model = MostPop().fit(history_of(SMALL))
    scores = model.score_block(np.array([2, 0]))
    assert scores.dtype == np.float32
    np.testing.assert_array_equal(scores, [[2, 3, 2], [2, 3, 2]])


def test_itemknn_hand_example_with_shrinkage_and_tied_neighbours():
    # counts 2, 3, 2; dots (0,1)=2, (0,2)=1, (1,2)=2; shrinkage 1:
    # sim01 = sim12 = 2 / (sqrt(6) + 1), sim02 = 1 / 3. With k=1 item 1's neighbours 0 and 2 tie:
    # the lower index (0) wins.
    a = 2 / (np.sqrt(6) + 1)
    model = ItemKNNCF(k_neighbours=1, shrinkage=1.0).fit(history_of(SMALL))
    np.testing.assert_allclose(model.similarity.toarray(), [[0, a, 0], [a, 0, a], [0, 0, 0]], rtol=1e-6)
    np.testing.assert_allclose(model.score_block(np.array([0, 2])), [[a, a, a], [a, 0, a]], rtol=1e-6)


def itemknn_scores_by_loops(x: np.ndarray, k: int, shrinkage: float) -> np.ndarray:
    """The textbook definition, one item pair at a time: S[:, j] = j's k most similar other items."""
    n_items = x.shape[1]
    similarity = np.zeros((n_items, n_items))
    for j in range(n_items):
        candidates = []
        for i in range(n_items):
            if i == j:
                continue
            denominator = np.sqrt(x[:, i].sum()) * np.sqrt(x[:, j].sum()) + shrinkage
            sim = float(x[:, i] @ x[:, j]) / denominator if denominator > 0 else 0.0
            candidates.append((-sim, i))
        for negative_sim, i in sorted(candidates)[:k]:
            if negative_sim < 0:
                similarity[i, j] = -negative_sim
    return x @ similarity


@pytest.mark.parametrize("k, shrinkage, seed", [(1, 0.0, 0), (3, 0.0, 1), (5, 2.5, 2), (50, 10.0, 3)])
def test_itemknn_matches_the_pairwise_loop(k, shrinkage, seed):
    x = random_binary(25, 14, 0.3, seed)
    x[:, 13] = 0  # a cold item: no similarity, no score
    model = ItemKNNCF(k_neighbours=k, shrinkage=shrinkage).fit(history_of(x))
    users = np.arange(25)
    np.testing.assert_allclose(model.score_block(users), itemknn_scores_by_loops(x, k, shrinkage),
                               rtol=1e-5, atol=1e-6)


def test_itemknn_blocks_do_not_change_the_similarity():
    x = sp.csr_matrix(random_binary(30, 23, 0.25, 4))
    whole = cosine_topk_similarity(x, k_neighbours=4, shrinkage=1.0, block_size=64)
    blocked = cosine_topk_similarity(x, k_neighbours=4, shrinkage=1.0, block_size=5)
    np.testing.assert_array_equal(whole.toarray(), blocked.toarray())
    assert (np.diff(whole.tocsc().indptr) <= 4).all()


def ease_weights_by_kkt(x: np.ndarray, l2: float) -> np.ndarray:
    """Each column of B on its own: min ||x_j - X b||^2 + l2 ||b||^2 subject to b_j = 0, solved as
    the KKT system [[X^T X + l2 I, e_j], [e_j^T, 0]] [b; mu] = [X^T x_j; 0]."""
    gram = x.T @ x
    n_items = len(gram)
    weights = np.zeros((n_items, n_items))
    for j in range(n_items):
        kkt = np.zeros((n_items + 1, n_items + 1))
        kkt[:n_items, :n_items] = gram + l2 * np.eye(n_items)
        kkt[j, n_items] = kkt[n_items, j] = 1.0
        rhs = np.concatenate([gram[:, j], [0.0]])
        weights[:, j] = scipy.linalg.solve(kkt, rhs)[:n_items]
    return weights


@pytest.mark.parametrize("l2, seed", [(0.5, 0), (10.0, 1), (300.0, 2)])
def test_ease_matches_columnwise_constrained_least_squares(l2, seed):
    x = random_binary(40, 12, 0.3, seed)
    x[:, 11] = 0  # a cold item keeps a zero column of B
    expected = ease_weights_by_kkt(x, l2)
    closed_form = ease_weights(sp.csr_matrix(x), l2)
    np.testing.assert_allclose(closed_form, expected, rtol=1e-8, atol=1e-10)
    assert np.all(np.diag(closed_form) == 0)
    model = EASE(l2=l2).fit(history_of(x))
    assert model.weights.dtype == np.float32
    scores = model.score_block(np.arange(40))
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, x @ expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [MostPop, lambda: ItemKNNCF(k_neighbours=3, shrinkage=1.0),
                                  lambda: EASE(l2=5.0)])
def test_history_values_count_as_binary(make):
    x = random_binary(20, 9, 0.4, 5)
    weighted = x * np.arange(1, 10)  # e.g. a recency-rank matrix passed by mistake
    users = np.arange(20)
    np.testing.assert_array_equal(make().fit(history_of(weighted)).score_block(users),
                                  make().fit(history_of(x)).score_block(users))


@pytest.mark.parametrize("model", [MostPop(), ItemKNNCF(k_neighbours=2), EASE(l2=1.0)])
def test_scoring_before_fit_is_an_error(model):
    with pytest.raises(RuntimeError, match="fit"):
        model.score_block(np.array([0]))


@pytest.mark.parametrize("build, message", [(lambda: ItemKNNCF(k_neighbours=0), "k_neighbours"),
                                            (lambda: ItemKNNCF(k_neighbours=5, shrinkage=-1), "shrinkage"),
                                            (lambda: EASE(l2=0.0), "l2")])
def test_invalid_hyperparameters_are_rejected(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_names_and_keyword_hyperparameters():
    assert (MostPop.name, ItemKNNCF.name, EASE.name) == get_args(BaselineName)
    knn = ItemKNNCF(k_neighbours=7, shrinkage=3.0)
    assert (knn.k_neighbours, knn.shrinkage) == (7, 3.0)
    assert EASE(l2=42.0).l2 == 42.0


class TestMostPopContract(RecommenderContract):
    def make(self) -> Recommender:
        return MostPop()

    def test_beats_popularity_and_random_on_planted_signal(self, planted) -> None:
        """MostPop *is* the popularity reference, so the contract's bar does not apply. Instead: each
        user's list is their unseen items by (train count desc, item index asc)."""
        seen = planted.history.matrix
        topk = recommend(self.make().fit(planted.history), planted.users, seen, 10)
        counts = np.asarray(seen.sum(axis=0)).ravel()
        for user in planted.users:
            unseen = [i for i in range(seen.shape[1]) if seen[user, i] == 0]
            assert list(topk[user]) == sorted(unseen, key=lambda i: (-counts[i], i))[:10]
        assert mean_recall_at_10(topk, planted) > 0


class TestItemKNNCFContract(RecommenderContract):
    def make(self) -> Recommender:
        return ItemKNNCF(k_neighbours=10, shrinkage=1.0)


class TestEASEContract(RecommenderContract):
    def make(self) -> Recommender:
        return EASE(l2=10.0)


def test_baseline_candidates_cover_the_params_grid() -> None:
    grid = section("baselines", itemknn_cf={"k_neighbours": [10, 20], "shrinkage": [0, 5]}, ease={"l2": [1.0]})
    assert len(baseline_candidates("itemknn_cf", grid)) == 4
    assert baseline_candidates("ease", grid)[0].build().l2 == 1.0
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_candidates("bpr", grid)


def _blas_threads_while(calls: list[int]):
    """A recorder of the BLAS thread limit in force (threadpoolctl), for the functions it wraps."""
    from threadpoolctl import threadpool_info

    def record() -> None:
        calls.append(max(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"))
    return record


def test_ease_inverts_on_one_blas_thread_whatever_the_machine_allows(monkeypatch) -> None:
    """A multi-threaded LAPACK's last bits depend on the thread count: the closed form runs on one thread."""
    from threadpoolctl import threadpool_limits

    calls: list[int] = []
    record, factor = _blas_threads_while(calls), scipy.linalg.lapack.dpotrf
    monkeypatch.setattr(scipy.linalg.lapack, "dpotrf", lambda *a, **k: (record(), factor(*a, **k))[1])
    matrix = sp.random(30, 12, density=0.3, format="csr", random_state=0)
    with threadpool_limits(limits=2, user_api="blas"):
        weights = ease_weights(matrix, l2=10.0)
    baselines._EASE_WEIGHTS.clear()  # computed again, not served from the memo
    with threadpool_limits(limits=1, user_api="blas"):
        assert np.array_equal(weights, ease_weights(matrix, l2=10.0))
    assert calls == [1, 1]


def test_ease_weights_are_reused_only_for_the_same_history_and_l2() -> None:
    """The memo serves a history with the same contents (another object too) and never another history's or
    another penalty's weights; its weights are read-only."""
    x = (np.random.default_rng(3).random((8, 6)) < 0.4).astype(np.float64)

    def dense(x: np.ndarray, l2: float) -> np.ndarray:
        precision = np.linalg.inv(x.T @ x + l2 * np.eye(x.shape[1]))
        weights = np.eye(x.shape[1]) - precision / np.diag(precision)
        np.fill_diagonal(weights, 0.0)
        return weights

    first = ease_weights(sp.csr_matrix(x), 2.0)
    assert ease_weights(sp.csr_matrix(x.copy()), 2.0) is first
    np.testing.assert_allclose(first, dense(x, 2.0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ease_weights(sp.csr_matrix(x), 3.0), dense(x, 3.0), rtol=1e-6, atol=1e-9)
    other = x.copy()
    other[3, 0] = 1.0 - other[3, 0]  # one interaction more or less: new weights, never the memoised ones
    np.testing.assert_allclose(ease_weights(sp.csr_matrix(other), 2.0), dense(other, 2.0), rtol=1e-6, atol=1e-9)
    assert not first.flags.writeable
