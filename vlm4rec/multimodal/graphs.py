"""Sparse graphs of the graph recommenders: built once with scipy, applied to torch tensors.

``interaction_graph``         the user-item graph of LightGCN (He et al., SIGIR 2020, eq. 7): the
                              bipartite adjacency [[0, R], [R^T, 0]] of the binary history R,
                              symmetrically normalised D^-1/2 A D^-1/2 (a node of degree 0 gets no edge).
``knn_graph``                 an item-item graph from one content modality (FREEDOM, Zhou & Shen, ACM MM
                              2023, eq. 1-3; SMORE, Ong & Khong, WSDM 2025, section 3.3): each item's ``k``
                              most cosine-similar other items, binary (FREEDOM) or weighted by the cosine
                              (SMORE), normalised D^-1/2 S D^-1/2 with D the row sums.
``max_fusion``                SMORE's fusion graph: the element-wise maximum of the modality graphs.
``degree_sensitive_dropout``  FREEDOM's edge pruning of the user-item graph (section 3.2.2).
``GraphOperator``             a fixed sparse matrix as a differentiable torch operation: on CPU the
                              product runs in scipy (several times faster than torch.sparse on this kind
                              of matrix), over row blocks in parallel threads, inside a custom autograd
                              function; on CUDA it is torch.sparse.
``layer_mean``                LightGCN's propagation: the mean of x, Ax, ..., A^K x.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp
import torch

from vlm4rec.matching import item_neighbours
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


def knn_graph(features: np.ndarray, k: int, weighted: bool) -> sp.csr_matrix:
    """Normalised item-item kNN graph of one modality ``(n_items, d)``.

    Row i holds the ``k`` items with the highest cosine to item i (itself excluded, ties to the lower
    index); items whose feature row is all zero get no edges and are nobody's neighbour. ``weighted``
    keeps the cosine as the edge weight (SMORE; non-positive cosines are dropped so that degrees stay
    positive), otherwise every edge weighs 1 (FREEDOM).
    """
    neighbours = item_neighbours(normalize_rows(features), k)
    if weighted:
        neighbours.data[neighbours.data <= 0] = 0.0
        neighbours.eliminate_zeros()
    else:
        neighbours.data[:] = 1.0
    return sym_normalize(neighbours)


def max_fusion(graphs: list[sp.csr_matrix]) -> sp.csr_matrix:
    """Element-wise maximum of non-negative graphs over the union of their edges (SMORE's fusion graph)."""
    fused = graphs[0].tocsr()
    for graph in graphs[1:]:
        fused = fused.maximum(graph).tocsr()
    fused.sort_indices()
    return fused


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
    users = np.repeat(np.arange(history.shape[0]), counts)
    items = history.indices
    item_degree = np.bincount(items, minlength=history.shape[1])
    weights = inverse_sqrt(counts[users]) * inverse_sqrt(item_degree[items])
    keys = np.log(rng.random(len(items))) / weights
    by_user_then_key = np.lexsort((-keys, users))  # edges are grouped by user already (csr order)
    best_of_user = by_user_then_key[history.indptr[:-1][counts > 0]]
    keys[best_of_user] = np.inf
    n_keep = max(int(round((1.0 - drop) * len(items))), len(best_of_user))
    kept = np.sort(np.argpartition(-keys, n_keep - 1)[:n_keep]) if n_keep < len(items) else np.arange(len(items))
    return sp.csr_matrix((np.ones(len(kept), dtype=np.float32), (users[kept], items[kept])), shape=history.shape)


_THREADS: ThreadPoolExecutor | None = None


def _thread_pool() -> ThreadPoolExecutor:
    """The process's pool for row-block products, created on first use (one worker per CPU)."""
    global _THREADS
    if _THREADS is None:
        _THREADS = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="graph-product")
    return _THREADS


class RowBlocks:
    """A csr matrix cut into ``parts`` row blocks of about equal nnz; ``blocks @ x`` multiplies each block in
    its own thread (scipy's sparse kernels release the GIL) and stacks the results. Each output row is
    computed exactly as by the whole matrix, so the result does not depend on ``parts``."""

    def __init__(self, matrix: sp.csr_matrix, parts: int):
        cuts = np.searchsorted(matrix.indptr, np.linspace(0, matrix.nnz, max(parts, 1) + 1)[1:-1])
        bounds = np.unique(np.concatenate([[0], cuts, [matrix.shape[0]]]))
        self.blocks = [matrix[start:stop] for start, stop in zip(bounds[:-1], bounds[1:])]

    def __matmul__(self, x: np.ndarray) -> np.ndarray:
        if len(self.blocks) == 1:
            return np.asarray(self.blocks[0] @ x)
        return np.concatenate(list(_thread_pool().map(lambda block: block @ x, self.blocks)))


class _ScipyProduct(torch.autograd.Function):
    """y = M x with M a scipy csr matrix; the gradient is M^T dy (both products in scipy)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, operator: "GraphOperator") -> torch.Tensor:  # type: ignore[override]
        ctx.operator = operator
        return torch.from_numpy(operator.forward_blocks @ x.detach().numpy())

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return torch.from_numpy(ctx.operator.backward_blocks @ np.ascontiguousarray(grad.numpy())), None


class GraphOperator:
    """A fixed sparse matrix M (no gradient flows into it) applied as ``operator @ x``, differentiable
    in ``x``. CPU: scipy products in a custom autograd function, split over ``torch.get_num_threads()`` row
    blocks (M^T is kept for the backward pass unless M is symmetric); CUDA: a torch sparse tensor."""

    def __init__(self, matrix: sp.spmatrix, device: torch.device | str = "cpu", symmetric: bool = False):
        self.matrix = sp.csr_matrix(matrix, dtype=np.float32)
        self.shape = self.matrix.shape
        self.device = torch.device(device)
        self._tensor: torch.Tensor | None = None
        if self.device.type == "cpu":
            threads = torch.get_num_threads()
            self.forward_blocks = RowBlocks(self.matrix, threads)
            self.backward_blocks = self.forward_blocks if symmetric else RowBlocks(self.matrix.T.tocsr(), threads)
        else:
            coo = self.matrix.tocoo()
            indices = torch.as_tensor(np.vstack([coo.row, coo.col]), dtype=torch.long)
            self._tensor = torch.sparse_coo_tensor(indices, torch.as_tensor(coo.data), self.shape).coalesce()
            self._tensor = self._tensor.to(self.device)

    @property
    def nnz(self) -> int:
        return self.matrix.nnz

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        if self._tensor is not None:
            return torch.sparse.mm(self._tensor, x)
        return _ScipyProduct.apply(x.contiguous(), self)


def layer_mean(adjacency: GraphOperator, x: torch.Tensor, layers: int) -> torch.Tensor:
    """LightGCN's final embeddings: the mean of x, A x, ..., A^layers x (He et al. 2020, eq. 4 with
    alpha_k = 1 / (K + 1))."""
    total, current = x, x
    for _ in range(layers):
        current = adjacency @ current
        total = total + current
    return total / (layers + 1)
