"""Top-K selection over item tiles with a tie rule that no thread count, tile size or executor can change.

The rule: items are ranked by (exact score descending, item index ascending). For a factor model the exact
score of (u, i) is ``g = sum_j float64(u_j) * float64(v_ij)``, summed left to right over the coordinates:
every product of two float32 numbers is exact in float64, and the order of the sum is fixed, so ``g``
depends on the two vectors alone. For any other model the exact score is the model's own float32 score.

The fast path scores in float32 (BLAS on the CPU, cuBLAS on a GPU), whose sums may be ordered differently
with another thread count, kernel or tile: a last-bit difference that must not swap two items. Whatever the
order, ``|f - x.y| <= gamma_d sum_j |x_j y_j| <= gamma_d |x| |y|`` with ``gamma_d = d u / (1 - d u)`` and
``u`` the unit roundoff (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., eq. 3.5; an FMA
only removes roundings), and ``g`` is within ``gamma_d(2^-53) |x| |y|`` of ``x.y``. So with
``E = (gamma_d(u) + gamma_d(2^-53)) |u| max_i |v_i|`` per user, ``|f - g| <= E`` for every item, and with the
margin ``m = 2 E``:

- **candidates**: if ``T`` is the k-th largest float32 score of a user, every item of the exact top-K has
  ``f >= T - m`` (k items have ``f >= T``, hence ``g >= T - E``, hence the k-th largest ``g`` is at least
  ``T - E``). The running top-K keeps, per user, every item whose ``f`` is within ``m`` of the running k-th
  float32 score, tile by tile.
- **order**: if two candidates' ``f`` differ by more than ``m``, their ``g`` are in the same order. The
  candidates sorted by ``f`` fall into clusters (neighbours at most ``m`` apart); only clusters of two or
  more items are rescored exactly, and the list is (cluster, ``g`` descending, item index ascending).

A model whose score is not such a product gets ``m = 0``: exact float32 ties only, broken by item index
(the rule of the engine before tiling). Items scored ``-inf`` (seen, or not scorable) are never candidates;
a user left with fewer than k scorable items gets the remaining places filled by the smallest such indices.
The margin is ``(1 + 2^-20) m``: the slack covers the float64 rounding of the margin itself.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    import torch

FLOAT32_UNIT = 2.0 ** -24
FLOAT64_UNIT = 2.0 ** -53
_LOWEST = np.float32(np.finfo(np.float32).min)  # the lowest finite score: -inf never passes it

#: ``rescore(rows, items)``: exact scores (float64) of block rows x items, pairwise.
Rescorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


def dot_error_factor(d: int, unit: float) -> float:
    """``gamma_d = d u / (1 - d u)``: a dot product of length ``d`` summed in any order with unit roundoff
    ``u`` is within ``gamma_d |x| |y|`` of the exact value."""
    if d * unit >= 1:
        raise ValueError(f"no error bound for dot products of length {d} at unit roundoff {unit}")
    return d * unit / (1 - d * unit)


def tie_margins(users: np.ndarray, max_item_norm: float, unit: float = FLOAT32_UNIT) -> np.ndarray:
    """Per user (row of ``users``), ``m = 2 E``: how far apart two float32 scores may be and still be in
    either exact order (module docstring); ``unit`` is the fast product's unit roundoff."""
    d = users.shape[1]
    error = dot_error_factor(d, unit) + dot_error_factor(d, FLOAT64_UNIT)
    norms = np.sqrt(np.einsum("ij,ij->i", users.astype(np.float64), users.astype(np.float64)))
    return 2 * error * (1 + 2.0 ** -20) * norms * max_item_norm


