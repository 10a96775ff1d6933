"""Graph construction and propagation of vlm4rec.multimodal.graphs against dense and brute-force formulations."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from multimodal_helpers import dense_normalized_adjacency, random_history

from vlm4rec.multimodal.graphs import (GraphOperator, degree_sensitive_dropout, first_maximum_per_row,
                                       interaction_graph, knn_graph, layer_mean, max_fusion, sym_normalize,
                                       torch_csr, warm_rows)


def test_interaction_graph_hand_example():
    # R = [[1, 1], [0, 1]]: degrees u0 = 2, u1 = 1, i0 = 1, i1 = 2
    graph = interaction_graph(sp.csr_matrix(np.array([[1, 1], [0, 1]], dtype=np.float32))).toarray()
    a, b, c = 1 / np.sqrt(2 * 1), 1 / np.sqrt(2 * 2), 1 / np.sqrt(1 * 2)
    expected = np.array([[0, 0, a, b],
                         [0, 0, 0, c],
                         [a, 0, 0, 0],
                         [b, c, 0, 0]])
    np.testing.assert_allclose(graph, expected, rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_interaction_graph_matches_dense_normalisation(seed):
    history = random_history(13, 9, 0.3, seed)
    graph = interaction_graph(history)
    assert graph.dtype == np.float32
    np.testing.assert_allclose(graph.toarray(), dense_normalized_adjacency(history.toarray()), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(graph.toarray(), graph.toarray().T)


@pytest.mark.parametrize("layers", [0, 1, 3])
def test_layer_mean_matches_dense_matrix_powers(layers):
    history = random_history(11, 7, 0.35, 2)
    adjacency = dense_normalized_adjacency(history.toarray())
    x = np.random.default_rng(3).normal(size=(18, 5))
    expected = sum(np.linalg.matrix_power(adjacency, k) @ x for k in range(layers + 1)) / (layers + 1)
    operator = GraphOperator(interaction_graph(history), symmetric=True)
    result = layer_mean(operator, torch.tensor(x, dtype=torch.float32), layers)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("symmetric", [True, False])
def test_graph_operator_gradient_is_the_transposed_product(symmetric):
    """The custom autograd function against torch's own gradient of a dense product (a non-symmetric
    matrix checks that the backward pass uses M^T)."""
    rng = np.random.default_rng(4)
    matrix = sp.random(9, 9, density=0.4, random_state=5, dtype=np.float32)
    matrix = (matrix + matrix.T) if symmetric else matrix
    operator = GraphOperator(matrix, symmetric=symmetric)
    x = torch.tensor(rng.normal(size=(9, 3)), dtype=torch.float32, requires_grad=True)
    weights = torch.tensor(rng.normal(size=(9, 3)), dtype=torch.float32)
    (layer_mean(operator, x, 2) * weights).sum().backward()
    dense = torch.tensor(matrix.toarray())
    x_dense = x.detach().clone().requires_grad_(True)
    ((x_dense + dense @ x_dense + dense @ (dense @ x_dense)) / 3 * weights).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), x_dense.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_int32_indexed_product_is_bit_identical_to_int64():
    """torch_csr keeps int32 indices (faster on CPU); the product must be the int64 tensor's, bit for bit."""
    matrix = sp.random(300, 200, density=0.05, random_state=6, dtype=np.float32).tocsr()
    x = torch.tensor(np.random.default_rng(7).normal(size=(200, 16)), dtype=torch.float32)
    int32 = torch_csr(matrix, torch.device("cpu"))
    assert int32.crow_indices().dtype == torch.int32
    int64 = torch.sparse_csr_tensor(torch.as_tensor(matrix.indptr, dtype=torch.long),
                                    torch.as_tensor(matrix.indices, dtype=torch.long),
                                    torch.as_tensor(matrix.data), matrix.shape)
    assert torch.equal(int32 @ x, int64 @ x)
    np.testing.assert_allclose((int32 @ x).numpy(), matrix @ x.numpy(), rtol=1e-5, atol=1e-6)


def brute_force_knn(features: np.ndarray, k: int, weighted: bool) -> np.ndarray:
    """Each represented item's k most cosine-similar other represented items (ties: lower index),
    then D^-1/2 S D^-1/2 with D the row sums, one item at a time."""
    n = len(features)
    norms = np.linalg.norm(features, axis=1)
    present = norms > 0
    s = np.zeros((n, n))
    for i in np.flatnonzero(present):
        sims = [(-(features[i] @ features[j]) / (norms[i] * norms[j]), j) for j in range(n) if j != i and present[j]]
        for negative_cos, j in sorted(sims)[:k]:
            if not weighted:
                s[i, j] = 1.0
            elif -negative_cos > 0:
                s[i, j] = -negative_cos
    degree = s.sum(axis=1)
    scale = np.array([1 / np.sqrt(d) if d > 0 else 0.0 for d in degree])
    return scale[:, None] * s * scale[None, :]


