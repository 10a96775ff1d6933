"""FREEDOM: scoring on the full graph plus the weighted frozen item graphs, pruning during training,
learned modality weights, a single modality, and the contract."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from multimodal_helpers import TINY, dense_normalized_adjacency, history_of, random_history
from recommender_contract import RecommenderContract, planted_item_vectors
from torch_threads import single_thread  # noqa: F401  (autouse fixture)

from vlm4rec.matching import Recommender
from vlm4rec.multimodal import FREEDOM
from vlm4rec.multimodal.graphs import knn_graph


class TestFREEDOMContract(RecommenderContract):
    def make(self) -> Recommender:
        image = planted_item_vectors()
        return FREEDOM({"text": image[::-1].copy(), "image": image}, **TINY)


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    dense = random_history(12, 8, 0.4, 2).toarray()
    modalities = {"text": rng.normal(size=(8, 4)).astype(np.float32),
                  "image": rng.normal(size=(8, 6)).astype(np.float32)}
    model = FREEDOM(modalities, layers=2, knn_k=3, edge_drop=0.5, dim=4, **TINY | {"epochs": 4}).fit(history_of(dense))
    return model, dense, modalities


def test_scores_use_the_full_graph_plus_the_weighted_item_graphs(fitted):
    model, dense, modalities = fitted
    ego = model.model.ego.detach().numpy().astype(np.float64)
    adjacency = dense_normalized_adjacency(dense)
    final = (ego + adjacency @ ego + adjacency @ adjacency @ ego) / 3
    alpha = torch.softmax(model.model.modality_logits.detach(), 0).numpy()
    item_graph = sum(a * knn_graph(x, 3, weighted=False).toarray() for a, x in zip(alpha, modalities.values()))
    items = final[12:] + item_graph @ ego[12:]
    np.testing.assert_allclose(model.score_block(np.arange(12)), final[:12] @ items.T, rtol=1e-4, atol=1e-5)


def test_modality_weights_are_learned(fitted):
    model = fitted[0]
    assert not torch.equal(model.model.modality_logits.detach(), torch.zeros(2))


def test_each_epoch_trains_on_a_freshly_pruned_graph(fitted):
    model, dense, _ = fitted
    n_edges = int(dense.sum())
    model.model.start_epoch(np.random.default_rng(0))
    first = model.model.train_adjacency.matrix.copy()
    model.model.start_epoch(np.random.default_rng(1))
    second = model.model.train_adjacency.matrix
    assert first.nnz == second.nnz == 2 * round(0.5 * n_edges)
    assert (first != second).nnz > 0
    assert model.model.adjacency.nnz == 2 * n_edges


def test_runs_with_a_single_modality_and_without_projection_loss(fitted):
    _, dense, modalities = fitted
    for options in ({"projection_weight": 0.0}, {"edge_drop": 0.0}):
        model = FREEDOM({"text": modalities["text"]}, knn_k=2, **options, **TINY | {"epochs": 2}).fit(history_of(dense))
        assert np.isfinite(model.score_block(np.arange(12))).all()
