"""Classic collaborative-filtering baselines on the binary history matrix.

``MostPop``    train popularity (the same score row for every user).
``ItemKNNCF``  item-item cosine with shrinkage, each item's top-k neighbours kept: score = H S.
``EASE``       Steck (2019) EASE^R closed form: B = I - P diag(1/diag P), P = (X^T X + l2 I)^-1.

Each is a :class:`~vlm4rec.matching.Recommender`; the matching engine masks seen items and breaks ties
by item index, so scores here are raw. :func:`baseline_candidates` is each one's validation grid.
"""
from __future__ import annotations

from itertools import product

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from vlm4rec.config import BaselineParams
from vlm4rec.evaluation import Candidate
from vlm4rec.matching import Recommender
from vlm4rec.memo import ContentMemo, fingerprint, read_only
from vlm4rec.methods import of_kind
from vlm4rec.splits import History, binarize


class _HistoryRecommender(Recommender):
    """Keeps the binary history of ``fit`` and refuses to score before it."""

    _history: sp.csr_matrix | None = None

    def _history_rows(self, users: np.ndarray) -> sp.csr_matrix:
        if self._history is None:
            raise RuntimeError(f"{type(self).__name__}.fit() must be called before score_block()")
        return self._history[np.asarray(users, dtype=np.int64)]


class MostPop(_HistoryRecommender):
    """Scores every item by its number of users in the fitted history."""

    name = "mostpop"

    def fit(self, history: History) -> "MostPop":
        self._history = binarize(history.matrix)
        self.popularity = np.asarray(self._history.sum(axis=0), dtype=np.float32).ravel()
        return self

    def score_block(self, users: np.ndarray) -> np.ndarray:
        n_rows = self._history_rows(users).shape[0]
        return np.repeat(self.popularity[None, :], n_rows, axis=0)


def cosine_topk_similarity(matrix: sp.csr_matrix, k_neighbours: int, shrinkage: float,
                           block_size: int = 512) -> sp.csr_matrix:
    """Items x items sparse S: column j holds item j's ``k_neighbours`` most similar other items.

    sim(i, j) = <x_i, x_j> / (|x_i| |x_j| + shrinkage) over the item columns of ``matrix``; only
    positive similarities are kept; ties are broken by the lower item index. Columns are computed in
    blocks, so memory is O(n_items * block_size) besides the result, and the cost is that of X^T X.
    """
    n_items = matrix.shape[1]
    by_item = sp.csr_matrix(matrix.T)
    columns = sp.csc_matrix(matrix)
    norms = np.sqrt(np.asarray(columns.multiply(columns).sum(axis=0), dtype=np.float64).ravel())
    keep = min(k_neighbours, max(n_items - 1, 0))
    rows, cols, vals = [], [], []
    for start in range(0, n_items, block_size):
        block = np.arange(start, min(start + block_size, n_items))
        dots = (by_item @ columns[:, block]).toarray().astype(np.float64)
        denominator = norms[:, None] * norms[None, block] + shrinkage
        sims = np.divide(dots, denominator, out=np.zeros_like(dots), where=denominator > 0)
        sims[block, np.arange(len(block))] = 0.0
        top = np.argsort(-sims, axis=0, kind="stable")[:keep]
        top_sims = np.take_along_axis(sims, top, axis=0)
        positive = top_sims > 0
        rows.append(top[positive])
        cols.append(np.broadcast_to(block[None, :], top.shape)[positive])
        vals.append(top_sims[positive])
    entries = (np.concatenate(rows), np.concatenate(cols))
    return sp.csr_matrix((np.concatenate(vals).astype(np.float32), entries), shape=(n_items, n_items))


class ItemKNNCF(_HistoryRecommender):
    """Item-based CF: a user's score for item j sums j's top-k neighbour similarities in the history."""

    name = "itemknn_cf"

    def __init__(self, k_neighbours: int = 100, shrinkage: float = 0.0):
        if k_neighbours < 1:
            raise ValueError(f"k_neighbours must be >= 1, got {k_neighbours}")
        if shrinkage < 0:
            raise ValueError(f"shrinkage must be >= 0, got {shrinkage}")
        self.k_neighbours, self.shrinkage = k_neighbours, shrinkage

    def fit(self, history: History) -> "ItemKNNCF":
        self._history = binarize(history.matrix)
        self.similarity = cosine_topk_similarity(self._history, self.k_neighbours, self.shrinkage)
        return self

    def score_block(self, users: np.ndarray) -> np.ndarray:
        return (self._history_rows(users) @ self.similarity).toarray().astype(np.float32)