class FixedOrderDots:
    """``dots(rows, columns)``: the exact scores ``g`` of pairs, ``left[rows[j]] . right[columns[j]]`` in float64:
    float32 inputs multiply exactly in float64, and the products are summed left to right over the
    coordinates, whatever the machine's threads. The vectors are gathered, ``chunk`` pairs at a time, into
    buffers that live as long as the object (a fresh large array per call costs its page faults again)."""

    def __init__(self, left: np.ndarray, right: np.ndarray, chunk: int = 1024):
        self.left, self.right, self.chunk = left, right, chunk
        self._left = np.empty((chunk, left.shape[1]), dtype=np.float32)
        self._right = np.empty((chunk, right.shape[1]), dtype=np.float32)

    def __call__(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        out = np.empty(len(rows), dtype=np.float64)
        for start in range(0, len(rows), self.chunk):
            size = min(self.chunk, len(rows) - start)
            left = np.take(self.left, rows[start:start + size], axis=0, out=self._left[:size])
            right = np.take(self.right, columns[start:start + size], axis=0, out=self._right[:size])
            products = left.T.astype(np.float64, order="C")  # one row per coordinate
            products *= right.T
            total = np.zeros(size, dtype=np.float64)
            for coordinate in products:  # left to right
                total += coordinate
            out[start:start + size] = total
        return out


def float32_at_most(values: np.ndarray) -> np.ndarray:
    """The largest float32 not above each float64 value, and not below the lowest finite float32."""
    rounded = values.astype(np.float32)
    rounded = np.where(rounded > values, np.nextafter(rounded, np.float32(-np.inf)), rounded)
    return np.maximum(rounded, _LOWEST)


def kth_lower_bound(scores: np.ndarray, k: int) -> np.ndarray:
    """Per row, a value at most the row's k-th largest score, in about one pass: the k-th largest of the
    maxima of ~4k interleaved item groups (those k groups hold k distinct items at or above it);
    ``-inf`` for rows shorter than k."""
    n_rows, width = scores.shape
    if width < k:
        return np.full(n_rows, -np.inf, dtype=np.float32)
    group = width // (4 * k)
    if group < 2:
        return np.partition(scores, width - k, axis=1)[:, width - k]
    n_groups = width // group
    maxima = scores[:, :n_groups].copy()
    for start in range(n_groups, n_groups * group, n_groups):  # no copy of the whole tile
        np.maximum(maxima, scores[:, start:start + n_groups], out=maxima)
    return np.partition(maxima, n_groups - k, axis=1)[:, n_groups - k]


def kth_lower_bound_torch(scores: torch.Tensor, k: int) -> torch.Tensor:
    """:func:`kth_lower_bound` for a torch tensor, on its device."""
    import torch

    n_rows, width = scores.shape
    if width < k:
        return torch.full((n_rows,), -torch.inf, device=scores.device)
    group = width // (4 * k)
    if group < 2:
        return scores.topk(k, dim=1).values[:, -1]
    n_groups = width // group
    maxima = scores[:, :n_groups * group].reshape(n_rows, group, n_groups).amax(dim=1)
    return maxima.topk(k, dim=1).values[:, -1]


WIDE_ARRIVALS = 8  # a row bringing more than this many times k candidates to a merge is merged apart


class RunningTopK:
    """The candidates of a block of users, merged tile by tile in increasing item order.

    Holds, per row, every item scored so far whose float32 score ``f`` is at least the row's running k-th
    largest ``f`` minus its margin (with margin 0: at least that k-th score, later items needing more), as
    padded arrays: ``scores`` (``-inf`` padding) and ``items``. :meth:`ordered` gives the final lists.
    """

    def __init__(self, n_rows: int, k: int, margins: np.ndarray):
        self.k, self.margins = k, np.asarray(margins, dtype=np.float64)
        self.scores = np.full((n_rows, 0), -np.inf, dtype=np.float32)
        self.items = np.zeros((n_rows, 0), dtype=np.int64)
        self.kth = np.full(n_rows, -np.inf, dtype=np.float32)

    def floors(self) -> np.ndarray:
        """Per row, the lowest score a later item needs (float64); ``-inf`` while fewer than k are held."""
        floors = self.kth - self.margins
        exact = (self.margins == 0) & np.isfinite(self.kth)
        floors[exact] = np.nextafter(self.kth[exact], np.float32(np.inf))  # a later item loses an exact tie
        return floors

    def merge(self, rows: np.ndarray, items: np.ndarray, scores: np.ndarray) -> None:
        """Add candidates (block row, item, float32 score), grouped by row, all after the items held. Rows
        that bring many more candidates than ``WIDE_ARRIVALS`` * k (a user whose items all tie) are merged
        apart from the others, so that the rest are not padded to their width."""
        if not len(rows):
            return
        arrivals = np.bincount(rows, minlength=len(self.kth))
        wide = arrivals > WIDE_ARRIVALS * self.k
        if wide.any() and (arrivals[~wide] > 0).any():
            apart = wide[rows]
            self._merge_rows(rows[~apart], items[~apart], scores[~apart])
            self._merge_rows(rows[apart], items[apart], scores[apart])
        else:
            self._merge_rows(rows, items, scores)

    def _merge_rows(self, rows: np.ndarray, items: np.ndarray, scores: np.ndarray) -> None:
        """:meth:`merge` of candidates padded to their widest row: per row, the new running k-th score and
        the candidates still in reach of it (of exact ties at it, only the ones the tie rule can still rank:
        the lowest item indices, as many as the places left)."""
        arrivals = np.bincount(rows, minlength=len(self.kth))
        hit = np.flatnonzero(arrivals)
        arrivals = arrivals[hit]
        slots = np.repeat(np.arange(len(hit)), arrivals)
        positions = np.arange(len(rows)) - np.repeat(np.cumsum(arrivals) - arrivals, arrivals)
        new_scores = np.full((len(hit), arrivals.max()), -np.inf, dtype=np.float32)
        new_items = np.zeros(new_scores.shape, dtype=np.int64)
        new_scores[slots, positions], new_items[slots, positions] = scores, items
        merged = np.concatenate([self.scores[hit], new_scores], axis=1)
        merged_items = np.concatenate([self.items[hit], new_items], axis=1)
        width = merged.shape[1]
        kth = (np.partition(merged, width - self.k, axis=1)[:, width - self.k] if width >= self.k
               else np.full(len(hit), -np.inf, dtype=np.float32))
        keep = (merged >= (kth - self.margins[hit])[:, None]) & (merged > -np.inf)
        ties = (merged == kth[:, None]) & (self.margins[hit] == 0)[:, None]  # merged is in item order
        if ties.any():
            places = self.k - np.count_nonzero(merged > kth[:, None], axis=1)
            keep &= ~ties | (np.cumsum(ties, axis=1) <= places[:, None])
        counts = np.count_nonzero(keep, axis=1)
        if counts.max() > self.scores.shape[1]:
            grow = counts.max() - self.scores.shape[1]
            self.scores = np.pad(self.scores, ((0, 0), (0, grow)), constant_values=-np.inf)
            self.items = np.pad(self.items, ((0, 0), (0, grow)))
        slots, columns = np.nonzero(keep)
        positions = np.arange(len(slots)) - np.repeat(np.cumsum(counts) - counts, counts)
        held_scores = np.full((len(hit), self.scores.shape[1]), -np.inf, dtype=np.float32)
        held_items = np.zeros(held_scores.shape, dtype=np.int64)
        held_scores[slots, positions] = merged[slots, columns]
        held_items[slots, positions] = merged_items[slots, columns]
        self.scores[hit], self.items[hit] = held_scores, held_items
        self.kth[hit] = kth

    def ordered(self, rescore: Rescorer | None, n_items: int) -> np.ndarray:
        """The top-k items per row (int64, best first) by the module's rule; ``rescore`` None = the float32
        scores are exact (margins 0). Rows with margin 0 are never rescored: their float32 scores are exact
        (a user without a profile scores every item exactly 0, so all its items tie and a rescoring of
        every item would change nothing)."""
        k, n_rows = self.k, len(self.kth)
        missing_slots = max(k - self.scores.shape[1], 0)
        scores = np.pad(self.scores, ((0, 0), (0, missing_slots)), constant_values=-np.inf)
        items = np.where(scores > -np.inf, np.pad(self.items, ((0, 0), (0, missing_slots))), n_items)
        by_score = np.argsort(-scores, axis=1, kind="stable")  # empty slots (item n_items) last
        scores, items = np.take_along_axis(scores, by_score, 1), np.take_along_axis(items, by_score, 1)
        with np.errstate(invalid="ignore"):
            close = scores[:, :-1].astype(np.float64) - scores[:, 1:] <= self.margins[:, None]
        clusters = np.concatenate([np.zeros((n_rows, 1), np.int64), np.cumsum(~close, axis=1)], axis=1)
        shared = np.zeros(scores.shape, dtype=bool)
        shared[:, 1:] |= close
        shared[:, :-1] |= close
        rows, columns = np.nonzero(shared)  # row-major: grouped by (row, cluster), the clusters in order
        if len(rows):
            members = items[rows, columns]
            exact = scores[rows, columns].astype(np.float64)
            product = self.margins[rows] > 0  # margin 0: exact already (a zero user vector scores 0 exactly)
            if rescore is not None and product.any():
                exact[product] = rescore(rows[product], members[product])
            within = np.lexsort((members, -exact, clusters[rows, columns], rows))
            items[rows, columns] = members[within]
        best = items[:, :k]
        for row in np.flatnonzero(best[:, -1] >= n_items):  # fewer than k scorable: fill by index
            scored = best[row][best[row] < n_items]
            best[row, len(scored):] = np.setdiff1d(np.arange(2 * k), scored)[:k - len(scored)]
        return best
