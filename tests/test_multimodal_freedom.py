"""FREEDOM: scoring on the full graph plus the fixed-weight frozen item graphs (self-loops included), the
learned-mix variant, pruning during training, a single modality, the training loss against a dense
re-implementation, and the contract."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from multimodal_helpers import TINY, dense_normalized_adjacency, history_of, random_history
from recommender_contract import RecommenderContract, planted_item_vectors
from torch_threads import single_thread  # noqa: F401  (autouse fixture)

from vlm4rec.matching import Recommender
from vlm4rec.multimodal import FREEDOM


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


def dense_knn_graph(x: np.ndarray, k: int) -> np.ndarray:
    """Binary top-k by cosine, the item itself included (its cosine is 1), then D^-1/2 S D^-1/2 by row sums:
    the FREEDOM reference's graph, written with dense numpy."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit @ unit.T
    graph = np.zeros_like(sims)
    for i, row in enumerate(sims):
        graph[i, np.argsort(-row, kind="stable")[:k]] = 1.0
    scale = 1 / np.sqrt(graph.sum(axis=1))
    return scale[:, None] * graph * scale[None, :]


def test_scores_use_the_full_graph_plus_the_reference_mix_of_item_graphs(fitted):
    model, dense, modalities = fitted
    ego = model.model.ego.detach().numpy().astype(np.float64)
    adjacency = dense_normalized_adjacency(dense)
    final = (ego + adjacency @ ego + adjacency @ adjacency @ ego) / 3
    item_graph = 0.9 * dense_knn_graph(modalities["text"], 3) + 0.1 * dense_knn_graph(modalities["image"], 3)
    assert np.all(np.diag(item_graph) > 0)  # self-loops, as the reference's top-k
    items = final[12:] + item_graph @ ego[12:]
    np.testing.assert_allclose(model.score_block(np.arange(12)), final[:12] @ items.T, rtol=1e-4, atol=1e-5)


def test_the_learned_mix_is_a_named_variant_whose_weights_train(fitted):
    _, dense, modalities = fitted
    model = FREEDOM(modalities, knn_k=3, modality_mix="learned", dim=4, **TINY | {"epochs": 4}).fit(history_of(dense))
    logits = model.model.modality_logits.detach()
    assert not torch.equal(logits, torch.zeros(2))
    ego = model.model.ego.detach().numpy().astype(np.float64)[12:]
    alpha = torch.softmax(logits, 0).numpy()
    expected = alpha[0] * dense_knn_graph(modalities["text"], 3) @ ego + alpha[1] * dense_knn_graph(
        modalities["image"], 3) @ ego
    np.testing.assert_allclose(model.model.item_graph_embeddings(model.model.item_graphs).detach().numpy(), expected, rtol=1e-4, atol=1e-6)


def test_no_embedding_l2_by_default():
    assert FREEDOM({"a": np.eye(3, dtype=np.float32)}).l2 == 0.0


def test_training_loss_equals_a_dense_reimplementation(fitted):
    """BPR on (LightGCN on the pruned graph + fixed-mix item graph) + projection_weight * the BPR losses
    of the projected features + l2 * 0.5 * squared ego rows / batch, recomputed with dense numpy."""
    _, dense, modalities = fitted
    model = FREEDOM(modalities, layers=2, knn_k=3, edge_drop=0.5, dim=4, projection_weight=0.3, l2=0.2,
                    **TINY | {"epochs": 1}).fit(history_of(dense))
    net = model.model
    net.start_epoch(np.random.default_rng(7))
    users, positives, negatives = np.array([1, 2, 5, 5]), np.array([0, 3, 1, 6]), np.array([2, 4, 7, 0])
    with torch.no_grad():
        loss = float(net.loss(*(torch.as_tensor(a) for a in (users, positives, negatives))))
    pruned = net.train_adjacency.matrix.toarray().astype(np.float64)
    ego = net.ego.detach().numpy().astype(np.float64)
    final = (ego + pruned @ ego + pruned @ pruned @ ego) / 3
    item_graph = 0.9 * dense_knn_graph(modalities["text"], 3) + 0.1 * dense_knn_graph(modalities["image"], 3)
    u, items = final[:12], final[12:] + item_graph @ ego[12:]

    def bpr(user_rows, pos_rows, neg_rows):
        margin = (user_rows * (pos_rows - neg_rows)).sum(axis=1)
        return np.mean(np.log1p(np.exp(-margin)))

    expected = bpr(u[users], items[positives], items[negatives])
    for (name, x), projection in zip(modalities.items(), net.projections):
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        projected = unit @ projection.weight.detach().numpy().T + projection.bias.detach().numpy()
        expected += 0.3 * bpr(u[users], projected[positives], projected[negatives])
    ego_rows = [ego[users], ego[12 + positives], ego[12 + negatives]]
    expected += 0.2 * 0.5 * sum((r ** 2).sum() for r in ego_rows) / len(users)
    assert loss == pytest.approx(expected, rel=1e-5)


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
        np.testing.assert_allclose(model.model.item_graphs[0].matrix.toarray(),
                                   dense_knn_graph(modalities["text"], 2), rtol=1e-6)


def test_inductive_content_graph_trains_on_the_warm_graph_and_scores_new_items_by_their_warm_neighbours():
    """content_graph="inductive": training propagates over the graph of the warm items alone; a new item's
    vector is its inserted row of the scoring graph applied to the trained item embeddings (its own ID
    embedding and user-item edges are absent)."""
    rng = np.random.default_rng(1)
    dense = random_history(12, 8, 0.5, 3).toarray()
    dense[:, [2, 6]] = 0.0  # new items
    text = rng.normal(size=(8, 4)).astype(np.float32)
    model = FREEDOM({"text": text}, knn_k=3, edge_drop=0.0, dim=4, unseen_items="content",
                    content_graph="inductive", **TINY | {"epochs": 2}).fit(history_of(dense))
    net = model.model
    warm = dense.sum(axis=0) > 0
    trained_graph = net.item_graphs[0].matrix.toarray()
    assert not trained_graph[~warm].any() and not trained_graph[:, ~warm].any()
    scoring_graph = net.scoring_item_graphs[0].matrix.toarray()
    np.testing.assert_allclose(scoring_graph[warm], trained_graph[warm], rtol=1e-6)
    items = net.ego[net.n_users:].detach().numpy().astype(np.float64)
    assert not items[~warm].any()
    np.testing.assert_allclose(model.item_factors[~warm], (scoring_graph @ items)[~warm], rtol=1e-5, atol=1e-6)
    assert np.abs(model.item_factors[~warm]).sum() > 0


def test_inductive_content_graph_needs_new_items_scored_from_content():
    with pytest.raises(ValueError, match="unseen_items"):
        FREEDOM({"text": np.ones((4, 2), dtype=np.float32)}, content_graph="inductive")
