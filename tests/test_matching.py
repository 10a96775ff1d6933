import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recommender_contract import RecommenderContract, planted_item_vectors
from threadpoolctl import threadpool_limits

from vlm4rec.matching import (FactorRecommender, PhaseClock, ProfileRecommender, Recommender, ScoreMix,
                              history_weights, item_neighbours, recommend, recommend_torch, standardize_rows)
from vlm4rec import matching, selection
from vlm4rec.selection import RunningTopK
from vlm4rec.splits import History, build_history


class FixedScores(Recommender):
    """Returns rows of a given score matrix; records the block sizes it was asked for."""

    def __init__(self, scores: np.ndarray):
        self.scores = scores
        self.blocks: list[int] = []

    def fit(self, history: History) -> "FixedScores":
        return self

    def score_block(self, users: np.ndarray) -> np.ndarray:
        self.blocks.append(len(users))
        return self.scores[users].copy()


def reference_topk(scores: np.ndarray, exclude: sp.csr_matrix, k: int) -> np.ndarray:
    """Full sort per user by (seen last, -score, item index): the definition, written plainly."""
    out = []
    for u, row in enumerate(scores):
        seen = set(exclude[u].indices)
        rankable = [i not in seen and np.isfinite(row[i]) for i in range(len(row))]
        key = [(0, -row[i], i) if rankable[i] else (1, 0, i) for i in range(len(row))]
        out.append([item for *_, item in sorted(key)[:k]])
    return np.array(out)


def history_of(rows: list[tuple[int, int, int]], n_users: int, n_items: int) -> History:
    """History from (user, item, timestamp) triples, all in train."""
    inter = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp"]).assign(split="train")
    return build_history(inter, ("train",), n_users, n_items)


def recommend_on_torch_cpu(model, users, exclude, k, block_size=2048, tile_items=None):
    return recommend_torch(model, users, exclude, k, block_size, device="cpu", tile_items=tile_items)


ENGINES = [pytest.param(recommend, id="numpy"), pytest.param(recommend_on_torch_cpu, id="torch")]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("k,block_size,tile_items", [(1, 3, None), (5, 4, 3), (12, 100, 7), (30, 7, 1)])
def test_recommend_matches_full_sort_with_many_ties(engine, k: int, block_size: int, tile_items) -> None:
    rng = np.random.default_rng(k)
    scores = rng.integers(0, 3, size=(17, 30)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.1] = -np.inf
    scores[2, ::3] = -0.0  # equal to 0.0: ties by index
    exclude = sp.csr_matrix(rng.random((17, 30)) < 0.3)
    got = engine(FixedScores(scores), np.arange(17), exclude, k, block_size=block_size, tile_items=tile_items)
    assert got.dtype == np.int64 and got.shape == (17, k)
    np.testing.assert_array_equal(got, reference_topk(scores, exclude, k))


@pytest.mark.parametrize("k", [1, 50, 200])
@pytest.mark.parametrize("block_size", [1, 97, 1000])
def test_torch_engine_equals_numpy_engine_on_random_tied_scores(k: int, block_size: int) -> None:
    rng = np.random.default_rng(k + block_size)
    scores = np.round(rng.normal(size=(300, 1500)), 1).astype(np.float32)  # about 60 distinct values
    scores[rng.random(scores.shape) < 0.05] = -np.inf
    scores[7] = 0.0
    exclude = sp.csr_matrix(rng.random(scores.shape) < 0.1)
    users = rng.permutation(300)[:250]
    expected = recommend(FixedScores(scores), users, exclude, k, block_size)
    np.testing.assert_array_equal(expected[:5], reference_topk(scores[users[:5]], exclude[users[:5]], k))
    for tile_items in (None, 64, 333):
        np.testing.assert_array_equal(recommend_on_torch_cpu(FixedScores(scores), users, exclude, k, block_size,
                                                             tile_items), expected)


@pytest.mark.parametrize("engine", ENGINES)
def test_every_float_is_ordered_like_a_stable_sort(engine) -> None:
    values = np.array([-np.inf, -3.4e38, -1.0, -1e-45, -0.0, 0.0, 1e-45, 1.0, 3.4e38, np.inf], np.float32)
    scores = np.tile(values, (2, 3))
    scores[1] = scores[1, ::-1]
    expected = np.argsort(-scores, axis=1, kind="stable")
    for tile_items in (None, 4, 11):
        got = engine(FixedScores(scores), np.arange(2), sp.csr_matrix(scores.shape), scores.shape[1],
                     tile_items=tile_items)
        np.testing.assert_array_equal(got, expected)