#: (history, l2) -> EASE^R weights for a stage's two histories, train (validation) and train + validation
#: (test): ~110 MB each at ML-1M
_EASE_WEIGHTS: ContentMemo[np.ndarray] = ContentMemo(size=2)


def ease_weights(matrix: sp.csr_matrix, l2: float) -> np.ndarray:
    """EASE^R item-item weights B (float64, zero diagonal, read-only) by the closed form on the Gram matrix,
    memoised per process on the matrix's contents and ``l2``: every hybrid's content weight, every phase of
    a stage and Add-EASE^R's every content share one inverse per history (another history is never served
    stale weights)."""
    matrix = sp.csr_matrix(matrix)
    return _EASE_WEIGHTS.get((fingerprint(matrix), float(l2)),
                             lambda: read_only(ease_weights_of_gram(item_gram(matrix), l2)))


def item_gram(matrix: sp.csr_matrix) -> np.ndarray:
    """X^T X of a users x items matrix, dense float64."""
    return (matrix.T @ matrix).toarray().astype(np.float64)


def ease_weights_of_gram(gram: np.ndarray, l2: float) -> np.ndarray:
    """EASE^R weights from a Gram matrix G (float64 items x items, overwritten): B = I - P diag(1/diag P),
    P = (G + l2 I)^-1, zero diagonal (the side-information EASE^R variants pass their own G)."""
    gram[np.diag_indices_from(gram)] += l2
    precision = spd_inverse(gram)
    weights = -precision / np.diag(precision)[None, :]
    weights[np.diag_indices_from(weights)] = 0.0
    return weights


def spd_inverse(matrix: np.ndarray) -> np.ndarray:
    """The inverse of a symmetric positive definite float64 matrix (overwritten): Cholesky factor and its
    inverse (LAPACK potrf + potri, about half the work of solving against the identity), one triangle
    mirrored. It runs on one BLAS thread: a multi-threaded LAPACK sums in an order that depends on the thread
    count, and its last bits would reorder near-tied scores on another machine (docs/protocol.md, "Ties,
    exactly")."""
    upper = matrix.T  # the same symmetric matrix, Fortran-ordered: LAPACK works on it in place
    with threadpool_limits(limits=1, user_api="blas"):
        factor, info = scipy.linalg.lapack.dpotrf(upper, lower=False, clean=False, overwrite_a=True)
        if info == 0:
            factor, info = scipy.linalg.lapack.dpotri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"the matrix is not positive definite (LAPACK info {info})")
    return np.triu(factor) + np.triu(factor, 1).T


class EASE(_HistoryRecommender):
    """Embarrassingly shallow autoencoder (Steck 2019): score = X_u B."""

    name = "ease"

    def __init__(self, l2: float = 500.0):
        if l2 <= 0:
            raise ValueError(f"l2 must be > 0, got {l2}")
        self.l2 = l2

    def fit(self, history: History) -> "EASE":
        self._history = binarize(history.matrix)
        self.weights = ease_weights(self._history, self.l2).astype(np.float32)
        return self

    def score_block(self, users: np.ndarray) -> np.ndarray:
        return np.asarray(self._history_rows(users) @ self.weights, dtype=np.float32)


def baseline_candidates(method: str, baselines: BaselineParams) -> list[Candidate]:
    """The validation grid of a classic baseline, from ``params.yaml: baselines.<method>``."""
    if method == "mostpop":
        return [Candidate({}, MostPop)]
    if method == "itemknn_cf":
        grid = baselines.itemknn_cf
        return [Candidate({"k_neighbours": k, "shrinkage": s},
                          lambda k=k, s=s: ItemKNNCF(k_neighbours=k, shrinkage=s))
                for k, s in product(grid.k_neighbours, grid.shrinkage)]
    if method == "ease":
        return [Candidate({"l2": l2}, lambda l2=l2: EASE(l2=l2)) for l2 in baselines.ease.l2]
    raise ValueError(f"unknown baseline {method!r}; known: {', '.join(of_kind('baseline'))}")