@pytest.mark.parametrize("k, weighted", [(1, False), (3, False), (3, True), (20, True)])
def test_knn_graph_matches_brute_force_cosine_top_k(k, weighted):
    rng = np.random.default_rng(6)
    features = rng.normal(size=(12, 4)).astype(np.float32)
    features[7] = 0.0                  # missing: no edges, nobody's neighbour
    features[3] = features[10] = features[9]  # exact ties: the lower index comes first
    graph = knn_graph(features, k, weighted)
    np.testing.assert_allclose(graph.toarray(), brute_force_knn(features.astype(np.float64), k, weighted),
                               rtol=1e-5, atol=1e-6)
    assert graph[7].nnz == 0 and graph[:, 7].nnz == 0


def test_knn_graph_breaks_ties_towards_the_lower_index():
    features = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], dtype=np.float32)
    graph = knn_graph(features, 1, weighted=False)
    assert [list(graph[i].indices) for i in range(4)] == [[1], [0], [0], [0]]


def test_max_fusion_takes_the_elementwise_maximum_over_the_union():
    a = sp.csr_matrix(np.array([[0, 0.5, 0], [0.2, 0, 0], [0, 0, 0]], dtype=np.float32))
    b = sp.csr_matrix(np.array([[0, 0.3, 0.4], [0.6, 0, 0], [0, 0, 0]], dtype=np.float32))
    np.testing.assert_allclose(max_fusion([a, b]).toarray(), [[0, 0.5, 0.4], [0.6, 0, 0], [0, 0, 0]], rtol=1e-7)


def test_sym_normalize_uses_row_sums_on_both_sides():
    w = np.array([[0, 2, 1], [1, 0, 0], [0, 0, 0]], dtype=np.float32)  # row sums 3, 1, 0
    expected = np.array([[0, 2 / np.sqrt(3 * 1), 0], [1 / np.sqrt(1 * 3), 0, 0], [0, 0, 0]])
    np.testing.assert_allclose(sym_normalize(sp.csr_matrix(w)).toarray(), expected, rtol=1e-6)


def edge_set(matrix: sp.csr_matrix) -> set[tuple[int, int]]:
    return set(zip(*map(lambda a: a.tolist(), matrix.nonzero())))


@pytest.mark.parametrize("drop", [0.0, 0.3, 0.8, 0.95])
def test_degree_sensitive_dropout_keeps_the_share_and_every_users_last_edge(drop):
    dense = random_history(40, 30, 0.15, 7).toarray()
    dense[5] = 0
    dense[5, 3] = 1                          # user 5: a single edge
    history = sp.csr_matrix(dense)
    for seed in range(5):
        kept = degree_sensitive_dropout(history, drop, np.random.default_rng(seed))
        users_with_edges = np.flatnonzero(np.diff(history.indptr))
        assert kept.nnz == max(round((1 - drop) * history.nnz), len(users_with_edges))
        assert edge_set(kept) <= edge_set(history)
        assert (np.diff(kept.indptr)[users_with_edges] >= 1).all()
        assert kept[5, 3] == 1


def test_degree_sensitive_dropout_samples_in_proportion_to_inverse_sqrt_degrees():
    """In each of 6000 independent copies of a block, user 0 has items 0 (degree 1) and 1 (degree 4;
    users 1-3 have only item 1). Keeping 4 of every 5 edges leaves each single-edge user its edge and
    user 0 exactly one, drawn with probability w / (w_0 + w_1), w = 1 / sqrt(d_u d_i): item 0 with
    (1/sqrt(2)) / (1/sqrt(2) + 1/sqrt(8)) = 2/3."""
    copies = 6000
    block = sp.csr_matrix(np.array([[1, 1], [0, 1], [0, 1], [0, 1]], dtype=np.float32))
    kept = degree_sensitive_dropout(sp.block_diag([block] * copies, format="csr"), 0.2, np.random.default_rng(0))
    first_users, first_items = 4 * np.arange(copies), 2 * np.arange(copies)
    assert np.asarray(kept[first_users, first_items]).mean() == pytest.approx(2 / 3, abs=0.02)