def test_profile_scores_on_torch_equal_numpy_scores() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(60, 16)).astype(np.float32)
    vectors[[5, 9]] = 0.0  # missing items
    vectors[20] = vectors[21]  # duplicate items tie
    rows = [(u, int(i), t) for u in range(30) for t, i in enumerate(rng.choice(60, 8, replace=False))]
    history = history_of(rows + [(31, 5, 0)], 33, 60)  # user 31 has only a missing item, user 32 nothing
    model = ProfileRecommender(vectors).fit(history)
    users = np.arange(33)
    expected = recommend(model, users, history.matrix, 20, 7)
    np.testing.assert_array_equal(expected[:30], reference_factor_topk(model.profiles(np.arange(30)), model.item_factors,
                                                                        history.matrix[:30], 20, model.missing))
    np.testing.assert_array_equal(recommend_on_torch_cpu(model, users, history.matrix, 20, 7), expected)


def test_torch_engine_rejects_float64_and_nan_scores() -> None:
    with pytest.raises(ValueError, match="float32"):
        recommend_on_torch_cpu(FixedScores(np.zeros((2, 3))), np.arange(2), sp.csr_matrix((2, 3)), 2)
    scores = np.zeros((2, 3), np.float32)
    scores[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        recommend_on_torch_cpu(FixedScores(scores), np.arange(2), sp.csr_matrix((2, 3)), 2)


@pytest.mark.parametrize("k", [1, 3, 10, 40])
def test_recommend_equals_stable_full_sort_on_large_tied_rows(k: int) -> None:
    """Rows long enough for the grouped k-th bound, with a tail, ties, -inf and all-tied rows."""
    rng = np.random.default_rng(k)
    scores = rng.integers(0, 50, size=(40, 2003)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.3] = -np.inf
    scores[5] = 0.0
    scores[7] = -np.inf
    scores[9, :1990] = -np.inf  # the only finite scores are in the tail
    scores[11] = rng.random(2003)
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    none_seen = sp.csr_matrix(scores.shape)
    for tile_items in (None, 500, 2003):
        np.testing.assert_array_equal(recommend(FixedScores(scores), np.arange(40), none_seen, k,
                                                tile_items=tile_items), expected)
        np.testing.assert_array_equal(recommend_on_torch_cpu(FixedScores(scores), np.arange(40), none_seen, k,
                                                             tile_items=tile_items), expected)


def test_running_top_k_holds_only_the_exact_ties_the_tie_rule_can_still_rank() -> None:
    """With margin 0 an all-tied row keeps its k lowest items, not the whole tile, and a row that brings
    many candidates is merged apart from the others without changing what either holds."""
    k, width = 3, 100
    scores = np.zeros((2, width), dtype=np.float32)
    scores[1, :5] = [5.0, 4.0, 4.0, 4.0, 1.0]  # row 1: one above the k-th score, then three tied at it
    scores[1, 5:] = -np.inf
    held = RunningTopK(2, k, np.zeros(2))
    rows, columns = np.nonzero(scores > -np.inf)
    held.merge(rows, columns, scores[rows, columns])
    assert held.scores.shape[1] == k
    np.testing.assert_array_equal(held.items, [[0, 1, 2], [0, 1, 2]])
    np.testing.assert_array_equal(held.ordered(None, width), [[0, 1, 2], [0, 1, 2]])


# ---- the tie rule of factor models: exact scores, then item index ---------------------------------

def reference_factor_topk(users: np.ndarray, items: np.ndarray, exclude: sp.csr_matrix, k: int,
                          missing: np.ndarray | None = None) -> np.ndarray:
    """The rule written plainly: float64 products (math.fsum: correctly rounded), full sort by (excluded or
    missing last, -score, item index)."""
    out = []
    for u, user in enumerate(users.astype(np.float64)):
        seen = set(exclude[u].indices) | set(np.flatnonzero(missing) if missing is not None else [])
        key = [(1, 0.0, i) if i in seen else (0, -math.fsum(user * item), i)
               for i, item in enumerate(items.astype(np.float64))]
        out.append([item for *_, item in sorted(key)[:k]])
    return np.array(out)


def tied_factors(seed: int, n_users: int = 40, n_items: int = 120, d: int = 12):
    """Factors with many exact ties (repeated item vectors, as the offline grounder's repeated
    descriptions give) and near-ties (a repeated vector moved by one float32 step in one coordinate),
    users without a vector, missing items and seen items."""
    rng = np.random.default_rng(seed)
    users = rng.normal(size=(n_users, d)).astype(np.float32)
    users[:2] = 0.0
    items = rng.normal(size=(n_items, d)).astype(np.float32)
    copies = rng.integers(0, 10, n_items // 2)
    items[n_items // 2:] = items[copies]
    nudged = rng.random(n_items) < 0.2
    items[nudged, 0] = np.nextafter(items[nudged, 0], np.float32(np.inf))
    missing = rng.random(n_items) < 0.05
    exclude = sp.csr_matrix(rng.random((n_users, n_items)) < 0.2)
    return users, items, missing, exclude


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("seed,k", [(0, 1), (1, 10), (2, 60), (3, 120)])
def test_factor_engine_equals_exact_full_sort_for_any_tile(engine, seed: int, k: int) -> None:
    users, items, missing, exclude = tied_factors(seed)
    model = Factors(users, items, missing).fit(None)  # type: ignore[arg-type]
    expected = reference_factor_topk(users, items, exclude, k, missing)
    for block_size, tile_items in [(2048, None), (7, 1), (13, 5), (40, 33), (3, 120)]:
        got = engine(model, np.arange(len(users)), exclude, k, block_size, tile_items=tile_items)
        np.testing.assert_array_equal(got, expected, err_msg=f"block {block_size}, tile {tile_items}")


def test_factor_engine_without_ties_equals_a_float64_full_sort_on_random_data() -> None:
    """What the engine before tiling returned on data without ties: the lists of a float64 full sort."""
    rng = np.random.default_rng(5)
    users, items = rng.normal(size=(30, 8)).astype(np.float32), rng.normal(size=(500, 8)).astype(np.float32)
    exclude = sp.csr_matrix(rng.random((30, 500)) < 0.1)
    scores = users.astype(np.float64) @ items.astype(np.float64).T
    scores[exclude.toarray()] = -np.inf
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :25]
    model = Factors(users, items).fit(None)  # type: ignore[arg-type]
    for tile_items in (None, 64, 499):
        np.testing.assert_array_equal(recommend(model, np.arange(30), exclude, 25, tile_items=tile_items), expected)


def noisy_matmul(a, b, out=None):
    """A product whose sums came out a last bit or two apart, as another BLAS thread count may give (within
    the error bound: a sum of exact zeros stays zero)."""
    exact = np.asarray(a, np.float64) @ np.asarray(b, np.float64)
    noise = np.random.default_rng(exact.size).integers(-2, 3, exact.shape) * (exact != 0)
    result = exact.astype(np.float32)
    towards = np.where(noise > 0, np.float32(np.inf), np.float32(-np.inf))
    for step in (1, 2):
        result = np.where(np.abs(noise) >= step, np.nextafter(result, towards), result)
    if out is None:
        return result
    out[...] = result
    return out


def test_last_bit_noise_in_the_product_changes_no_list(monkeypatch) -> None:
    users, items, missing, exclude = tied_factors(7, n_users=60, n_items=300, d=24)
    model = Factors(users, items, missing).fit(None)  # type: ignore[arg-type]
    clean = recommend(model, np.arange(60), exclude, 30, tile_items=50)
    monkeypatch.setattr(np, "matmul", noisy_matmul)
    noisy_scores = model.score_block(np.arange(60))
    assert (noisy_scores != users @ items.T)[:, ~missing].any()  # the noise is there...
    np.testing.assert_array_equal(recommend(model, np.arange(60), exclude, 30, tile_items=50), clean)  # ...not here
    np.testing.assert_array_equal(clean, reference_factor_topk(users, items, exclude, 30, missing))


def test_lists_do_not_depend_on_the_blas_thread_count() -> None:
    users, items, missing, exclude = tied_factors(11, n_users=300, n_items=2000, d=64)
    model = Factors(users, items, missing).fit(None)  # type: ignore[arg-type]
    with threadpool_limits(limits=1, user_api="blas"):
        one = recommend(model, np.arange(300), exclude, 50)
    with threadpool_limits(limits=4, user_api="blas"):
        several = recommend(model, np.arange(300), exclude, 50, block_size=64, tile_items=300)
    np.testing.assert_array_equal(one, several)
    np.testing.assert_array_equal(one[:20], reference_factor_topk(users[:20], items, exclude[:20], 50, missing))


def test_users_without_a_vector_are_ranked_by_index_without_exact_rescoring(monkeypatch) -> None:
    """A zero user vector ties every item at exactly 0: its list is the unseen items by index, and the
    float64 rescoring (the cost of a history-less user under the global time cut) is skipped for it."""
    users, items, missing, exclude = tied_factors(13, n_users=30, n_items=200, d=16)
    model = Factors(users, items, missing).fit(None)  # type: ignore[arg-type]
    rescored: list[np.ndarray] = []
    exact_dots = selection.FixedOrderDots.__call__
    monkeypatch.setattr(selection.FixedOrderDots, "__call__",
                        lambda self, rows, columns: rescored.append(self.left[rows]) or exact_dots(self, rows, columns))
    got = recommend(model, np.arange(30), exclude, 40)
    np.testing.assert_array_equal(got, reference_factor_topk(users, items, exclude, 40, missing))
    assert rescored and not any((np.abs(rows).sum(axis=1) == 0).any() for rows in rescored)
    unseen = [i for i in range(200) if not missing[i] and i not in set(exclude[0].indices)]
    np.testing.assert_array_equal(got[0], unseen[:40])


def test_phase_clock_sums_the_engines_phases() -> None:
    users, items, missing, exclude = tied_factors(3)
    clock = PhaseClock()
    recommend(Factors(users, items, missing).fit(None), np.arange(40), exclude, 5, tile_items=50, clock=clock)  # type: ignore[arg-type]
    assert set(clock.seconds) == {"scoring", "masking", "selection", "ordering"}
    assert all(seconds >= 0 for seconds in clock.seconds.values())


def test_item_neighbours_are_the_exact_top_k_with_index_ties() -> None:
    _, items, missing, _ = tied_factors(4, n_items=60)
    items[missing] = 0.0
    neighbours = item_neighbours(items, 7).toarray()
    for i in np.flatnonzero(~missing):
        others = [j for j in range(60) if j != i and not missing[j]]
        sims = {j: math.fsum(items[i].astype(np.float64) * items[j].astype(np.float64)) for j in others}
        best = sorted(others, key=lambda j: (-sims[j], j))[:7]
        assert list(np.flatnonzero(neighbours[i])) == sorted(best)
        np.testing.assert_allclose(neighbours[i, best], [sims[j] for j in best], rtol=1e-6)
    assert not neighbours[missing].any() and not neighbours[:, missing].any()


def test_item_neighbours_served_from_a_longer_memoised_search_equal_a_fresh_search() -> None:
    _, items, missing, _ = tied_factors(4, n_items=60)
    items[missing] = 0.0
    fresh = {}
    for k in (3, 7, 20):
        matching._NEIGHBOUR_LISTS.clear()
        fresh[k] = item_neighbours(items, k)
    matching._NEIGHBOUR_LISTS.clear()
    item_neighbours(items, 20)
    for k in (3, 7, 20):  # served from the K = 20 search: the same matrix, byte for byte
        served = item_neighbours(items, k)
        assert len(matching._NEIGHBOUR_LISTS) == 1
        for part in ("data", "indices", "indptr"):
            np.testing.assert_array_equal(getattr(served, part), getattr(fresh[k], part))
    other = 2 * items
    assert (item_neighbours(other, 7) != fresh[7]).nnz and len(matching._NEIGHBOUR_LISTS) == 2  # keyed on the bytes


def test_all_zero_scores_rank_by_index_with_seen_items_last() -> None:
    exclude = sp.csr_matrix(np.array([[0, 1, 0, 1, 0], [1, 0, 0, 0, 0]]))
    got = recommend(FixedScores(np.zeros((2, 5), np.float32)), np.array([0, 1]), exclude, 5)
    np.testing.assert_array_equal(got, [[0, 2, 4, 1, 3], [1, 2, 3, 4, 0]])


def test_recommend_scores_one_block_at_a_time_in_user_order() -> None:
    scores = np.random.default_rng(0).random((10, 6)).astype(np.float32)
    model = FixedScores(scores)
    users = np.array([9, 2, 4, 0, 7])
    got = recommend(model, users, sp.csr_matrix((10, 6)), 3, block_size=2)
    assert model.blocks == [2, 2, 1]
    np.testing.assert_array_equal(got, np.argsort(-scores[users], axis=1)[:, :3])


def test_recommend_rejects_bad_input() -> None:
    scores = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="between 1 and the number of items"):
        recommend(FixedScores(scores), np.arange(3), sp.csr_matrix((3, 4)), 5)
    with pytest.raises(ValueError, match="k=0"):
        recommend(FixedScores(scores), np.arange(3), sp.csr_matrix((3, 4)), 0)
    with pytest.raises(ValueError, match="tile_items"):
        recommend(FixedScores(scores), np.arange(3), sp.csr_matrix((3, 4)), 2, tile_items=0)
    scores[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        recommend(FixedScores(scores), np.arange(3), sp.csr_matrix((3, 4)), 2)
    items = np.ones((4, 2), np.float32)
    for users, match in [(np.full((3, 2), np.nan, np.float32), "user factors"), (np.ones((3, 2)), "float32")]:
        with pytest.raises(ValueError, match=match):
            recommend(Factors(users, items).fit(None), np.arange(3), sp.csr_matrix((3, 4)), 2)  # type: ignore[arg-type]
    items[2, 1] = np.inf
    with pytest.raises(ValueError, match="item factors"):
        recommend(Factors(np.ones((3, 2), np.float32), items).fit(None), np.arange(3), sp.csr_matrix((3, 4)), 2)  # type: ignore[arg-type]


def test_recommender_diagnostics_default_to_none() -> None:
    assert FixedScores(np.zeros((1, 2))).diagnostics() == {}


def test_score_block_of_wrong_shape_is_an_error() -> None:
    class WrongShape(FixedScores):
        def score_block(self, users: np.ndarray) -> np.ndarray:
            return np.zeros((len(users) + 1, 4), np.float32)

    with pytest.raises(ValueError, match="shape"):
        recommend(WrongShape(np.zeros((3, 4))), np.arange(3), sp.csr_matrix((3, 4)), 2)


# ---- ProfileRecommender -------------------------------------------------------------------------

VECTORS = np.array([[1, 0, 0], [0, 2, 0], [0, 0, 3], [1, 1, 0], [0, 0, 0]], dtype=np.float32)
# user 0: items 0 (t=1), 1 (t=2), 2 (t=3) -> recency ranks 2, 1, 0; user 1: only missing item 4.
HISTORY = history_of([(0, 0, 1), (0, 1, 2), (0, 2, 3), (1, 4, 5)], n_users=3, n_items=5)


class Factors(FactorRecommender):
    """Given factors, set at fit: what the base does with them is under test."""

    name = "factors"

    def __init__(self, users: np.ndarray, items: np.ndarray, missing: np.ndarray | None = None):
        self.users, self.item_factors, self.missing = users, items, missing

    def fit(self, history: History) -> "Factors":
        self.user_factors = self.users
        return self


def test_factor_scores_are_user_times_item_factors_with_missing_items_at_minus_inf() -> None:
    users = np.array([[1, 0], [0, 2], [1, 1]], dtype=np.float32)
    items = np.array([[1, 2], [3, -1], [0, 1], [2, 2]], dtype=np.float32)
    model = Factors(users, items, missing=np.array([False, False, True, False]))
    with pytest.raises(RuntimeError, match="factors: call fit"):
        model.score_block(np.array([0]))
    with pytest.raises(RuntimeError, match="call fit"):
        model.factors()
    model.fit(None)  # type: ignore[arg-type]
    # user 0 = (1, 0): 1, 3, (0), 2; user 1 = (0, 2): 4, -2, (2), 4; user 2 = (1, 1): 3, 2, (1), 4
    expected = np.array([[3, 2, -np.inf, 4], [1, 3, -np.inf, 2]], dtype=np.float32)
    np.testing.assert_array_equal(model.score_block(np.array([2, 0])), expected)
    out = np.full((2, 4), 7.0, dtype=np.float32)
    assert model.score_into(np.array([2, 0]), out) is out
    np.testing.assert_array_equal(out, expected)
    none_seen = sp.csr_matrix((3, 4), dtype=np.float32)
    for engine in (recommend, recommend_torch):
        kwargs = {"device": "cpu"} if engine is recommend_torch else {}
        # ties (user 1: items 0 and 3 at 4) go to the smaller index; the missing item is never above a scored one
        assert engine(model, np.arange(3), none_seen, 3, **kwargs).tolist() == [[1, 3, 0], [0, 3, 1], [3, 0, 1]]
    np.testing.assert_array_equal(Factors(users, items).fit(None).score_block(np.array([1])),  # type: ignore[arg-type]
                                  [[4, -2, 2, 4]])


def test_mean_profile_scores_are_cosines_to_normalised_mean() -> None:
    model = ProfileRecommender(VECTORS).fit(HISTORY)
    profile = np.array([1, 1, 1]) / np.sqrt(3)  # mean of e_0, e_1, e_2 (unit vectors), normalised
    expected = [profile[0], profile[1], profile[2], (profile[0] + profile[1]) / np.sqrt(2), -np.inf]
    np.testing.assert_allclose(model.score_block(np.array([0]))[0], expected, rtol=1e-6)
    np.testing.assert_allclose(model.profiles(np.array([0]))[0], profile, rtol=1e-6)


def test_recency_weights_halve_every_half_life() -> None:
    weights = history_weights(HISTORY, "recency", half_life=1.0).toarray()
    np.testing.assert_allclose(weights[0, :3], [0.25, 0.5, 1.0])
    model = ProfileRecommender(VECTORS, aggregation="recency", half_life=1.0).fit(HISTORY)
    profile = np.array([0.25, 0.5, 1.0]) / np.linalg.norm([0.25, 0.5, 1.0])
    np.testing.assert_allclose(model.score_block(np.array([0]))[0, :3], profile, rtol=1e-6)


def test_history_cap_keeps_most_recent_items() -> None:
    model = ProfileRecommender(VECTORS, history_cap=2).fit(HISTORY)
    scores = model.score_block(np.array([0]))[0]
    np.testing.assert_allclose(scores[:3], [0, 1 / np.sqrt(2), 1 / np.sqrt(2)], atol=1e-7)


def test_missing_items_rank_last_and_empty_profiles_are_counted() -> None:
    model = ProfileRecommender(VECTORS).fit(HISTORY)
    assert model.n_empty_profiles == 2  # user 1 (only a missing item) and user 2 (no history)
    assert model.diagnostics() == {"n_empty_profiles": 2, "n_missing_items": 1}
    scores = model.score_block(np.array([1, 2]))
    np.testing.assert_array_equal(scores[:, :4], 0.0)
    topk = recommend(model, np.array([0, 1, 2]), HISTORY.matrix, 5)
    np.testing.assert_array_equal(topk, [[3, 0, 1, 2, 4], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4]])


def test_knn_sum_without_truncation_ranks_like_unnormalised_mean() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(25, 6)).astype(np.float32)
    rows = [(u, int(i), t) for u in range(8) for t, i in enumerate(rng.choice(25, 6, replace=False))]
    history = history_of(rows, 8, 25)
    knn = ProfileRecommender(vectors, aggregation="knn_sum", knn_k=24).fit(history)
    items = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = FixedScores((history.matrix.toarray() @ items @ items.T).astype(np.float32))
    users = np.arange(8)
    np.testing.assert_array_equal(recommend(knn, users, history.matrix, 10),
                                  recommend(expected, users, history.matrix, 10))


