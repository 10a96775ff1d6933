"""Matching engine: one recommender base class, one masking + top-K path for every scorer.

``Recommender``          fit(history) -> self; score_block(users) -> float32 (len(users), n_items),
                         higher is better, ``-inf`` = item not scorable (ranked last, by index);
                         optional score_into(users, out) writes into a reused block buffer.
``recommend``            the engine: users x items tiles (a factor model's product is computed per tile,
                         :data:`TILE_BYTES` of scores; any other model is scored a block of users at a
                         time and selected per tile), seen items masked and the candidates merged into a
                         running top-K per tile, so memory is bounded by the tile, not the catalogue. Ties
                         follow :mod:`vlm4rec.selection`: items ordered by (exact score, item index), the
                         exact score of a factor model being its fixed-order float64 product, so no
                         thread count, tile size, device or executor changes a list.
``recommend_torch``      the same tiles in torch on a device (``cuda`` for a GPU; ``cpu`` runs the same
                         code): the product, masking and candidate test there, the exact order on the CPU,
                         so the lists equal :func:`recommend`'s.
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

import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, get_args

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from vlm4rec.config import Aggregation
from vlm4rec.memo import ContentMemo, fingerprint
from vlm4rec.selection import (FLOAT32_UNIT, FixedOrderDots, Rescorer, RunningTopK, dot_error_factor,
                               float32_at_most, kth_lower_bound, kth_lower_bound_torch, tie_margins)
from vlm4rec.splits import History
from vlm4rec.training import EarlyStopping, TrainingLog, train_epochs
from vlm4rec.vectors import normalize_rows

if TYPE_CHECKING:
    import torch

AGGREGATIONS: tuple[Aggregation, ...] = get_args(Aggregation)
#: Bytes of float32 scores per tile: faiss's exhaustive search scores blocks of 4096 queries x 1024 items,
#: this size; the tile's scores are masked and selected while they are in the cache.
TILE_BYTES = 16 * 2 ** 20
#: Users per tile of a factor model (a tile is TILE_ROWS x TILE_BYTES / (4 TILE_ROWS) items).
TILE_ROWS = 1024


@dataclass(frozen=True)
class Factors:
    """A model whose score is a product: score(u, i) = ``users[u] . items[i]`` (float32 (n_users, d) and
    (n_items, d)), the items flagged in ``missing`` (bool per item, None = none) at ``-inf``."""

    users: np.ndarray
    items: np.ndarray
    missing: np.ndarray | None


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

    def factors(self) -> Factors | None:
        """The user and item factors when the score is their product: the engine then scores tiles of
        items itself and rescores near-ties exactly (:mod:`vlm4rec.selection`). None (the default) for any
        other model, which the engine scores a block of users at a time."""
        return None

    def diagnostics(self) -> dict[str, float | int]:
        """Counts a report shows next to the model's numbers (fallbacks taken, sizes); none by default."""
        return {}


class FactorRecommender(Recommender):
    """score(u, i) = user_u . item_i from two factor matrices, the ``missing`` items at ``-inf`` (ranked last),
    as implicit's ``MatrixFactorizationBase``: one fit guard and one product behind :meth:`score_block` and
    :meth:`score_into`; :meth:`factors` hands both matrices to the engine, which scores tiles of items itself
    (on the device too) and rescores near-ties exactly.

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

    def factors(self) -> Factors:
        self._require_fit()
        return Factors(self.user_factors, self.item_factors, self.missing)


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

    def _refresh(self) -> None:
        """Recompute what scoring reads (e.g. the factors) from the training state; a no-op by default."""

    def train_checked(self, module: Any, run_epoch: Callable[[int], float],
                      monitor: Callable[["IterativeRecommender"], float] | None) -> TrainingLog:
        """:func:`~vlm4rec.training.train_epochs` of ``module`` for up to ``epochs`` epochs; with a ``monitor``,
        a check every ``eval_every`` epochs (scoring state refreshed first) and the one early-stopping rule
        (``patience`` checks without improvement, best state restored); the scoring state refreshed at the
        end. The epoch loop of every iterative model that trains a torch module."""
        def check(epoch: int) -> float:
            assert monitor is not None
            self._refresh()
            return float(monitor(self))

        log = train_epochs(module, run_epoch, self.epochs, check if monitor is not None else None,
                           EarlyStopping("max", self.patience) if monitor is not None else None,
                           eval_every=self.eval_every)
        self._refresh()
        return log


# --------------------------------------------------------------------------------------------------
# Top-K over a block of scores
# --------------------------------------------------------------------------------------------------

def _check_scores(scores: np.ndarray, n_rows: int, n_items: int, name: str) -> None:
    """A score block must be a 2-d float array of (n_rows, n_items) without NaN."""
    if not isinstance(scores, np.ndarray) or scores.ndim != 2 or scores.shape[0] != n_rows:
        shape = getattr(scores, "shape", None)
        raise ValueError(f"{name}: score_block returned shape {shape}, expected ({n_rows}, n_items)")
    if scores.shape[1] != n_items:
        raise ValueError(f"{name}: score_block has {scores.shape[1]} items, exclude has {n_items}")
    if not np.issubdtype(scores.dtype, np.floating):
        raise ValueError(f"{name}: score_block returned dtype {scores.dtype}, expected a float dtype")
    if scores.size and np.isnan(scores.max()):  # max propagates NaN; no temporary array
        raise ValueError(f"{name}: score_block returned NaN scores; use -inf for items that cannot be scored")


def stored_coordinates(matrix: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of every stored entry of a CSR matrix."""
    return np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr)), matrix.indices


