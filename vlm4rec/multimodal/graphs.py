"""Sparse graphs of the graph recommenders: built once with scipy, applied to torch tensors.

``interaction_graph``         the user-item graph of LightGCN (He et al., SIGIR 2020): the bipartite
                              adjacency [[0, R], [R^T, 0]] of the binary history R, symmetrically
                              normalised D^-1/2 A D^-1/2 (a node of degree 0 gets no edge).
``knn_graph``                 an item-item graph from one content modality (FREEDOM, Zhou & Shen, ACM MM
                              2023; SMORE, Ong & Khong, WSDM 2025): each item's ``k`` most cosine-similar
                              items, the item itself among them (as the references' top-k) or not,
                              binary (FREEDOM) or weighted by the cosine (SMORE), normalised D^-1/2 S D^-1/2
                              with D the row sums; the neighbour search is memoised per process (seeds and
                              refits reuse it). Given the warm items, the strictly inductive form: warm
                              items only as neighbours, each new item inserted by its warm neighbours.
``warm_items``, ``warm_rows``  the inductive form's warm items, and its training graph (the warm rows).
``max_fusion``                SMORE's fusion graph: the element-wise maximum of the modality graphs.
``degree_sensitive_dropout``  FREEDOM's degree-sensitive edge pruning of the user-item graph.
``GraphOperator``             a fixed sparse matrix as a differentiable torch operation: torch CSR products
                              inside a custom autograd function whose backward pass multiplies by the
                              stored transpose (CPU or CUDA alike).
``layer_mean``                LightGCN's propagation: the mean of x, Ax, ..., A^K x.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch

from vlm4rec.matching import item_neighbours, stored_coordinates
from vlm4rec.methods import ContentGraph
from vlm4rec.vectors import normalize_rows


def inverse_sqrt(degree: np.ndarray) -> np.ndarray:
    """degree^-1/2 in float64, 0 where the degree is 0 (an isolated node)."""
    degree = np.asarray(degree, dtype=np.float64).ravel()
    return np.divide(1.0, np.sqrt(degree), out=np.zeros_like(degree), where=degree > 0)


def sym_normalize(matrix: sp.spmatrix) -> sp.csr_matrix:
    """D^-1/2 W D^-1/2 (float32 csr) with D the row sums of the square matrix W.

    For a symmetric W (the bipartite user-item graph) this is the usual symmetric normalisation; for a
    directed kNN graph it is the normalisation the FREEDOM and SMORE papers apply (row sums only).
    """
    matrix = sp.csr_matrix(matrix, dtype=np.float64)
    scale = sp.diags(inverse_sqrt(matrix.sum(axis=1)))
    out = (scale @ matrix @ scale).tocsr().astype(np.float32)
    out.sort_indices()
    return out


def interaction_graph(history: sp.spmatrix) -> sp.csr_matrix:
    """Normalised bipartite adjacency, (n_users + n_items) square, users first, of a binary history."""
    history = sp.csr_matrix(history, dtype=np.float32)
    return sym_normalize(sp.bmat([[None, history], [history.T, None]], format="csr"))


def knn_graph(features: np.ndarray, k: int, weighted: bool, self_loops: bool = False,
              warm: np.ndarray | None = None) -> sp.csr_matrix:
    """Normalised item-item kNN graph of one modality ``(n_items, d)``.

    Row i holds the ``k`` items with the highest cosine to item i (ties to the lower index). With
    ``self_loops`` the item itself is one of them (its cosine 1 is the highest: the FREEDOM and SMORE
    reference code take the top-k of a similarity matrix whose diagonal they keep), so it has ``k - 1``
    other neighbours; otherwise ``k`` others. Items whose feature row is all zero get no edges and are
    nobody's neighbour. ``weighted`` keeps the cosine as the edge weight (SMORE; non-positive cosines are
    dropped so that degrees stay positive), otherwise every edge weighs 1 (FREEDOM). The neighbour search
    is memoised (:func:`~vlm4rec.matching.item_neighbours`): the graphs depend on the features only, not on
    the history, so seeds and refits search once.

    ``warm`` (a bool per item; the strictly inductive new-item form): only warm items are neighbours. The
    warm items' rows are exactly the graph of the warm items alone (what training propagates over:
    :func:`warm_rows`), and each other item with the modality is inserted with a row of its own ``k``
    nearest warm items (itself among them with ``self_loops``): the graph at scoring.
    """
    unit = normalize_rows(features)
    n_others = k - 1 if self_loops else k
    if warm is None:
        neighbours = item_neighbours(unit, n_others) if n_others > 0 else \
            sp.csr_matrix((len(unit), len(unit)), dtype=np.float32)
    else:
        warm = np.asarray(warm, dtype=bool)
        neighbours = knn_edges_of_warm(unit, warm, n_others)
    if self_loops:
        present = unit.any(axis=1).astype(np.float32)
        neighbours = (neighbours + sp.diags(present)).tocsr()
    if weighted:
        neighbours.data[neighbours.data <= 0] = 0.0
        neighbours.eliminate_zeros()
    else:
        neighbours.data[:] = 1.0
    return sym_normalize(neighbours)


def knn_edges_of_warm(unit: np.ndarray, warm: np.ndarray, k: int) -> sp.csr_matrix:
    """Cosine kNN edges (``k`` per represented item, to the lower index on ties) whose targets are warm
    items only: the warm items' rows as among the warm items alone, every other represented item's row
    against the warm items (cosines as the float64 product rounded to float32)."""
    warm_unit = unit * warm[:, None]
    edges = item_neighbours(warm_unit, k) if k > 0 else sp.csr_matrix((len(unit), len(unit)), dtype=np.float32)
    inserted = np.flatnonzero(~warm & unit.any(axis=1))
    warm_items = np.flatnonzero(warm & unit.any(axis=1))
    k = min(k, len(warm_items))
    if k == 0 or len(inserted) == 0:
        return edges
    sims = (unit[inserted].astype(np.float64) @ unit[warm_items].astype(np.float64).T).astype(np.float32)
    best = np.argsort(-sims, axis=1, kind="stable")[:, :k]  # stable: ties to the lower warm index
    rows = np.repeat(inserted, k)
    values = np.take_along_axis(sims, best, axis=1).ravel()
    new_rows = sp.csr_matrix((values, (rows, warm_items[best].ravel())), shape=edges.shape, dtype=np.float32)
    return (edges + new_rows).tocsr()


def warm_items(history: sp.csr_matrix, content_graph: ContentGraph) -> np.ndarray | None:
    """The items with a positive in ``history`` (a bool per item) for ``inductive`` content graphs; None for
    ``transductive`` ones (built from every item's features)."""
    return np.asarray(history.getnnz(axis=0) > 0) if content_graph == "inductive" else None


def warm_rows(graph: sp.csr_matrix, warm: np.ndarray) -> sp.csr_matrix:
    """The warm items' rows of an inductive :func:`knn_graph` (the others empty): the graph of the warm items
    alone, since an inserted item is nobody's neighbour and the warm rows' degrees do not count it."""
    kept = (sp.diags(warm.astype(graph.dtype)) @ graph).tocsr()
    kept.eliminate_zeros()
    return kept


def weighted_sum(graphs: list[sp.csr_matrix], weights: list[float]) -> sp.csr_matrix:
    """sum_m weights_m graphs_m as one matrix (FREEDOM's fixed mix: one sparse product per layer)."""
    total = sum(w * g for w, g in zip(weights, graphs)).tocsr()
    total.sort_indices()
    return total


def max_fusion(graphs: list[sp.csr_matrix]) -> sp.csr_matrix:
    """Element-wise maximum of non-negative graphs over the union of their edges (SMORE's fusion graph)."""
    fused = graphs[0].tocsr()
    for graph in graphs[1:]:
        fused = fused.maximum(graph).tocsr()
    fused.sort_indices()
    return fused


def first_maximum_per_row(values: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """Index of the first largest entry of each non-empty row of CSR-ordered ``values`` (rows delimited by
    ``indptr``), in row order: a segmented argmax without sorting."""
    counts = np.diff(indptr)
    starts = indptr[:-1][counts > 0]
    if len(starts) == 0:
        return np.zeros(0, dtype=np.int64)
    row_max = np.repeat(np.maximum.reduceat(values, starts), counts[counts > 0])
    candidates = np.flatnonzero(values == row_max)
    row_of = np.repeat(np.arange(len(starts)), counts[counts > 0])[candidates]
    return candidates[np.r_[True, row_of[1:] != row_of[:-1]]]


def degree_sensitive_dropout(history: sp.csr_matrix, drop: float, rng: np.random.Generator) -> sp.csr_matrix:
    """The edges of the binary ``history`` that survive FREEDOM's degree-sensitive pruning.

    ``round((1 - drop) * nnz)`` edges are kept, drawn without replacement with probability proportional
    to 1 / sqrt(d_u d_i), so edges between high-degree nodes are dropped first (exponential keys
    log(U) / w, the top ones are a weighted sample without replacement: Efraimidis & Spirakis 2006).
    Each user keeps at least one edge (their best-keyed one), so nobody is cut off from the graph for
    the epoch; when there are more users than edges to keep, those users' edges are all that is kept.
    """
    if not 0.0 <= drop < 1.0:
        raise ValueError(f"drop must be in [0, 1), got {drop}")
    history = sp.csr_matrix(history)
    history.sort_indices()
    counts = np.diff(history.indptr)
    users, items = stored_coordinates(history)
    item_degree = np.bincount(items, minlength=history.shape[1])
    weights = inverse_sqrt(counts[users]) * inverse_sqrt(item_degree[items])
    keys = np.log(rng.random(len(items))) / weights
    best_of_user = first_maximum_per_row(keys, history.indptr)
    keys[best_of_user] = np.inf
    n_keep = max(int(round((1.0 - drop) * len(items))), len(best_of_user))
    kept = np.sort(np.argpartition(-keys, n_keep - 1)[:n_keep]) if n_keep < len(items) else np.arange(len(items))
    return sp.csr_matrix((np.ones(len(kept), dtype=np.float32), (users[kept], items[kept])), shape=history.shape)


def torch_csr(matrix: sp.csr_matrix, device: torch.device) -> torch.Tensor:
    """A scipy csr matrix as a torch sparse CSR tensor on ``device`` (float32 values), with int32 indices
    where they fit: torch's CPU product (MKL) gives the same result bit for bit, about 6% faster than with
    int64 indices on ML-1M's user-item graph (benchmarks/README.md, "Graph recommenders")."""
    matrix = sp.csr_matrix(matrix, dtype=np.float32)
    matrix.sort_indices()
    index = torch.int32 if max(matrix.nnz, *matrix.shape) < np.iinfo(np.int32).max else torch.long
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR tensor support is in beta state"
        return torch.sparse_csr_tensor(torch.as_tensor(matrix.indptr, dtype=index),
                                       torch.as_tensor(matrix.indices, dtype=index),
                                       torch.as_tensor(matrix.data), matrix.shape, device=device)


class _SparseProduct(torch.autograd.Function):
    """y = M x with M fixed; the gradient M^T dy uses the transposed matrix kept by the operator."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, operator: "GraphOperator") -> torch.Tensor:  # type: ignore[override]
        ctx.operator = operator
        return operator.forward_matrix @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return ctx.operator.backward_matrix @ grad.contiguous(), None


class GraphOperator:
    """A fixed sparse matrix M (no gradient flows into it) applied as ``operator @ x``, differentiable in
    ``x``: torch CSR products (M, and M^T for the backward pass unless M is symmetric) in a custom autograd
    function. On CPU, torch's multi-threaded CSR kernel ran this graph's products at about twice the rate
    of scipy's single-threaded one and 7x that of torch's COO ``sparse.mm`` (benchmarks/README.md)."""

    def __init__(self, matrix: sp.spmatrix, device: torch.device | str = "cpu", symmetric: bool = False):
        self.matrix = sp.csr_matrix(matrix, dtype=np.float32)
        self.shape = self.matrix.shape
        device = torch.device(device)
        self.forward_matrix = torch_csr(self.matrix, device)
        self.backward_matrix = self.forward_matrix if symmetric else torch_csr(self.matrix.T.tocsr(), device)

    @property
    def nnz(self) -> int:
        return self.matrix.nnz

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        return _SparseProduct.apply(x.contiguous(), self)


def layer_mean(adjacency: GraphOperator, x: torch.Tensor, layers: int) -> torch.Tensor:
    """LightGCN's final embeddings: the mean of x, A x, ..., A^layers x (He et al. 2020, layer
    combination with alpha_k = 1 / (K + 1))."""
    total, current = x, x
    for _ in range(layers):
        current = adjacency @ current
        total = total + current
    return total / (layers + 1)