def test_knn_sum_keeps_only_each_history_items_top_neighbours() -> None:
    vectors = np.array([[1, 0], [0.9, 0.1], [0.5, 0.5], [0, 1]], dtype=np.float32)
    history = history_of([(0, 0, 1)], 1, 4)
    scores = ProfileRecommender(vectors, aggregation="knn_sum", knn_k=2).fit(history).score_block(
        np.array([0]))[0]
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    # item 0's two nearest other items are 1 and 2; item 3 falls outside its neighbourhood.
    np.testing.assert_allclose(scores, [0, unit[0] @ unit[1], unit[0] @ unit[2], 0], rtol=1e-6)


def test_profile_recommender_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError, match="aggregation"):
        ProfileRecommender(VECTORS, aggregation="max")
    with pytest.raises(ValueError, match="NaN"):
        ProfileRecommender(np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="items"):
        ProfileRecommender(VECTORS[:3]).fit(HISTORY)
    with pytest.raises(RuntimeError, match="fit"):
        ProfileRecommender(VECTORS).score_block(np.array([0]))


# ---- ScoreMix -----------------------------------------------------------------------------------

def test_standardize_rows_uses_finite_entries_only() -> None:
    z = standardize_rows(np.array([[1, 2, 3, -np.inf], [5, 5, 5, 5]], dtype=np.float32))
    np.testing.assert_allclose(z[0, :3], [-np.sqrt(1.5), 0, np.sqrt(1.5)], rtol=1e-6)
    assert np.isnan(z[0, 3])
    np.testing.assert_array_equal(z[1], 0.0)


