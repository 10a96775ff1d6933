"""LightGCN: the loss against a dense re-implementation, scoring by final embeddings, and the contract."""
from __future__ import annotations

import numpy as np
import torch
from multimodal_helpers import TINY, dense_normalized_adjacency, history_of, random_history
from recommender_contract import RecommenderContract
from torch_threads import single_thread  # noqa: F401  (autouse fixture)

from vlm4rec.matching import Recommender
from vlm4rec.multimodal import LightGCN
from vlm4rec.training import TrainingOptions


class TestLightGCNContract(RecommenderContract):
    def make(self) -> Recommender:
        return LightGCN(**TINY)


def dense_final_embeddings(history: np.ndarray, ego: np.ndarray, layers: int) -> np.ndarray:
    adjacency = dense_normalized_adjacency(history)
    return sum(np.linalg.matrix_power(adjacency, k) @ ego for k in range(layers + 1)) / (layers + 1)


def test_loss_and_scores_match_a_dense_formulation():
    dense = random_history(9, 6, 0.4, 0).toarray()
    model = LightGCN(layers=2, l2=0.1, dim=4, epochs=0, options=TrainingOptions(seed=0)).fit(history_of(dense))
    ego = model.model.ego.detach().numpy().astype(np.float64)
    final = dense_final_embeddings(dense, ego, 2)
    users, items = final[:9], final[9:]
    np.testing.assert_allclose(model.score_block(np.arange(9)), users @ items.T, rtol=1e-5, atol=1e-6)

    u, p, n = np.array([1, 2, 2]), np.array([0, 3, 5]), np.array([4, 1, 0])
    margin = (users[u] * (items[p] - items[n])).sum(axis=1)
    bpr = np.mean(np.log1p(np.exp(-margin)))
    l2 = 0.5 * sum((ego[rows] ** 2).sum() for rows in (u, 9 + p, 9 + n)) / 3
    loss = model.model.loss(*(torch.as_tensor(a) for a in (u, p, n))).item()
    assert np.isclose(loss, bpr + 0.1 * l2, rtol=1e-5)


def test_frobenius_norm_is_mmrecs_emb_loss_of_the_three_ego_blocks():
    """l2_norm="frobenius": BPR + l2 * (||E_u||_F + ||E_p||_F + ||E_n||_F) / batch (MMRec's EmbLoss, norms
    not squared), recomputed with numpy on a batch that repeats a user and an item."""
    dense = random_history(9, 6, 0.4, 0).toarray()
    model = LightGCN(layers=2, l2=0.1, l2_norm="frobenius", dim=4, epochs=0,
                     options=TrainingOptions(seed=0)).fit(history_of(dense))
    ego = model.model.ego.detach().numpy().astype(np.float64)
    final = dense_final_embeddings(dense, ego, 2)
    u, p, n = np.array([1, 2, 2]), np.array([0, 3, 0]), np.array([4, 1, 5])
    margin = (final[u] * (final[9 + p] - final[9 + n])).sum(axis=1)
    emb_loss = sum(np.linalg.norm(ego[rows]) for rows in (u, 9 + p, 9 + n)) / 3
    loss = model.model.loss(*(torch.as_tensor(a) for a in (u, p, n))).item()
    assert np.isclose(loss, np.mean(np.log1p(np.exp(-margin))) + 0.1 * emb_loss, rtol=1e-5)


def test_a_user_without_history_still_gets_finite_scores():
    dense = random_history(9, 6, 0.4, 1).toarray()  # user 0 has no history
    scores = LightGCN(**TINY | {"epochs": 3}).fit(history_of(dense)).score_block(np.array([0]))
    assert np.isfinite(scores).all()
