"""The contract every :class:`vlm4rec.matching.Recommender` must meet, as a reusable test mixin.

Use it by inheriting and defining ``make``::

    from recommender_contract import RecommenderContract

    class TestMyModel(RecommenderContract):
        def make(self) -> Recommender:
            return MyModel(...)

The planted data set (``planted_data``) has two user groups, each liking one item cluster; the
larger group makes its cluster the popular one, so popularity alone serves the smaller group badly.
A content model can get item vectors that carry the clusters from ``planted_item_vectors``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from vlm4rec.matching import Recommender, recommend, recommend_torch
from vlm4rec.metrics import ranking_metrics
from vlm4rec.splits import History, build_history, targets_of

PLANTED_ITEMS_PER_CLUSTER = 20
PLANTED_GROUP_SIZES = (20, 40)   # users liking cluster 0, users liking cluster 1
PLANTED_TRAIN, PLANTED_TEST = 7, 3


@dataclass(frozen=True)
class PlantedData:
    """Train history, test targets and the planted structure behind them."""

    history: History
    targets: sp.csr_matrix
    user_group: np.ndarray    # 0 / 1 per user
    item_cluster: np.ndarray  # 0 / 1 per item

    @property
    def users(self) -> np.ndarray:
        return np.arange(self.history.n_users)


def planted_data(seed: int = 0) -> PlantedData:
    """Each user interacts with 10 random items of their group's cluster: the first 7 (in time)
    are train, the last 3 test."""
    rng = np.random.default_rng(seed)
    n_items = 2 * PLANTED_ITEMS_PER_CLUSTER
    item_cluster = np.repeat([0, 1], PLANTED_ITEMS_PER_CLUSTER)
    user_group = np.repeat([0, 1], PLANTED_GROUP_SIZES)
    rows = []
    for user, group in enumerate(user_group):
        items = rng.choice(np.flatnonzero(item_cluster == group), PLANTED_TRAIN + PLANTED_TEST,
                           replace=False)
        for t, item in enumerate(items):
            rows.append((user, int(item), t, "train" if t < PLANTED_TRAIN else "test"))
    inter = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp", "split"])
    n_users = len(user_group)
    return PlantedData(history=build_history(inter, ("train",), n_users, n_items),
                       targets=targets_of(inter, "test", n_users, n_items),
                       user_group=user_group, item_cluster=item_cluster)


def planted_item_vectors(d: int = 8, noise: float = 0.3, seed: int = 0) -> np.ndarray:
    """Item vectors that carry the planted clusters: a cluster centroid plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    centroids = rng.normal(size=(2, d))
    cluster = np.repeat([0, 1], PLANTED_ITEMS_PER_CLUSTER)
    return (centroids[cluster] + noise * rng.normal(size=(len(cluster), d))).astype(np.float32)


def mean_recall_at_10(topk: np.ndarray, data: PlantedData) -> float:
    return float(ranking_metrics(topk, data.targets, data.users, [10])["recall@10"].mean())


class _PopularityScores(Recommender):
    """Train popularity for everybody (the MostPop-like reference of the contract)."""

    def fit(self, history: History) -> "_PopularityScores":
        self.counts = np.asarray(history.matrix.sum(axis=0), dtype=np.float32).ravel()
        return self

    def score_block(self, users: np.ndarray) -> np.ndarray:
        return np.tile(self.counts, (len(users), 1))


class _RandomScores(Recommender):
    """Seeded random scores (the chance reference of the contract)."""

    def fit(self, history: History) -> "_RandomScores":
        self.n_items = history.n_items
        return self

    def score_block(self, users: np.ndarray) -> np.ndarray:
        return np.random.default_rng(0).random((len(users), self.n_items), dtype=np.float32)


class RecommenderContract:
    """Mixin of contract tests; subclasses define ``make()`` returning an unfitted recommender."""

    def make(self) -> Recommender:
        raise NotImplementedError

    @pytest.fixture(scope="class")
    @classmethod
    def planted(cls) -> PlantedData:
        return planted_data()

    def fitted(self, planted: PlantedData) -> Recommender:
        return self.make().fit(planted.history)

    def test_score_block_shape_and_dtype(self, planted: PlantedData) -> None:
        users = np.array([0, 5, 30, 59])
        scores = self.fitted(planted).score_block(users)
        assert isinstance(scores, np.ndarray)
        assert scores.dtype == np.float32
        assert scores.shape == (len(users), planted.history.n_items)
        assert not np.isnan(scores).any()

    def test_scores_are_deterministic_and_block_independent(self, planted: PlantedData) -> None:
        users = np.arange(planted.history.n_users)
        first = self.fitted(planted).score_block(users)
        second_model = self.fitted(planted)
        np.testing.assert_array_equal(first, second_model.score_block(users))
        reordered = np.array([41, 3, 17])
        np.testing.assert_allclose(second_model.score_block(reordered), first[reordered],
                                   rtol=1e-5, atol=1e-6)

    def test_torch_engine_on_the_cpu_gives_the_same_top_k(self, planted: PlantedData) -> None:
        model = self.fitted(planted)
        seen = planted.history.matrix
        for k in (1, 10, seen.shape[1]):
            np.testing.assert_array_equal(recommend_torch(model, planted.users, seen, k, 16, device="cpu"),
                                          recommend(model, planted.users, seen, k, 16))

    def test_recommend_excludes_seen_items(self, planted: PlantedData) -> None:
        model = self.fitted(planted)
        seen = planted.history.matrix
        n_items = seen.shape[1]
        topk = recommend(model, planted.users, seen, k=n_items, block_size=16)
        unscorable = ~np.isfinite(model.score_block(planted.users))
        for user in planted.users:
            last = sorted(set(seen[user].indices) | set(np.flatnonzero(unscorable[user])))
            assert list(topk[user, n_items - len(last):]) == last

    def test_beats_popularity_and_random_on_planted_signal(self, planted: PlantedData) -> None:
        def recall(model: Recommender) -> float:
            topk = recommend(model.fit(planted.history), planted.users, planted.history.matrix, 10)
            return mean_recall_at_10(topk, planted)

        model_recall = recall(self.make())
        assert model_recall > recall(_PopularityScores()) + 0.1
        assert model_recall > recall(_RandomScores()) + 0.1