def test_score_mix_combines_z_scores_and_keeps_unscorable_items_last() -> None:
    a = np.zeros((3, 5), dtype=np.float32)
    b = np.zeros((3, 5), dtype=np.float32)
    a[2] = [1, 2, 3, -np.inf, -np.inf]  # user 2 has no history: every item is a candidate
    b[2] = [30, 20, 10, 0, -np.inf]
    mix = ScoreMix(FixedScores(a), FixedScores(b), alpha=0.25).fit(HISTORY)
    z_a = np.array([-1, 0, 1]) * np.sqrt(1.5)
    z_b = (np.array([30, 20, 10, 0]) - 15) / np.std([30, 20, 10, 0])
    expected = [0.25 * z_a[0] + 0.75 * z_b[0], 0.25 * z_a[1] + 0.75 * z_b[1],
                0.25 * z_a[2] + 0.75 * z_b[2], 0.75 * z_b[3], -np.inf]
    np.testing.assert_allclose(mix.score_block(np.array([2]))[0], expected, rtol=1e-5)
    with pytest.raises(ValueError, match="alpha"):
        ScoreMix(FixedScores(a), FixedScores(b), alpha=1.5)


def test_score_mix_standardises_over_the_items_left_after_masking_the_history() -> None:
    """User 0 has seen items 0, 1, 2: a collaborative model scores them high (100), which would pull the
    mean and spread of its z-scores if they were standardised before masking. Over the candidates 3, 4
    only, the z-scores are -1 and +1 for both models."""
    a = np.array([[100, 100, 100, 1, 2]] * 3, dtype=np.float32)
    b = np.array([[0, 0, 0, 7, 5]] * 3, dtype=np.float32)
    scores = ScoreMix(FixedScores(a), FixedScores(b), alpha=0.75).fit(HISTORY).score_block(np.array([0]))[0]
    np.testing.assert_array_equal(scores[:3], -np.inf)
    np.testing.assert_allclose(scores[3:], [0.75 * -1 + 0.25 * 1, 0.75 * 1 + 0.25 * -1], rtol=1e-6)
    assert a[0, 0] == 100  # the model's own scores are left as they were


