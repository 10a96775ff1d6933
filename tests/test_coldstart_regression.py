"""Content-to-embedding regression: its loss and scores against a dense formulation, the planted new-item
signal against shuffled content, and the recommender contract."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from coldstart_helpers import backbone, planted  # noqa: F401  (module-scoped fixtures)
from coldstart_helpers import TINY_TRAINING, backbone_vectors, dense_forward, new_item_precision, normalised
from recommender_contract import RecommenderContract, planted_item_vectors
from torch_threads import single_thread  # noqa: F401  (autouse fixture)

from vlm4rec.coldstart import ContentRegression
from vlm4rec.matching import Recommender


class TestContentRegressionContract(RecommenderContract):
    def make(self) -> Recommender:
        return ContentRegression(planted_item_vectors(), **TINY_TRAINING)


def test_loss_and_scores_match_a_dense_formulation(planted, backbone):
    content = planted.content.copy()
    content[planted.new_items[0]] = 0.0  # a new item without content cannot be scored
    model = ContentRegression(content, backbone=backbone, hidden=(5,), epochs=3, batch_size=8).fit(planted.history)
    users, items = backbone_vectors(backbone)
    mapped = dense_forward(model.module.f, normalised(content))
    warm = np.asarray(planted.history.matrix.sum(axis=0)).ravel() > 0
    expected = users @ np.where(warm[:, None], items, mapped).T
    expected[:, planted.new_items[0]] = -np.inf
    np.testing.assert_allclose(model.score_block(np.arange(planted.history.n_users)), expected, rtol=1e-4, atol=1e-5)

    batch = np.array([0, 4, 13, 20])
    loss = model.module.loss(torch.as_tensor(batch)).item()
    assert np.isclose(loss, np.mean((mapped[batch] - items[batch]) ** 2), rtol=1e-5)
    assert model.diagnostics()["n_unscorable_new_items"] == 1


def test_linear_map_is_one_layer(planted, backbone):
    model = ContentRegression(planted.content, backbone=backbone, hidden=(), epochs=1).fit(planted.history)
    assert [type(layer).__name__ for layer in model.module.f] == ["Linear"]


def test_new_items_are_placed_by_their_content(planted, backbone):
    def precision(content: np.ndarray) -> float:
        model = ContentRegression(content, backbone=backbone, epochs=60, batch_size=16, lr=0.01)
        return new_item_precision(model.fit(planted.history), planted)

    real, shuffled = precision(planted.content), precision(planted.shuffled_content())
    assert real > 0.8
    assert real > shuffled + 0.3
