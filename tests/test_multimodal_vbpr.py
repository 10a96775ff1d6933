"""VBPR: the score formula from the learned parameters, content concatenation, missing rows, contract."""
from __future__ import annotations

import numpy as np
import pytest
import torch
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


BATCH_PENALTIES = {  # of the batch's blocks of scoring vectors, over the batch size
    "squared": lambda blocks, batch: 0.5 * sum((block ** 2).sum() for block in blocks) / batch,
    "frobenius": lambda blocks, batch: sum(np.linalg.norm(block) for block in blocks) / batch}


@pytest.mark.parametrize("l2_norm", sorted(BATCH_PENALTIES))
def test_training_loss_is_bpr_plus_the_penalty_of_the_scored_vectors(l2_norm):
    """BPR + l2 * the penalty of the blocks [gamma_u, theta_u], item vector_p and item vector_n, item vector =
    [gamma_i, E f_i, beta_i + beta'.f_i]: 0.5 * their squared norms (the default) or their Frobenius norms
    (MMRec's EmbLoss), summed over the blocks / batch; recomputed with numpy from the parameters."""
    rng = np.random.default_rng(3)
    image = rng.normal(size=(6, 5)).astype(np.float32)
    model = VBPR({"image": image}, dim=8, l2=0.7, l2_norm=l2_norm, init="reference", **TINY | {"epochs": 2}).fit(
        history_of(random_history(7, 6, 0.5, 1).toarray()))
    m = model.model
    users, positives, negatives = np.array([1, 1, 3, 6]), np.array([0, 2, 5, 2]), np.array([4, 3, 0, 1])
    with torch.no_grad():
        loss = float(m.loss(*(torch.as_tensor(a) for a in (users, positives, negatives))))
    f = unit_rows(image).astype(np.float64)
    gamma_theta = m.user_factors.detach().double().numpy()
    items = np.hstack([m.item_factors.detach().double().numpy(), f @ m.projection.weight.detach().double().numpy().T,
                       m.item_bias.detach().double().numpy() + f @ m.content_bias.detach().double().numpy()])
    u = np.hstack([gamma_theta[users], np.ones((len(users), 1))])
    margin = (u * (items[positives] - items[negatives])).sum(axis=1)
    penalty = BATCH_PENALTIES[l2_norm]([gamma_theta[users], items[positives], items[negatives]], len(users))
    assert loss == pytest.approx(np.mean(np.log1p(np.exp(-margin))) + 0.7 * penalty, rel=1e-5)


def test_reference_initialisation_is_xavier():
    """init="reference": Xavier-uniform tables (|w| <= sqrt(6 / (rows + cols))) and a Xavier-normal E."""
    model = VBPR({"image": np.ones((50, 40), dtype=np.float32)}, dim=8, init="reference", epochs=0).fit(
        history_of(np.eye(30, 50)))
    users = model.model.user_factors.detach().numpy()
    assert np.abs(users).max() <= np.sqrt(6 / (30 + 8)) and np.abs(users).max() > 0.5 * np.sqrt(6 / 38)
    projection = model.model.projection.weight.detach().numpy()
    assert projection.std() == pytest.approx(np.sqrt(2 / (40 + 4)), rel=0.25)


def test_paper_penalty_is_lambda_theta_on_the_batch_ids_and_lambda_e_on_e_and_beta_prime():
    """penalty="paper": BPR + l2 * 0.5 * (||[gamma_u, theta_u]||^2 + ||gamma_p||^2 + beta_p^2 + ||gamma_n||^2
    + beta_n^2) / batch + l2_content * 0.5 * (||E||^2 + ||beta'||^2): recomputed with numpy; split="each"
    gives gamma and theta dim columns each (MMRec's 64 + 64)."""
    rng = np.random.default_rng(4)
    image = rng.normal(size=(6, 5)).astype(np.float32)
    model = VBPR({"image": image}, dim=4, l2=0.3, penalty="paper", l2_content=0.2, split="each",
                 **TINY | {"epochs": 2}).fit(history_of(random_history(7, 6, 0.5, 1).toarray()))
    m = model.model
    assert m.user_factors.shape == (7, 8) and m.item_factors.shape == (6, 4) and m.projection.weight.shape == (4, 5)
    users, positives, negatives = np.array([0, 2, 2, 5]), np.array([1, 3, 0, 4]), np.array([5, 1, 2, 0])
    with torch.no_grad():
        loss = float(m.loss(*(torch.as_tensor(a) for a in (users, positives, negatives))))
    f = unit_rows(image).astype(np.float64)
    gamma_theta, gamma = m.user_factors.detach().double().numpy(), m.item_factors.detach().double().numpy()
    e, beta = m.projection.weight.detach().double().numpy(), m.item_bias.detach().double().numpy()
    content_bias = m.content_bias.detach().double().numpy()
    items = np.hstack([gamma, f @ e.T, beta + f @ content_bias])
    u = np.hstack([gamma_theta[users], np.ones((len(users), 1))])
    margin = (u * (items[positives] - items[negatives])).sum(axis=1)
    ids = 0.5 * ((gamma_theta[users] ** 2).sum() + (gamma[positives] ** 2).sum() + (beta[positives] ** 2).sum()
                 + (gamma[negatives] ** 2).sum() + (beta[negatives] ** 2).sum()) / len(users)
    content = 0.5 * ((e ** 2).sum() + (content_bias ** 2).sum())
    assert loss == pytest.approx(np.mean(np.log1p(np.exp(-margin))) + 0.3 * ids + 0.2 * content, rel=1e-5)


def test_a_content_penalty_without_the_paper_penalty_is_refused():
    with pytest.raises(ValueError, match="l2_content"):
        VBPR({"image": np.ones((5, 2), dtype=np.float32)}, l2_content=0.1)
    with pytest.raises(ValueError, match="l2_norm"):  # the paper penalty is the paper's squared L2
        VBPR({"image": np.ones((5, 2), dtype=np.float32)}, penalty="paper", l2_norm="frobenius")