def mask_items(scores: np.ndarray, exclude_rows: sp.csr_matrix) -> None:
    """Set ``scores[r, i] = -inf`` for every stored entry (r, i) of ``exclude_rows``, in place."""
    scores[stored_coordinates(exclude_rows)] = -np.inf


class PhaseClock:
    """Seconds the engine spends per phase (``scoring``, ``masking``, ``selection``, ``ordering``), summed over
    every call it is passed to: where the time goes (the benchmark prints it)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start


class _Exclusions:
    """The stored (row, item) entries of a block's exclusion rows, grouped by item, so each tile finds its own:
    the rows in compressed-column form (a counting sort, linear in the entries: the new-item settings exclude
    thousands of items per user)."""

    def __init__(self, rows: sp.csr_matrix):
        self._by_item = sp.csc_matrix(rows)

    def within(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, item - lo) of the entries with lo <= item < hi."""
        indptr = self._by_item.indptr
        rows = self._by_item.indices[indptr[lo]:indptr[hi]].astype(np.int64)
        return rows, np.repeat(np.arange(hi - lo), np.diff(indptr[lo:hi + 1]))


class _NumpyTiles:
    """Tile operations of the numpy engine; ``score(lo, hi)`` gives the block's scores of items lo..hi-1."""

    def __init__(self, score: Callable[[int, int], np.ndarray]):
        self.score = score

    @staticmethod
    def mask(tile: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> None:
        tile[rows, columns] = -np.inf

    @staticmethod
    def kth_bound(tile: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
        return kth_lower_bound(tile if len(rows) == len(tile) else tile[rows], k)  # no copy of a whole tile

    @staticmethod
    def above(tile: np.ndarray, floors: np.ndarray, lo: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, item, score) of the entries at or above their row's float32 floor, grouped by row."""
        rows, columns = np.divmod(np.flatnonzero(tile >= floors[:, None]), tile.shape[1])  # 2-d nonzero is slower
        return rows, columns + lo, tile[rows, columns]


class _TorchTiles:
    """:class:`_NumpyTiles` for torch tensors on ``device``; what it returns is moved to numpy."""

    def __init__(self, score: Callable[[int, int], torch.Tensor], device: str):
        self.score, self.device = score, device

    def _on_device(self, array: np.ndarray) -> torch.Tensor:
        import torch

        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def mask(self, tile: torch.Tensor, rows: np.ndarray, columns: np.ndarray) -> None:
        tile[self._on_device(rows), self._on_device(columns)] = -float("inf")

    def kth_bound(self, tile: torch.Tensor, rows: np.ndarray, k: int) -> np.ndarray:
        return kth_lower_bound_torch(tile[self._on_device(rows)], k).cpu().numpy()

    def above(self, tile: torch.Tensor, floors: np.ndarray, lo: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows, columns = (tile >= self._on_device(floors)[:, None]).nonzero(as_tuple=True)
        scores = tile[rows, columns]
        return rows.cpu().numpy(), columns.cpu().numpy() + lo, scores.cpu().numpy()


def _rank_tiles(tiles: _NumpyTiles | _TorchTiles, exclusions: _Exclusions, n_rows: int, n_items: int, k: int,
                tile_items: int, margins: np.ndarray, rescore: Rescorer | None, clock: PhaseClock) -> np.ndarray:
    """Top-k of one block of rows: items tile by tile (score, mask the excluded, merge the candidates into
    the running top-K), then the exact order (:mod:`vlm4rec.selection`)."""
    held = RunningTopK(n_rows, k, margins)
    for lo in range(0, n_items, tile_items):
        hi = min(lo + tile_items, n_items)
        with clock("scoring"):
            tile = tiles.score(lo, hi)
        with clock("masking"):
            tiles.mask(tile, *exclusions.within(lo, hi))
        with clock("selection"):
            floors = held.floors()
            open_rows = np.flatnonzero(np.isneginf(floors))
            if len(open_rows):  # fewer than k held: the tile's own k-th score bounds the candidates
                floors[open_rows] = tiles.kth_bound(tile, open_rows, k) - margins[open_rows]
            held.merge(*tiles.above(tile, float32_at_most(floors), lo))
    with clock("ordering"):
        return held.ordered(rescore, n_items)


def _tile_items(tile_items: int | None, n_rows: int, k: int) -> int:
    """Items per tile: as asked, or as many as fill :data:`TILE_BYTES` of float32 scores for ``n_rows``."""
    if tile_items is not None and tile_items < 1:
        raise ValueError(f"tile_items must be positive, got {tile_items}")
    return tile_items or max(k, TILE_BYTES // (4 * max(n_rows, 1)))


def _checked_factors(factors: Factors, n_items: int, name: str) -> float:
    """An upper bound on the item factors' norms, after checking they fit the request and are finite."""
    if factors.users.dtype != np.float32 or factors.items.dtype != np.float32:
        raise ValueError(f"{name}: the engine ranks float32 factors, got {factors.users.dtype} users and "
                         f"{factors.items.dtype} items")
    if factors.items.shape[0] != n_items:
        raise ValueError(f"{name}: {factors.items.shape[0]} item factors, exclude has {n_items} items")
    squares = np.einsum("ij,ij->i", factors.items, factors.items)  # float32: within gamma_d of the true sums
    if not np.isfinite(squares).all():
        raise ValueError(f"{name}: NaN or inf in the item factors; scores must be finite or -inf")
    return float(np.sqrt(squares.max(initial=0.0) / (1 - dot_error_factor(factors.items.shape[1], FLOAT32_UNIT))))


def _checked_margins(user_factors: np.ndarray, max_item_norm: float, unit: float, name: str) -> np.ndarray:
    """:func:`~vlm4rec.selection.tie_margins` of a tile's users, which must be finite."""
    margins = tie_margins(user_factors, max_item_norm, unit)
    if not np.isfinite(margins).all():
        raise ValueError(f"{name}: NaN or inf in the user factors; scores must be finite or -inf")
    return margins


def _missing_items(factors: Factors) -> np.ndarray:
    """Indices of the items the factors flag as not scorable (sorted)."""
    return np.flatnonzero(factors.missing) if factors.missing is not None else np.zeros(0, dtype=np.int64)


def _missing_within(missing: np.ndarray, lo: int, hi: int) -> np.ndarray:
    first, last = np.searchsorted(missing, [lo, hi])
    return missing[first:last] - lo


def _checked_request(users: np.ndarray, exclude: sp.csr_matrix, k: int,
                     block_size: int) -> tuple[np.ndarray, sp.csr_matrix]:
    """``users`` as int64 and ``exclude`` as CSR, after checking what a ranking request must satisfy."""
    users = np.asarray(users, dtype=np.int64)
    if users.ndim != 1:
        raise ValueError("users must be a 1-d array of user indices")
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    exclude = sp.csr_matrix(exclude)
    if not 1 <= k <= exclude.shape[1]:
        raise ValueError(f"k={k} must be between 1 and the number of items ({exclude.shape[1]})")
    return users, exclude


def recommend(model: Recommender, users: np.ndarray, exclude: sp.csr_matrix, k: int, block_size: int = 2048,
              tile_items: int | None = None, clock: PhaseClock | None = None) -> np.ndarray:
    """Top-``k`` items (int64, (len(users), k), best first) for ``users``, the stored items of ``exclude``'s
    rows (users x items) ranked last, by index, with the unscorable ones, when fewer than ``k`` remain.

    A factor model (:meth:`Recommender.factors`) is scored tile by tile, :data:`TILE_ROWS` users x
    ``tile_items`` items (default: a :data:`TILE_BYTES` tile), so memory is bounded by the tile whatever the
    catalogue; any other model scores ``block_size`` users at a time (:meth:`Recommender.score_into`) and the
    block is then selected tile by tile. The lists follow :mod:`vlm4rec.selection`'s rule: the same for any
    block size, tile size, thread count and executor.
    """
    users, exclude = _checked_request(users, exclude, k, block_size)
    n_items, clock = exclude.shape[1], clock or PhaseClock()
    factors = model.factors()
    out = np.empty((len(users), k), dtype=np.int64)
    if factors is None:
        buffer = np.empty((min(block_size, len(users)), n_items), dtype=np.float32)
        for start in range(0, len(users), block_size):
            block = users[start:start + block_size]
            with clock("scoring"):
                scores = model.score_into(block, buffer[:len(block)])
                _check_scores(scores, len(block), n_items, model.name)
            out[start:start + len(block)] = _rank_tiles(
                _NumpyTiles(lambda lo, hi: scores[:, lo:hi]), _Exclusions(exclude[block]), len(block), n_items, k,
                _tile_items(tile_items, len(block), k), np.zeros(len(block)), None, clock)
        return out
    max_norm, missing = _checked_factors(factors, n_items, model.name), _missing_items(factors)
    exact_scores = FixedOrderDots(factors.users, factors.items)
    width = _tile_items(tile_items, min(TILE_ROWS, len(users)), k)
    buffer = np.empty(min(TILE_ROWS, len(users)) * min(width, n_items), dtype=np.float32)
    for start in range(0, len(users), TILE_ROWS):
        rows = users[start:start + TILE_ROWS]
        user_factors = factors.users[rows]

        def score(lo: int, hi: int) -> np.ndarray:
            tile = np.matmul(user_factors, factors.items[lo:hi].T,
                             out=buffer[:len(rows) * (hi - lo)].reshape(len(rows), hi - lo))
            tile[:, _missing_within(missing, lo, hi)] = -np.inf
            return tile

        out[start:start + len(rows)] = _rank_tiles(
            _NumpyTiles(score), _Exclusions(exclude[rows]), len(rows), n_items, k, width,
            _checked_margins(user_factors, max_norm, FLOAT32_UNIT, model.name), _rescorer(exact_scores, rows), clock)
    return out


def _rescorer(exact_scores: FixedOrderDots, users: np.ndarray) -> Rescorer:
    """Exact scores of (row of a tile of ``users``, item) pairs."""
    return lambda rows, items: exact_scores(users[rows], items)


def _torch_unit_roundoff() -> float:
    """Unit roundoff of torch's float32 matrix products under ``torch.get_float32_matmul_precision()``:
    ``highest`` is float32; ``high`` may use TF32 (10-bit mantissa), ``medium`` bfloat16 (7-bit)."""
    import torch

    return {"highest": FLOAT32_UNIT, "high": 2.0 ** -11, "medium": 2.0 ** -8}[torch.get_float32_matmul_precision()]


def recommend_torch(model: Recommender, users: np.ndarray, exclude: sp.csr_matrix, k: int,
                    block_size: int = 2048, device: str = "cuda", tile_items: int | None = None,
                    clock: PhaseClock | None = None) -> np.ndarray:
    """:func:`recommend` with scoring, masking and the candidate test in torch on ``device`` (``cuda`` for
    a GPU; ``cpu`` runs the same code). The candidates come back to the CPU, where the exact order is
    computed from the model's numpy factors, so the lists equal :func:`recommend`'s on any device: the
    margin covers the device's product (its error bound follows torch's float32 matmul precision). Other
    models score a block on the device by :meth:`Recommender.torch_scorer`.
    """
    import torch

    users, exclude = _checked_request(users, exclude, k, block_size)
    n_items, clock = exclude.shape[1], clock or PhaseClock()
    factors = model.factors()
    out = np.empty((len(users), k), dtype=np.int64)
    if factors is None:
        scorer = model.torch_scorer(device)
        for start in range(0, len(users), block_size):
            block = users[start:start + block_size]
            with clock("scoring"):
                scores = scorer(block)
                _check_score_tensor(scores, len(block), n_items, model.name)
            out[start:start + len(block)] = _rank_tiles(
                _TorchTiles(lambda lo, hi: scores[:, lo:hi], device), _Exclusions(exclude[block]), len(block),
                n_items, k, _tile_items(tile_items, len(block), k), np.zeros(len(block)), None, clock)
        return out
    max_norm, missing = _checked_factors(factors, n_items, model.name), _missing_items(factors)
    items, exact_scores = torch.from_numpy(factors.items).to(device), FixedOrderDots(factors.users, factors.items)
    width, unit = _tile_items(tile_items, min(TILE_ROWS, len(users)), k), _torch_unit_roundoff()
    for start in range(0, len(users), TILE_ROWS):
        rows = users[start:start + TILE_ROWS]
        user_factors = factors.users[rows]
        on_device = torch.from_numpy(user_factors).to(device)

        def score(lo: int, hi: int) -> torch.Tensor:
            tile = on_device @ items[lo:hi].T
            tile[:, torch.from_numpy(_missing_within(missing, lo, hi)).to(device)] = -torch.inf
            return tile

        out[start:start + len(rows)] = _rank_tiles(
            _TorchTiles(score, device), _Exclusions(exclude[rows]), len(rows), n_items, k, width,
            _checked_margins(user_factors, max_norm, unit, model.name), _rescorer(exact_scores, rows), clock)
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
#: engine :func:`recommend_torch`, on any device, and the Ray engine of :mod:`vlm4rec.distributed.matching`
#: give the same lists).
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


class _ItemSimilarity(FactorRecommender):
    """Cosine similarity of the items to each other: the items are both the users and the items."""

    name = "item similarity"

    def __init__(self, items: np.ndarray):
        self.user_factors = self.item_factors = items
        self.missing = ~items.any(axis=1)

    def fit(self, history: History) -> "_ItemSimilarity":
        return self


@dataclass(frozen=True)
class _NeighbourLists:
    """Each item's top-K other items by the engine's rule (a total order: any top-k is the first k columns)."""

    best: np.ndarray   # (n_items, K) int64, best first
    kept: np.ndarray   # (n_items, K) bool: a represented item's represented neighbour other than itself
    sims: np.ndarray   # (n_items, K) float32: the exact similarity where kept, 0 elsewhere


#: a stage's representations, each with its longest K
_NEIGHBOUR_LISTS: ContentMemo[_NeighbourLists] = ContentMemo(size=8)


def _search_neighbours(items: np.ndarray, k: int, block_size: int) -> _NeighbourLists:
    """The top-k other items of every item, searched by the engine, with their fixed-order similarities."""
    model = _ItemSimilarity(items)
    best = recommend(model, np.arange(len(items)), sp.identity(len(items), format="csr"), k, block_size)
    rows = np.broadcast_to(np.arange(len(items))[:, None], best.shape)
    kept = ~model.missing[best] & ~model.missing[rows] & (best != rows)
    sims = np.zeros(best.shape, dtype=np.float32)
    sims[kept] = FixedOrderDots(items, items)(rows[kept], best[kept]).astype(np.float32)
    return _NeighbourLists(best, kept, sims)


def _neighbour_lists(items: np.ndarray, k: int, block_size: int) -> _NeighbourLists:
    """:func:`_search_neighbours` memoised on the items' bytes, served from any held list at least k long:
    a grid over ``knn_k`` and every refit on the same vectors search once per longer K."""
    key = fingerprint(items)
    held = _NEIGHBOUR_LISTS.lookup(key)
    if held is None or held.best.shape[1] < k:
        held = _NEIGHBOUR_LISTS.store(key, _search_neighbours(items, k, block_size))
    return held


def item_neighbours(items: np.ndarray, knn_k: int, block_size: int = 1024) -> sp.csr_matrix:
    """Cosine similarities (items x items) kept only for each item's ``knn_k`` most similar other
    represented items, chosen and valued by the engine's exact rule (:mod:`vlm4rec.selection`: the
    similarity is the fixed-order float64 product, rounded to float32), so no thread count changes them;
    no items x items dense matrix exists. The lists are memoised per process (:func:`_neighbour_lists`)."""
    items = np.ascontiguousarray(items, dtype=np.float32)
    n_items = items.shape[0]
    k = min(knn_k, n_items - 1)
    if k < 1:
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    lists = _neighbour_lists(items, k, block_size)
    best, kept = lists.best[:, :k], lists.kept[:, :k]
    rows = np.broadcast_to(np.arange(n_items)[:, None], best.shape)
    return sp.csr_matrix((lists.sims[:, :k][kept], (rows[kept], best[kept])), shape=(n_items, n_items),
                         dtype=np.float32)


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

    def factors(self) -> Factors | None:
        """Profiles and item vectors; None for ``knn_sum`` (sparse item-item sums, scored a block at a time)."""
        return None if self.aggregation == "knn_sum" else super().factors()

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
        """``model``'s scores of ``users`` with their seen items set to -inf, standardised per user. The
        scores come from one BLAS thread: the mix is not a factor product the engine can rescore exactly, so
        its near-ties are kept independent of the thread count this way (docs/protocol.md, "Ties, exactly")."""
        with threadpool_limits(limits=1, user_api="blas"):
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
