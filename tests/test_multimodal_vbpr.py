"""VBPR: the score formula from the learned parameters, content concatenation, missing rows, contract."""
from __future__ import annotations

import numpy as np
import pytest
from multimodal_helpers import TINY, history_of, random_history
from recommender_contract import RecommenderContract, planted_item_vectors
from torch_threads import single_thread  # noqa: F401  (autouse fixture)

from vlm4rec.matching import Recommender
from vlm4rec.multimodal import VBPR


class TestVBPRContract(RecommenderContract):
    def make(self) -> Recommender:
        return VBPR({"image": planted_item_vectors()}, **TINY)


def unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norms > 0, x / np.where(norms > 0, norms, 1), 0)


def test_scores_follow_the_paper_formula():
    """score(u, i) = beta_i + gamma_u.gamma_i + theta_u.(E f_i) + beta'.f_i with f_i the concatenated
    normalised modalities; the second modality is missing for item 2."""
    rng = np.random.default_rng(0)
    text, image = rng.normal(size=(6, 3)).astype(np.float32), rng.normal(size=(6, 5)).astype(np.float32)
    image[2] = 0.0
    model = VBPR({"text": text, "image": image}, dim=8, **TINY | {"epochs": 3}).fit(
        history_of(random_history(7, 6, 0.5, 1).toarray()))
    m = model.model
    gamma_u, theta_u = m.user_factors.detach().numpy()[:, :4], m.user_factors.detach().numpy()[:, 4:]
    f = np.concatenate([unit_rows(text), unit_rows(image)], axis=1)
    expected = (m.item_bias.detach().numpy().T + gamma_u @ m.item_factors.detach().numpy().T
                + theta_u @ (f @ m.projection.weight.detach().numpy().T).T
                + (f @ m.content_bias.detach().numpy()).T)
    np.testing.assert_allclose(model.score_block(np.arange(7)), expected, rtol=1e-5, atol=1e-5)


def test_needs_a_modality_with_one_row_per_item():
    with pytest.raises(ValueError):
        VBPR({})
    with pytest.raises(ValueError, match="items"):
        VBPR({"image": np.ones((5, 2), dtype=np.float32)}).fit(history_of(np.eye(4)))