# ---- the shared recommender contract ------------------------------------------------------------

class TestProfileMeanContract(RecommenderContract):
    def make(self) -> Recommender:
        return ProfileRecommender(planted_item_vectors())


class TestProfileRecencyCappedContract(RecommenderContract):
    def make(self) -> Recommender:
        return ProfileRecommender(planted_item_vectors(), aggregation="recency", half_life=3.0,
                                  history_cap=5)


class TestProfileKnnSumContract(RecommenderContract):
    def make(self) -> Recommender:
        return ProfileRecommender(planted_item_vectors(), aggregation="knn_sum", knn_k=10)


class TestScoreMixContract(RecommenderContract):
    def make(self) -> Recommender:
        return ScoreMix(ProfileRecommender(planted_item_vectors()),
                        ProfileRecommender(planted_item_vectors(seed=1), aggregation="knn_sum"), 0.5)




def test_score_mix_scores_its_models_on_one_blas_thread() -> None:
    """The mix is no factor product the engine can rescore exactly: its models' dense products run on one
    BLAS thread, so that their last bits (and the mix's near-ties) do not depend on the thread count."""
    from threadpoolctl import threadpool_info

    seen: list[int] = []

    class Recording(FixedScores):
        def score_block(self, users: np.ndarray) -> np.ndarray:
            seen.append(max(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"))
            return super().score_block(users)

    scores = np.arange(2 * HISTORY.matrix.shape[1], dtype=np.float32).reshape(2, -1)
    with threadpool_limits(limits=2, user_api="blas"):
        ScoreMix(Recording(scores), Recording(scores[::-1]), alpha=0.5).fit(HISTORY).score_block(np.array([0, 1]))
    assert seen == [1, 1]
