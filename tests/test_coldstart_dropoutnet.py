"""DropoutNet: its loss and scores against a dense formulation of the two towers, its input dropout, the
planted new-item signal against shuffled content, and the recommender contract."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from coldstart_helpers import backbone, planted  # noqa: F401  (module-scoped fixtures)
from coldstart_helpers import TINY_TRAINING, backbone_vectors, dense_forward, new_item_precision, normalised
from recommender_contract import RecommenderContract, planted_item_vectors
from torch_threads import single_thread  # noqa: F401  (autouse fixture)

from vlm4rec.coldstart import DropoutNet
from vlm4rec.matching import Recommender

SMALL = dict(hidden=(12, 8), out_dim=6)


class TestDropoutNetContract(RecommenderContract):
    def make(self) -> Recommender:
        return DropoutNet(planted_item_vectors(), **SMALL, **TINY_TRAINING)


@pytest.fixture(scope="module")
def fitted(planted, backbone):
    return DropoutNet(planted.content, backbone=backbone, epochs=2, batch_size=32, **SMALL).fit(planted.history)


def test_scores_match_a_dense_formulation(planted, backbone, fitted):
    users, items = backbone_vectors(backbone)
    warm = np.asarray(planted.history.matrix.sum(axis=0)).ravel() > 0
    preference = np.where(warm[:, None], items, 0.0)  # a new item's preference input is zero
    user_out = dense_forward(fitted.module.user_tower, users)
    item_out = dense_forward(fitted.module.item_tower, np.hstack([preference, normalised(planted.content)]))
    np.testing.assert_allclose(fitted.score_block(np.arange(planted.history.n_users)), user_out @ item_out.T,
                               rtol=1e-4, atol=1e-5)


def test_loss_is_the_squared_error_to_the_backbone_scores(planted, backbone, fitted):
    users, items = backbone_vectors(backbone)
    u, i = np.array([0, 3, 17, 40]), np.array([1, 2, 20, 40])
    keep = np.array([1.0, 0.0, 1.0, 0.0])
    c = normalised(planted.content)
    target = (users[u] * items[i]).sum(axis=1)
    predicted = (dense_forward(fitted.module.user_tower, users[u])
                 * dense_forward(fitted.module.item_tower, np.hstack([items[i] * keep[:, None], c[i]]))).sum(axis=1)
    fitted.module.eval()  # batch normalisation by its running statistics, as the dense layers do
    loss = fitted.module.loss(torch.as_tensor(u), torch.as_tensor(i), torch.as_tensor(keep, dtype=torch.float32))
    assert np.isclose(loss.item(), np.mean((target - predicted) ** 2), rtol=1e-5)


@pytest.mark.parametrize("dropout, keep", [(0.0, 1.0), (1.0, 0.0)])
def test_dropout_zeroes_the_item_preference_input(planted, backbone, fitted, dropout, keep):
    model = copy.copy(fitted)  # the fitted towers, another dropout rate
    model.config = fitted.config.model_copy(update={"dropout": dropout})
    model.module.eval()
    u, i = torch.as_tensor([0, 3, 17]), torch.as_tensor([1, 2, 20])
    drawn = model.batch_loss((u, i), torch.Generator().manual_seed(0))
    expected = model.module.loss(u, i, torch.full((3,), keep))
    assert drawn.item() == pytest.approx(expected.item())


def test_new_items_are_placed_by_their_content(planted, backbone):
    def precision(content: np.ndarray) -> float:
        model = DropoutNet(content, backbone=backbone, epochs=10, batch_size=32, lr=0.01, **SMALL)
        return new_item_precision(model.fit(planted.history), planted)

    real, shuffled = precision(planted.content), precision(planted.shuffled_content())
    assert real > 0.8
    assert real > shuffled + 0.3
