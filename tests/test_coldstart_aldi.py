"""ALDI: its four-term loss and its teacher / student scores against a dense formulation, the teacher
weights by hand, the planted new-item signal against shuffled content, and the recommender contract."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from coldstart_helpers import backbone, planted  # noqa: F401  (module-scoped fixtures)
from coldstart_helpers import TINY_TRAINING, backbone_vectors, dense_forward, new_item_precision, normalised
from recommender_contract import RecommenderContract, planted_item_vectors
from torch_threads import single_thread  # noqa: F401  (autouse fixture)

from vlm4rec.coldstart import ALDI
from vlm4rec.coldstart.aldi import teacher_weights
from vlm4rec.matching import Recommender


class TestALDIContract(RecommenderContract):
    def make(self) -> Recommender:
        return ALDI(planted_item_vectors(), **TINY_TRAINING)


@pytest.fixture(scope="module")
def fitted(planted, backbone):
    return ALDI(planted.content, backbone=backbone, epochs=2, batch_size=32, hidden=(7,), alpha=0.7, beta=0.3,
                gamma=0.2, l2=0.01, frequency_weighting=True).fit(planted.history)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def bce(logit: np.ndarray, target: np.ndarray) -> np.ndarray:
    return -(target * np.log(sigmoid(logit)) + (1 - target) * np.log(1 - sigmoid(logit)))


def test_teacher_weights_by_hand():
    # users of sizes 2, 1, 4 -> item 0: 1/2 + 1/4, item 1: 1/2 + 1 + 1/4, items 2, 3: 1/4, item 4: none
    matrix = sp.csr_matrix(np.array([[1, 1, 0, 0, 0], [0, 1, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=np.float32))
    freq = np.array([0.75, 1.75, 0.25, 0.25, 0.0])
    a = 2.0 / (3 / 5)  # M / (n_users / n_items)
    expected = np.minimum(np.tanh(a * freq), np.tanh(2.0))
    np.testing.assert_allclose(teacher_weights(matrix, True, 2.0), expected, rtol=1e-6)
    np.testing.assert_array_equal(teacher_weights(matrix, False, 2.0), np.ones(5))


def test_loss_matches_the_four_terms_written_out(planted, backbone, fitted):
    users, items = backbone_vectors(backbone)
    c = normalised(planted.content)
    u, p, n = np.array([0, 5, 16, 33, 44]), np.array([0, 2, 19, 37, 40]), np.array([20, 25, 3, 10, 1])
    module = fitted.module
    student_user = dense_forward(module.user_mapper, users[u])
    student_pos, student_neg = dense_forward(module.item_mapper, c[p]), dense_forward(module.item_mapper, c[n])
    s_pos, s_neg = (student_user * student_pos).sum(1), (student_user * student_neg).sum(1)
    t_pos, t_neg = (users[u] * items[p]).sum(1), (users[u] * items[n]).sum(1)
    w = teacher_weights(planted.history.matrix, True, 4.0)[p]
    supervised = np.mean(np.log1p(np.exp(-(s_pos - s_neg))))
    rating = np.mean(np.abs(t_pos - s_pos) + np.abs(t_neg - s_neg))
    ranking = np.mean(w * bce(s_pos - s_neg, sigmoid(t_pos - t_neg)))
    gap_student = (student_pos ** 2).sum(1) - (student_pos @ student_neg.T).mean(1)
    gap_teacher = (items[p] ** 2).sum(1) - (items[p] @ items[n].T).mean(1)
    identification = np.mean(w * bce(gap_student, sigmoid(gap_teacher)))
    l2 = sum((layer.weight.detach().double() ** 2).sum().item() + (layer.bias.detach().double() ** 2).sum().item()
             for layer in [*module.item_mapper, *module.user_mapper] if isinstance(layer, torch.nn.Linear))
    expected = supervised + 0.2 * rating + 0.7 * ranking + 0.3 * identification + 0.01 * 0.5 * l2
    module.eval()  # batch normalisation by its running statistics, as the dense layers do
    loss = module.loss(*(torch.as_tensor(a) for a in (u, p, n))).item()
    assert np.isclose(loss, expected, rtol=1e-5)


def test_warm_items_by_the_teacher_new_items_by_the_student(planted, backbone, fitted):
    users, items = backbone_vectors(backbone)
    scores = fitted.score_block(np.arange(planted.history.n_users))
    warm = np.asarray(planted.history.matrix.sum(axis=0)).ravel() > 0
    student = (dense_forward(fitted.module.user_mapper, users)
               @ dense_forward(fitted.module.item_mapper, normalised(planted.content)).T)
    np.testing.assert_allclose(scores[:, warm], (users @ items.T)[:, warm], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores[:, ~warm], student[:, ~warm], rtol=1e-4, atol=1e-5)


def test_new_items_are_placed_by_their_content(planted, backbone):
    def precision(content: np.ndarray) -> float:
        model = ALDI(content, backbone=backbone, epochs=10, batch_size=32, lr=0.01, hidden=(12,))
        return new_item_precision(model.fit(planted.history), planted)

    real, shuffled = precision(planted.content), precision(planted.shuffled_content())
    assert real > 0.8
    assert real > shuffled + 0.3