def test_degree_sensitive_dropout_prunes_edges_between_high_degree_nodes_first():
    """Ten heavy users share items 0-9 (weight 1/sqrt(10 * 10) per edge); twenty light users have two
    items of their own each (weight 1/sqrt(2 * 1)). Keeping half the edges keeps nearly every light edge."""
    dense = np.zeros((30, 50), dtype=np.float32)
    dense[:10, :10] = 1
    for user in range(10, 30):
        dense[user, 10 + 2 * (user - 10): 12 + 2 * (user - 10)] = 1
    history = sp.csr_matrix(dense)
    rates = np.mean([degree_sensitive_dropout(history, 0.5, np.random.default_rng(seed)).toarray()
                     for seed in range(300)], axis=0)
    assert rates[10:, 10:].sum() / 40 > 0.9
    assert rates[:10, :10].mean() < 0.35


def test_degree_sensitive_dropout_keeps_one_edge_per_user_when_the_share_is_smaller():
    history = sp.csr_matrix(np.ones((6, 4), dtype=np.float32))
    kept = degree_sensitive_dropout(history, 0.95, np.random.default_rng(0))
    np.testing.assert_array_equal(np.diff(kept.indptr), np.ones(6))


def test_degree_sensitive_dropout_rejects_a_drop_of_one():
    with pytest.raises(ValueError):
        degree_sensitive_dropout(sp.csr_matrix(np.eye(3, dtype=np.float32)), 1.0, np.random.default_rng(0))


def test_first_maximum_per_row_is_a_segmented_argmax_with_ties_to_the_first():
    values = np.array([0.5, 2.0, 2.0, -1.0, 7.0, 3.0, -np.inf, -np.inf])
    indptr = np.array([0, 3, 3, 4, 6, 8])  # rows: [0.5 2 2], [], [-1], [7 3], [-inf -inf]
    np.testing.assert_array_equal(first_maximum_per_row(values, indptr), [1, 3, 4, 6])


def test_knn_graph_with_self_loops_counts_the_item_among_its_k():
    x = np.array([[1, 0], [0.9, 0.1], [0, 1], [0, 0]], dtype=np.float32)
    graph = knn_graph(x, 2, weighted=False, self_loops=True).toarray()
    assert [list(np.flatnonzero(row)) for row in graph] == [[0, 1], [0, 1], [1, 2], []]
    np.testing.assert_allclose(graph[0], [0.5, 0.5, 0, 0], rtol=1e-6)  # D^-1/2 S D^-1/2, row sums 2


def brute_force_inserted_knn(features: np.ndarray, k: int, weighted: bool, warm: np.ndarray) -> np.ndarray:
    """Each represented item, itself and its k - 1 most cosine-similar represented warm items other than
    itself (ties: lower index), cosine-weighted or binary, then D^-1/2 S D^-1/2 with D the row sums."""
    norms = np.linalg.norm(features, axis=1)
    present = norms > 0
    s = np.zeros((len(features), len(features)))
    for i in np.flatnonzero(present):
        s[i, i] = 1.0
        sims = sorted((-(features[i] @ features[j]) / (norms[i] * norms[j]), j)
                      for j in np.flatnonzero(present & warm) if j != i)
        for negative_cos, j in sims[:k - 1]:
            s[i, j] = -negative_cos if weighted else 1.0
    s[s < 0] = 0.0
    degree = s.sum(axis=1)
    scale = np.divide(1.0, np.sqrt(degree), out=np.zeros_like(degree), where=degree > 0)
    return scale[:, None] * s * scale[None, :]


@pytest.mark.parametrize("weighted", [False, True])
def test_inductive_knn_graph_keeps_the_warm_graph_and_inserts_each_new_item_by_its_warm_neighbours(weighted):
    """Warm rows: exactly the graph of the warm items alone (what training propagates over); a new item's
    row: itself and its nearest warm items; no new item is any other item's neighbour."""
    rng = np.random.default_rng(7)
    features = rng.normal(size=(12, 4)).astype(np.float32)
    features[7] = 0.0                              # missing: no edges
    features[3] = features[10] = features[9]       # exact ties: the lower index first
    warm = np.ones(12, dtype=bool)
    warm[[2, 5, 10]] = False
    graph = knn_graph(features, 3, weighted, self_loops=True, warm=warm).toarray()
    np.testing.assert_allclose(graph, brute_force_inserted_knn(features.astype(np.float64), 3, weighted, warm),
                               rtol=1e-5, atol=1e-6)
    warm_alone = knn_graph(features * warm[:, None], 3, weighted, self_loops=True).toarray()
    np.testing.assert_allclose(graph[warm], warm_alone[warm], rtol=1e-6)
    assert not warm_alone[~warm].any() and not warm_alone[:, ~warm].any()
    np.testing.assert_allclose(warm_rows(sp.csr_matrix(graph), warm).toarray(), warm_alone, rtol=1e-6)
    for new in (2, 5, 10):
        assert list(np.flatnonzero(graph[:, new])) == [new]
