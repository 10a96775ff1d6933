"""Matching engine: one recommender base class, one masking + top-K path for every scorer.

``Recommender``          fit(history) -> self; score_block(users) -> float32 (len(users), n_items),
                         higher is better, ``-inf`` = item not scorable (ranked last, by index);
                         optional score_into(users, out) writes into a reused block buffer.
``recommend``            blocked over users: score one block, mask seen items, partial-sort top-K,
                         ties broken by the smaller item index. Never holds more than one block of scores.
``recommend_torch``      top-K in torch on a device (``cuda`` for a GPU; ``cpu`` runs the same code and gives
                         the same lists): scores from ``Recommender.torch_scorer`` (profile matching
                         multiplies on the device, where a last-bit difference can swap two near-tied
                         items), masking and :func:`top_k_torch` there too.
``ProfileRecommender``   the VLM4Rec method (docs/protocol.md, "Method"). Its cost splits into an offline part,
                         :func:`item_vectors` (L2-normalised item embeddings, paid once per item), and an
                         online part, :func:`history_weights` + :func:`user_profiles` (one sparse weighted
                         sum per user, done at fit) followed by one matrix product ``profiles @ items.T``
                         per block of users.
``FactorRecommender``    score = user factors . item factors, items without factors at ``-inf`` (the scorer of
                         profile matching, the BPR models and weighted late fusion).
``ScoreMix``             hybrid of two recommenders on per-user standardised scores.
``IterativeRecommender`` a recommender trained epoch by epoch whose number of epochs is chosen on
                         validation (:func:`vlm4rec.evaluation.select_on_validation` early-stops it).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Callable, get_args

import numpy as np
import scipy.sparse as sp

from vlm4rec.config import Aggregation
from vlm4rec.splits import History
from vlm4rec.training import TrainingLog
from vlm4rec.vectors import normalize_rows

if TYPE_CHECKING:
    import torch

AGGREGATIONS: tuple[Aggregation, ...] = get_args(Aggregation)


class Recommender(ABC):
    """A scorer that is fitted on a history and scores blocks of users against all items."""

    name: str = "recommender"

    @abstractmethod
    def fit(self, history: History) -> "Recommender":
        """Learn from (or just remember) the users' histories."""

    @abstractmethod
    def score_block(self, users: np.ndarray) -> np.ndarray:
        """Scores of ``users`` (indices) against every item: float32 (len(users), n_items)."""

    def score_into(self, users: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Scores of ``users``, written into ``out`` (float32 (len(users), n_items)) where the model can.

        :func:`recommend` passes one reused buffer so that a large block is not allocated (and
        page-faulted) afresh per block. By default this returns ``score_block(users)``, leaving
        ``out`` unused; models whose scoring can write in place override it.
        """
        return self.score_block(users)

    def torch_scorer(self, device: str) -> Callable[[np.ndarray], torch.Tensor]:
        """A function from user indices to their scores as a torch tensor on ``device`` (what
        :func:`recommend_torch` calls per block). By default :meth:`score_block` on the CPU, moved there;
        models that can score on the device override it (and move what they need there once)."""
        import torch

        return lambda users: torch.from_numpy(np.asarray(self.score_block(users))).to(device)

    def diagnostics(self) -> dict[str, float | int]:
        """Counts a report shows next to the model's numbers (fallbacks taken, sizes); none by default."""
        return {}


class FactorRecommender(Recommender):
    """score(u, i) = user_u . item_i from two factor matrices, the ``missing`` items at ``-inf`` (ranked last),
    as implicit's ``MatrixFactorizationBase``: one fit guard and one product behind :meth:`score_block`,
    :meth:`score_into` and :meth:`torch_scorer` (which multiplies on the device, the items moved there once).

    Subclasses set ``item_factors`` (float32 ``(n_items, d)``) and ``missing`` (bool per item, None = every
    item scorable) at construction or fit, and ``user_factors`` (float32 ``(n_users, d)``) at fit.
    """

    user_factors: np.ndarray | None = None
    item_factors: np.ndarray | None = None
    missing: np.ndarray | None = None

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` has run (scoring before it is an error)."""
        return self.user_factors is not None and self.item_factors is not None

    def _require_fit(self) -> None:
        if not self.fitted:
            raise RuntimeError(f"{self.name}: call fit(history) before scoring")

    def user_vectors(self, users: np.ndarray) -> np.ndarray:
        """The factors of ``users`` (float32 ``(len(users), d)``)."""
        self._require_fit()
        assert self.user_factors is not None
        return self.user_factors[np.asarray(users, dtype=np.int64)]

    def score_block(self, users: np.ndarray) -> np.ndarray:
        self._require_fit()
        assert self.item_factors is not None
        return self.score_into(users, np.empty((len(users), len(self.item_factors)), dtype=np.float32))

    def score_into(self, users: np.ndarray, out: np.ndarray) -> np.ndarray:
        self._product_into(users, out)
        if self.missing is not None and self.missing.any():
            out[:, self.missing] = -np.inf
        return out

    def _product_into(self, users: np.ndarray, out: np.ndarray) -> None:
        """``out = user factors of users @ item factors^T``."""
        np.matmul(self.user_vectors(users), self.item_factors.T, out=out)

    def torch_scorer(self, device: str) -> Callable[[np.ndarray], torch.Tensor]:
        import torch

        self._require_fit()
        items = torch.from_numpy(self.item_factors).to(device)
        missing = torch.from_numpy(np.flatnonzero(self.missing if self.missing is not None else [])).to(device)

        def score(users: np.ndarray) -> torch.Tensor:
            scores = torch.from_numpy(self.user_vectors(users)).to(device) @ items.T
            scores[:, missing] = -torch.inf
            return scores

        return score


class IterativeRecommender(Recommender):
    """A recommender trained epoch by epoch, whose number of epochs is a hyperparameter chosen on validation.

    ``fit(history)`` trains exactly ``epochs`` epochs from the seeded initialisation (the refit that is
    tested). :meth:`fit_monitored` trains up to ``epochs`` epochs, calls ``monitor(self)`` (the validation
    metric computed through the evaluation path, higher is better) before training and after every
    ``eval_every`` epochs, stops after ``patience`` evaluations without improvement, and ends holding the
    best evaluated state. The model never sees validation targets: ``monitor`` returns one number.
    """

    epochs: int
    eval_every: int = 1
    patience: int = 3

    @abstractmethod
    def fit_monitored(self, history: History, monitor: Callable[["IterativeRecommender"], float]) -> TrainingLog:
        """Train with early stopping on ``monitor``; the model ends in its best evaluated state."""


# --------------------------------------------------------------------------------------------------
# Top-K over a block of scores
# --------------------------------------------------------------------------------------------------

def _check_scores(scores: np.ndarray, n_rows: int) -> None:
    """A score block must be a 2-d float array with one row per user and no NaN."""
    if not isinstance(scores, np.ndarray) or scores.ndim != 2 or scores.shape[0] != n_rows:
        shape = getattr(scores, "shape", None)
        raise ValueError(f"score_block returned shape {shape}, expected ({n_rows}, n_items)")
    if not np.issubdtype(scores.dtype, np.floating):
        raise ValueError(f"score_block returned dtype {scores.dtype}, expected a float dtype")
    if scores.size and np.isnan(scores.max()):  # max propagates NaN; no temporary array
        raise ValueError("score_block returned NaN scores; use -inf for items that cannot be scored")


def stored_coordinates(matrix: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of every stored entry of a CSR matrix."""
    return np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr)), matrix.indices


def mask_items(scores: np.ndarray, exclude_rows: sp.csr_matrix) -> None:
    """Set ``scores[r, i] = -inf`` for every stored entry (r, i) of ``exclude_rows``, in place."""
    scores[stored_coordinates(exclude_rows)] = -np.inf


def _select_with_ties(scores: np.ndarray, threshold: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of exactly ``k`` items per row: all above the row's threshold, then the items
    equal to it in increasing column order (only used for rows where the threshold is tied)."""
    above = scores > threshold[:, None]
    at = scores == threshold[:, None]
    need = k - np.count_nonzero(above, axis=1)
    return above | (at & (np.cumsum(at, axis=1) <= need[:, None]))


def _exact_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Columns of the ``k`` best entries per row, best first, ties to the smaller column.

    The k-th largest value per row comes from ``np.partition`` (linear time); every entry above it
    is kept and entries equal to it are taken in column order, so the result does not depend on the
    selection algorithm's internal order. Only the k kept entries are then sorted.
    """
    n_rows, n_cols = scores.shape
    threshold = np.partition(scores, n_cols - k, axis=1)[:, n_cols - k]
    keep = scores >= threshold[:, None]
    tied = np.flatnonzero(np.count_nonzero(keep, axis=1) > k)
    if len(tied):
        keep[tied] = _select_with_ties(scores[tied], threshold[tied], k)
    cols = np.nonzero(keep)[1].reshape(n_rows, k)
    values = np.take_along_axis(scores, cols, axis=1)
    return np.take_along_axis(cols, np.lexsort((cols, -values), axis=1), axis=1)


def _group_prefilter(scores: np.ndarray, k: int, group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates that must contain every row's top-k, as (rows covered, candidate scores, item ids).

    Items are split into m interleaved groups {j, j + m, j + 2m, ...} of ``group`` items (so the group
    maxima are a vectorised max over contiguous slices). When exactly k groups have a maximum at or
    above the k-th largest group maximum, every other item is strictly below the k-th largest score
    (k distinct items reach that bound), so the top-k lies in those k groups plus the leftover tail.
    Rows with ties at the bound are not covered and left to the exact path. Candidates are laid out
    in increasing item order, so the exact selection's tie rule still follows item index.
    """
    n_rows, n_items = scores.shape
    n_groups = n_items // group
    group_max = scores[:, :n_groups * group].reshape(n_rows, group, n_groups).max(axis=1)
    bound = np.partition(group_max, n_groups - k, axis=1)[:, n_groups - k]
    kept = group_max >= bound[:, None]
    light = np.flatnonzero(np.count_nonzero(kept, axis=1) == k)
    groups = np.nonzero(kept[light])[1].reshape(len(light), 1, k)
    members = (np.arange(group)[None, :, None] * n_groups + groups).reshape(len(light), group * k)
    tail = np.arange(n_groups * group, n_items)
    ids = np.concatenate([members, np.broadcast_to(tail, (len(light), len(tail)))], axis=1)
    return light, np.take(scores, light[:, None] * n_items + ids), ids


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices (int64) of the ``k`` best items per row, best first; ties go to the smaller index.

    Large rows are first cut down to about sqrt(n_items * k) candidates per row by a group-maximum
    bound (:func:`_group_prefilter`, one vectorised pass over the scores), then the exact selection
    runs on the candidates; both steps keep the tie rule, so the result equals a full stable sort.
    """
    n_rows, n_items = scores.shape
    if not 1 <= k <= n_items:
        raise ValueError(f"k={k} must be between 1 and the number of items ({n_items})")
    group = int(round(np.sqrt(n_items / k)))
    if group < 2 or n_items // group < 4 * k:
        return _exact_top_k(scores, k).astype(np.int64)
    out = np.empty((n_rows, k), dtype=np.int64)
    light, candidates, ids = _group_prefilter(scores, k, group)
    if len(light):
        out[light] = np.take_along_axis(ids, _exact_top_k(candidates, k), axis=1)
    heavy = np.setdiff1d(np.arange(n_rows), light)
    if len(heavy):
        out[heavy] = _exact_top_k(scores[heavy], k)
    return out


def top_k_torch(scores: torch.Tensor, k: int) -> torch.Tensor:
    """:func:`top_k` for a float32 torch tensor on any device: int64 indices, best first, ties to the
    smaller index, exactly as the numpy engine.

    ``torch.topk`` does not order ties, so no two entries are left equal: each score becomes one int64 key
    whose high 32 bits are the score's bit pattern made order-preserving (sign-magnitude to two's
    complement; ``-0.0`` counts as ``0.0``) and whose low 32 bits are the reversed column index. The k
    largest keys are the k best items with ties to the smaller index. Holds 12 extra bytes per score.
    """
    import torch

    n_rows, n_items = scores.shape
    if not 1 <= k <= n_items:
        raise ValueError(f"k={k} must be between 1 and the number of items ({n_items})")
    bits = (scores + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into 0.0
    bits ^= (bits >> 31) & 0x7FFFFFFF
    keys = bits.to(torch.int64) << 32
    keys += 0xFFFFFFFF - torch.arange(n_items, device=scores.device)
    return keys.topk(k, dim=1).indices


def _checked_request(users: np.ndarray, exclude: sp.csr_matrix, k: int,
                     block_size: int) -> tuple[np.ndarray, sp.csr_matrix]:
    """``users`` as int64 and ``exclude`` as CSR, after checking what a ranking request must satisfy."""
    users = np.asarray(users, dtype=np.int64)
    if users.ndim != 1:
        raise ValueError("users must be a 1-d array of user indices")
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    exclude = sp.csr_matrix(exclude)
    if k > exclude.shape[1]:
        raise ValueError(f"k={k} exceeds the number of items ({exclude.shape[1]})")
    return users, exclude


def recommend(model: Recommender, users: np.ndarray, exclude: sp.csr_matrix, k: int,
              block_size: int = 2048) -> np.ndarray:
    """Top-``k`` items (int64, (len(users), k), best first) for ``users``, seen items excluded.

    Users are scored ``block_size`` at a time; the rows of ``exclude`` (users x items) are masked with
    ``-inf`` so seen items and unscorable items come last, by index, when fewer than ``k`` remain.
    """
    users, exclude = _checked_request(users, exclude, k, block_size)
    out = np.empty((len(users), k), dtype=np.int64)
    buffer = np.empty((min(block_size, len(users)), exclude.shape[1]), dtype=np.float32)
    for start in range(0, len(users), block_size):
        block = users[start:start + block_size]
        scores = model.score_into(block, buffer[:len(block)])
        _check_scores(scores, len(block))
        if scores.shape[1] != exclude.shape[1]:
            raise ValueError(f"{model.name}: score_block has {scores.shape[1]} items, "
                             f"exclude has {exclude.shape[1]}")
        mask_items(scores, exclude[block])
        out[start:start + len(block)] = top_k(scores, k)
    return out


def recommend_torch(model: Recommender, users: np.ndarray, exclude: sp.csr_matrix, k: int,
                    block_size: int = 2048, device: str = "cuda") -> np.ndarray:
    """:func:`recommend` with scoring, masking and top-K in torch on ``device``; the same top-K lists,
    ties included, as long as the model's torch scores equal its numpy ones (they do when it scores on
    the CPU; a product computed on a GPU may differ in the last bit, which can swap two items whose scores
    are that close). A block of scores lives on the device: about 16 bytes per user and item.
    """
    import torch

    users, exclude = _checked_request(users, exclude, k, block_size)
    n_items = exclude.shape[1]
    score = model.torch_scorer(device)
    out = np.empty((len(users), k), dtype=np.int64)
    for start in range(0, len(users), block_size):
        block = users[start:start + block_size]
        scores = score(block)
        _check_score_tensor(scores, len(block), n_items, model.name)
        rows, columns = stored_coordinates(exclude[block])
        scores[torch.from_numpy(rows).to(device), torch.from_numpy(columns.astype(np.int64)).to(device)] = -torch.inf
        out[start:start + len(block)] = top_k_torch(scores, k).cpu().numpy()
    return out


def _check_score_tensor(scores: torch.Tensor, n_rows: int, n_items: int, name: str) -> None:
    """A torch score block must be float32 (n_rows, n_items) without NaN."""
    import torch

    if tuple(scores.shape) != (n_rows, n_items):
        raise ValueError(f"{name}: scores have shape {tuple(scores.shape)}, expected ({n_rows}, {n_items})")
    if scores.dtype != torch.float32:
        raise ValueError(f"{name}: the torch engine ranks float32 scores, got {scores.dtype}")
    if scores.numel() and torch.isnan(scores.max()):
        raise ValueError(f"{name}: NaN scores; use -inf for items that cannot be scored")


#: ``rank(model, users, exclude, k)``: top-K lists of a fitted model (:func:`recommend` is one; the torch
#: engine :func:`recommend_torch` and the Ray engine of :mod:`vlm4rec.distributed.matching` give the same lists
#: on the CPU, and on a GPU up to last-bit ties).
Ranker = Callable[["Recommender", np.ndarray, sp.csr_matrix, int], np.ndarray]


# --------------------------------------------------------------------------------------------------
# Content profiles (the VLM4Rec method)
# --------------------------------------------------------------------------------------------------

def item_vectors(vectors: np.ndarray) -> np.ndarray:
    """Offline part: L2-normalised item embeddings (n_items, d); an all-zero row marks a missing item."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise ValueError(f"item vectors must be 2-d (n_items, d), got shape {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise ValueError("item vectors contain NaN or inf")
    return normalize_rows(vectors)


def history_weights(history: History, aggregation: Aggregation = "mean", half_life: float = 10.0,
                    history_cap: int | None = None) -> sp.csr_matrix:
    """Weights w_uj (users x items) of each history item in the user's profile.

    Uniform (``mean``, ``knn_sum``) or ``0.5 ** (rank_from_latest / half_life)`` (``recency``); with
    ``history_cap`` only the user's ``history_cap`` most recent interactions keep a weight.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; expected one of {AGGREGATIONS}")
    weights = sp.csr_matrix(history.recency, dtype=np.float32, copy=True)
    rank = weights.data - 1
    if (rank < 0).any():
        raise ValueError("History.recency must store rank_from_latest + 1 (>= 1)")
    weights.data = (0.5 ** (rank / half_life) if aggregation == "recency"
                    else np.ones_like(rank)).astype(np.float32)
    if history_cap is not None:
        weights.data[rank >= history_cap] = 0.0
        weights.eliminate_zeros()
    return weights


def user_profiles(weights: sp.csr_matrix, items: np.ndarray) -> np.ndarray:
    """Online part: p_u = normalize(sum_j w_uj e_j) for every row of ``weights`` (float32 (rows, d))."""
    return normalize_rows(weights @ items)


def item_neighbours(items: np.ndarray, knn_k: int, block_size: int = 1024) -> sp.csr_matrix:
    """Cosine similarities (items x items) kept only for each item's ``knn_k`` most similar other
    represented items; computed in blocks of rows so that no items x items dense matrix exists."""
    n_items = items.shape[0]
    missing = ~items.any(axis=1)
    k = min(knn_k, n_items - 1)
    if k < 1:
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    rows, cols, vals = [], [], []
    for start in range(0, n_items, block_size):
        block = np.arange(start, min(start + block_size, n_items))
        sims = items[block] @ items.T
        sims[:, missing] = -np.inf
        sims[np.arange(len(block)), block] = -np.inf
        best = top_k(sims, k)
        best_sims = np.take_along_axis(sims, best, axis=1)
        finite = np.isfinite(best_sims) & ~missing[block][:, None]
        rows.append(np.broadcast_to(block[:, None], best.shape)[finite])
        cols.append(best[finite])
        vals.append(best_sims[finite])
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(n_items, n_items), dtype=np.float32)


class ProfileRecommender(FactorRecommender):
    """VLM4Rec: score(u, i) = p_u . e_i with p_u the normalised weighted sum of the user's items.

    ``vectors``      (n_items, d) item embeddings; an all-zero row means the item has no
                     representation. Such items score ``-inf``: they stay in the universe and are
                     ranked last (by index). Users whose (capped) history holds no represented item
                     get an all-zero profile (every represented item scores 0, so ranking falls back
                     to item index); their number is ``n_empty_profiles``.
    ``aggregation``  ``mean`` (the paper), ``recency`` (weights ``0.5 ** (rank_from_latest /
                     half_life)``, rank in interactions), or ``knn_sum`` (ItemKNN-CBF:
                     score(u, i) = sum_{j in H_u} sim(i, j) with sim kept only for each history item
                     j's ``knn_k`` most similar items). Without that truncation ``knn_sum`` ranks like
                     the unnormalised mean profile, since H E E^T = (H E) E^T.
    ``history_cap``  keep only each user's most recent ``history_cap`` interactions.

    ``fit`` computes every user's profile (n_users x d, the online weighted sum: the user factors of
    :class:`FactorRecommender`, the normalised item vectors being its item factors); scoring a block is
    then one matrix product with the item vectors. ``knn_sum`` builds no profiles and scores sparse
    item-item sums instead.
    """

    def __init__(self, vectors: np.ndarray, aggregation: Aggregation = "mean", half_life: float = 10.0,
                 history_cap: int | None = None, knn_k: int = 50, name: str = "profile"):
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r}; expected one of {AGGREGATIONS}")
        if half_life <= 0:
            raise ValueError(f"half_life must be positive, got {half_life}")
        if history_cap is not None and history_cap < 1:
            raise ValueError(f"history_cap must be >= 1 or None, got {history_cap}")
        if knn_k < 1:
            raise ValueError(f"knn_k must be >= 1, got {knn_k}")
        self.item_factors = item_vectors(vectors)
        self.missing = ~self.item_factors.any(axis=1)
        self.aggregation, self.half_life, self.history_cap, self.knn_k = (
            aggregation, half_life, history_cap, knn_k)
        self.name = name
        self.n_empty_profiles = 0
        self._weights: sp.csr_matrix | None = None
        self._neighbours: sp.csr_matrix | None = None

    def fit(self, history: History) -> "ProfileRecommender":
        n_items = self.item_factors.shape[0]
        if history.n_items != n_items:
            raise ValueError(f"history has {history.n_items} items, vectors have {n_items}")
        self._weights = history_weights(history, self.aggregation, self.half_life, self.history_cap)
        if self.aggregation == "knn_sum":
            represented_mass = self._weights @ (~self.missing).astype(np.float32)
            self.n_empty_profiles = int(np.count_nonzero(represented_mass == 0))
            if self._neighbours is None:
                self._neighbours = item_neighbours(self.item_factors, self.knn_k)
        else:
            self.user_factors = user_profiles(self._weights, self.item_factors)
            self.n_empty_profiles = int(np.count_nonzero(~self.user_factors.any(axis=1)))
        return self

    @property
    def fitted(self) -> bool:
        return self._weights is not None

    def profiles(self, users: np.ndarray) -> np.ndarray:
        """Profiles p_u (float32 (len(users), d)) of ``users``, computed from the history at fit."""
        self._require_fit()
        if self.aggregation == "knn_sum":
            raise ValueError("knn_sum scores item-item similarities and builds no user profiles")
        return self.user_vectors(users)

    def _product_into(self, users: np.ndarray, out: np.ndarray) -> None:
        """``knn_sum``: the users' history weights times the truncated item-item similarities."""
        if self.aggregation == "knn_sum":
            self._require_fit()
            out[...] = (self._weights[users] @ self._neighbours).toarray()
        else:
            super()._product_into(users, out)

    def torch_scorer(self, device: str) -> Callable[[np.ndarray], torch.Tensor]:
        """Profiles times item vectors on ``device``; ``knn_sum`` scores sparse item-item sums on the CPU."""
        if self.aggregation == "knn_sum":
            self._require_fit()
            return Recommender.torch_scorer(self, device)
        return super().torch_scorer(device)

    def diagnostics(self) -> dict[str, float | int]:
        return {"n_empty_profiles": self.n_empty_profiles, "n_missing_items": int(self.missing.sum())}


# --------------------------------------------------------------------------------------------------
# Hybrids
# --------------------------------------------------------------------------------------------------

def standardize_rows(scores: np.ndarray) -> np.ndarray:
    """Per-row z-scores over the finite entries (float32); non-finite entries become NaN and rows
    with constant finite scores become 0 (no preference)."""
    finite = np.isfinite(scores)
    n = np.maximum(finite.sum(axis=1, keepdims=True), 1)
    values = np.where(finite, scores, 0.0)
    mean = values.sum(axis=1, keepdims=True) / n
    centred = np.where(finite, scores - mean, 0.0)
    std = np.sqrt((centred ** 2).sum(axis=1, keepdims=True) / n)
    z = np.divide(centred, std, out=np.zeros_like(centred), where=std > 0)
    return np.where(finite, z, np.nan).astype(np.float32)


class ScoreMix(Recommender):
    """Hybrid: alpha * z(score_a) + (1 - alpha) * z(score_b), z = per-user standardisation over the
    finite scores, so that the two models' scales match. The items of the fitted history (those evaluation
    excludes from the ranking) are masked before standardising: the z-scores are over the candidate items
    only, not pulled by the high scores a collaborative model gives the items a user has seen.

    Fallback: an item that one model cannot score (``-inf``) takes that model's neutral z = 0 (the
    user's mean); it is ``-inf`` only when neither model can score it.
    """

    def __init__(self, model_a: Recommender, model_b: Recommender, alpha: float = 0.5,
                 name: str | None = None):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.model_a, self.model_b, self.alpha = model_a, model_b, alpha
        self.name = name or f"mix({model_a.name},{model_b.name},{alpha})"

    def fit(self, history: History) -> "ScoreMix":
        self.model_a.fit(history)
        self.model_b.fit(history)
        self.seen = history.matrix
        return self

    def _candidate_z(self, model: Recommender, users: np.ndarray) -> np.ndarray:
        """``model``'s scores of ``users`` with their seen items set to -inf, standardised per user."""
        scores = np.array(model.score_block(users), dtype=np.float32)  # a copy: masked in place
        mask_items(scores, self.seen[users])
        return standardize_rows(scores)

    def score_block(self, users: np.ndarray) -> np.ndarray:
        z_a = self._candidate_z(self.model_a, users)
        z_b = self._candidate_z(self.model_b, users)
        neither = np.isnan(z_a) & np.isnan(z_b)
        mixed = self.alpha * np.nan_to_num(z_a, nan=0.0) + (1 - self.alpha) * np.nan_to_num(z_b, nan=0.0)
        mixed[neither] = -np.inf
        return mixed.astype(np.float32, copy=False)

    def diagnostics(self) -> dict[str, float | int]:
        return {**{f"a.{k}": v for k, v in self.model_a.diagnostics().items()},
                **{f"b.{k}": v for k, v in self.model_b.diagnostics().items()}}
