"""cEASE^R and Add-EASE^R: weights and scores against a dense formulation written out with an explicit
inverse, their limits (no content weight = EASE^R), the planted new-item signal against shuffled content,
and the recommender contract."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from coldstart_helpers import new_item_precision, normalised, planted_new_items
from recommender_contract import RecommenderContract, planted_item_vectors

from vlm4rec.baselines import EASE
from vlm4rec.coldstart import AdditiveEASE, CollectiveEASE
from vlm4rec.matching import Recommender
from vlm4rec.splits import History


class TestCollectiveEASEContract(RecommenderContract):
    def make(self) -> Recommender:
        return CollectiveEASE(planted_item_vectors(), l2=10.0, alpha=1.0)


class TestAdditiveEASEContract(RecommenderContract):
    def make(self) -> Recommender:
        return AdditiveEASE(planted_item_vectors(), l2=10.0, content_l2=0.5, beta=0.3)


def dense_ease(gram: np.ndarray, l2: float) -> np.ndarray:
    """B_ij = -P_ij / P_jj off the diagonal, 0 on it, P = (G + l2 I)^-1."""
    precision = np.linalg.inv(gram + l2 * np.eye(len(gram)))
    weights = -precision / np.diag(precision)[None, :]
    np.fill_diagonal(weights, 0.0)
    return weights


@pytest.fixture(scope="module")
def tiny():
    """5 users x 6 items; items 4 and 5 are new, item 5 has no content."""
    history = np.array([[1, 1, 0, 0, 0, 0],
                        [0, 1, 1, 0, 0, 0],
                        [1, 0, 1, 1, 0, 0],
                        [0, 0, 0, 1, 0, 0],
                        [1, 1, 1, 0, 0, 0]], dtype=np.float32)
    content = np.array([[1, 0, 0], [0.8, 0.6, 0], [0, 1, 0], [0, 0, 2], [0.6, 0.8, 0], [0, 0, 0]], dtype=np.float32)
    matrix = sp.csr_matrix(history)
    return History(matrix, matrix.copy()), history.astype(np.float64), content


def test_collective_ease_matches_the_stacked_closed_form(tiny):
    history, x, content = tiny
    model = CollectiveEASE(content, l2=2.0, alpha=3.0).fit(history)
    stacked = np.vstack([x, 3.0 * normalised(content).T])          # [X; alpha T]
    expected = x @ dense_ease(stacked.T @ stacked, 2.0)
    expected[:, 5] = -np.inf
    np.testing.assert_allclose(model.score_block(np.arange(5)), expected, rtol=1e-5, atol=1e-6)
    assert np.all(expected[[0, 1, 2, 4], 4] != 0)  # the new item with content is reached through it
    assert model.diagnostics()["n_unscorable_new_items"] == 1


def test_additive_ease_blends_two_closed_forms(tiny):
    history, x, content = tiny
    model = AdditiveEASE(content, l2=2.0, content_l2=0.5, beta=0.25).fit(history)
    c = normalised(content)
    expected = x @ (0.75 * dense_ease(x.T @ x, 2.0) + 0.25 * dense_ease(c @ c.T, 0.5))
    expected[:, 5] = -np.inf
    np.testing.assert_allclose(model.score_block(np.arange(5)), expected, rtol=1e-5, atol=1e-6)


def test_without_content_weight_both_are_ease_on_warm_items(tiny):
    history, _, content = tiny
    ease = EASE(l2=2.0).fit(history).score_block(np.arange(5))
    for model in (CollectiveEASE(content, l2=2.0, alpha=0.0), AdditiveEASE(content, l2=2.0, beta=0.0)):
        scores = model.fit(history).score_block(np.arange(5))
        np.testing.assert_allclose(scores[:, :4], ease[:, :4], rtol=1e-5, atol=1e-6)
        assert np.all(scores[:, 4] == 0)  # a new item has no weight from the history alone


@pytest.mark.parametrize("make", [lambda c: CollectiveEASE(c, l2=20.0, alpha=2.0),
                                  lambda c: AdditiveEASE(c, l2=5.0, content_l2=1.0, beta=0.5)])
def test_new_items_are_placed_by_their_content(make):
    planted = planted_new_items()
    real = new_item_precision(make(planted.content).fit(planted.history), planted)
    shuffled = new_item_precision(make(planted.shuffled_content()).fit(planted.history), planted)
    assert real > 0.8
    assert real > shuffled + 0.3


def test_a_refit_on_the_same_history_content_and_configuration_reuses_its_weights(tiny):
    """The strict protocol's phases fit on the same warm history: one solve per (model, configuration,
    history, content); another configuration or model is solved anew."""
    history, x, content = tiny
    first = CollectiveEASE(content, l2=2.0, alpha=0.5).fit(history).item_weights
    assert CollectiveEASE(content.copy(), l2=2.0, alpha=0.5).fit(history).item_weights is first
    other = CollectiveEASE(content, l2=2.0, alpha=0.7).fit(history).item_weights
    assert other is not first and not np.allclose(other, first)
    additive = AdditiveEASE(content, l2=2.0, content_l2=0.5, beta=0.0).fit(history).item_weights
    assert additive is not first and not first.flags.writeable
