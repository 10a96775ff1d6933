"""Split protocols, history matrices and targets on hand-built interactions with hand-computed labels."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from vlm4rec import splits
from vlm4rec.splits import (SplitConfig, assign_new_item_split, assign_split, binarize, build_history, new_items,
                            sample_negatives, targets_of)


def user_rows(user: int, items: list[int], timestamps: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"user_idx": user, "item_idx": items, "timestamp": timestamps})


def labels_by_item(frame: pd.DataFrame, config: SplitConfig, user: int) -> dict[int, str]:
    labels = assign_split(frame, config)
    mine = (frame["user_idx"] == user).to_numpy()
    return dict(zip(frame["item_idx"].to_numpy()[mine], labels[mine]))


def split_sizes(labels: np.ndarray) -> tuple[int, int, int]:
    return tuple(int((labels == name).sum()) for name in ("train", "val", "test"))


@pytest.mark.parametrize("n, expected", [
    (5, (3, 1, 1)),    # test round(1.0)=1, val max(1, round(0.5)=0)=1
    (7, (5, 1, 1)),    # round(1.4)=1, round(0.7)=1
    (8, (5, 1, 2)),    # round(1.6)=2, round(0.8)=1
    (15, (10, 2, 3)),  # round(3.0)=3, round(1.5)=2
    (25, (18, 2, 5)),  # round(5.0)=5, round(2.5)=2 (Python rounds half to even)
])
def test_temporal_ratio_sizes_follow_python_round(n, expected):
    frame = user_rows(0, list(range(n)), list(range(100, 100 + n)))
    assert split_sizes(assign_split(frame, SplitConfig())) == expected


def test_temporal_ratio_takes_the_latest_as_test_and_breaks_time_ties_by_item():
    # Row order shuffled on purpose: labels come back in the frame's row order.
    frame = pd.concat([
        user_rows(0, [40, 10, 30, 20, 50], [5, 1, 3, 2, 5]),   # items 40 and 50 tie at t=5: 50 is later
        user_rows(1, [7, 3, 9, 1, 5], [10, 10, 10, 10, 10]),   # all tie: order by item 1,3,5,7,9
    ], ignore_index=True).sample(frac=1.0, random_state=3).reset_index(drop=True)
    assert labels_by_item(frame, SplitConfig(), 0) == {10: "train", 20: "train", 30: "train",
                                                       40: "val", 50: "test"}
    assert labels_by_item(frame, SplitConfig(), 1) == {1: "train", 3: "train", 5: "train",
                                                       7: "val", 9: "test"}


def test_leave_last_out_keeps_one_val_and_one_test_per_user():
    frame = pd.concat([user_rows(0, [1, 2, 3, 4], [4, 3, 2, 1]),
                       user_rows(1, [5, 6], [1, 2]),
                       user_rows(2, [8], [1])], ignore_index=True)
    config = SplitConfig(protocol="leave_last_out")
    assert labels_by_item(frame, config, 0) == {4: "train", 3: "train", 2: "val", 1: "test"}
    assert labels_by_item(frame, config, 1) == {5: "val", 6: "test"}
    assert labels_by_item(frame, config, 2) == {8: "test"}


def test_random_ratio_is_seeded_sized_by_ratio_and_ignores_time():
    frame = pd.concat([user_rows(u, list(range(20)), list(range(20))) for u in range(3)], ignore_index=True)
    config = SplitConfig(protocol="random_ratio", val_ratio=0.2, test_ratio=0.2, seed=7)
    first, again = assign_split(frame, config), assign_split(frame, config)
    other_seed = assign_split(frame, SplitConfig(protocol="random_ratio", val_ratio=0.2, test_ratio=0.2,
                                                 seed=8))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other_seed)
    temporal = assign_split(frame, SplitConfig(protocol="temporal_ratio", val_ratio=0.2, test_ratio=0.2))
    assert not np.array_equal(first, temporal)
    for user in range(3):
        mine = (frame["user_idx"] == user).to_numpy()
        assert split_sizes(first[mine]) == (12, 4, 4)


def test_global_time_cuts_at_timestamp_quantiles():
    # Timestamps 1..10: quantile 0.8 = 8.2 (test: 9, 10), quantile 0.7 = 7.3 (val: 8).
    frame = pd.DataFrame({"user_idx": [0, 1, 0, 1, 0, 1, 0, 1, 0, 1], "item_idx": np.arange(10),
                          "timestamp": np.arange(10, 0, -1)})
    labels = assign_split(frame, SplitConfig(protocol="global_time", val_ratio=0.1, test_ratio=0.2))
    expected = {10: "test", 9: "test", 8: "val"}
    assert list(labels) == [expected.get(t, "train") for t in frame["timestamp"]]


def test_unknown_protocol_is_an_error():
    with pytest.raises(ValueError, match="unknown split protocol"):
        assign_split(user_rows(0, [1, 2], [1, 2]), SplitConfig(protocol="bogus"))  # type: ignore[arg-type]


def interactions_with_splits() -> pd.DataFrame:
    return pd.DataFrame({
        "user_idx": [0, 0, 0, 0, 1, 1, 1],
        "item_idx": [3, 1, 2, 0, 2, 4, 0],
        "timestamp": [30, 10, 20, 40, 5, 5, 9],
        "split": ["train", "train", "val", "test", "train", "train", "test"],
    })


def test_build_history_marks_interactions_and_ranks_them_from_the_latest():
    history = build_history(interactions_with_splits(), ("train", "val"), n_users=3, n_items=5)
    assert history.n_users == 3 and history.n_items == 5
    np.testing.assert_array_equal(history.matrix.toarray(), [[0, 1, 1, 1, 0],
                                                             [0, 0, 1, 0, 1],
                                                             [0, 0, 0, 0, 0]])
    # User 0: item 1 (t=10), 2 (t=20, val), 3 (t=30) -> latest = 3 stored as 1, then 2, then 1.
    # User 1: items 2 and 4 tie at t=5 -> item 4 counts as the later one.
    np.testing.assert_array_equal(history.recency.toarray(), [[0, 3, 2, 1, 0],
                                                              [0, 0, 2, 0, 1],
                                                              [0, 0, 0, 0, 0]])


def test_build_history_uses_only_the_requested_splits():
    history = build_history(interactions_with_splits(), ("train",), n_users=2, n_items=5)
    np.testing.assert_array_equal(history.matrix.toarray(), [[0, 1, 0, 1, 0], [0, 0, 1, 0, 1]])
    np.testing.assert_array_equal(history.recency.toarray(), [[0, 2, 0, 1, 0], [0, 0, 2, 0, 1]])


def test_targets_of_is_the_binary_matrix_of_one_split():
    targets = targets_of(interactions_with_splits(), "test", n_users=3, n_items=5)
    assert targets.shape == (3, 5)
    np.testing.assert_array_equal(targets.toarray(), [[1, 0, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]])


def test_binarize_keeps_positive_entries_as_ones_with_sorted_indices():
    raw = sp.csr_matrix((np.array([3.0, -1.0, 0.5, 0.0]), np.array([2, 0, 1, 0]), np.array([0, 2, 4])),
                        shape=(2, 3))
    out = binarize(raw)
    assert out.dtype == np.float32 and out.has_sorted_indices
    np.testing.assert_array_equal(out.toarray(), [[0, 0, 1], [0, 1, 0]])
    assert out.nnz == 2  # the negative and the explicit zero are dropped, not stored


@pytest.mark.parametrize("dense_cells", [splits.DENSE_MEMBERSHIP_CELLS, 0])  # table lookup, binary search
def test_negatives_avoid_the_users_history(dense_cells, monkeypatch) -> None:
    monkeypatch.setattr(splits, "DENSE_MEMBERSHIP_CELLS", dense_cells)
    rows = [(0, i) for i in range(9)] + [(1, 0)]
    history = sp.csr_matrix((np.ones(len(rows)), ([r for r, _ in rows], [c for _, c in rows])), shape=(2, 10))
    negatives = sample_negatives(history, np.array([0, 1, 0]), 50, np.random.default_rng(0))
    assert np.all(negatives[[0, 2]] == 9)
    assert not np.any(negatives[1] == 0) and len(np.unique(negatives[1])) > 1
    with pytest.raises(ValueError, match="every item"):
        sample_negatives(sp.csr_matrix(np.ones((1, 2))), np.array([0]), 3, np.random.default_rng(0))


def test_both_membership_tests_draw_the_same_negatives(monkeypatch) -> None:
    """The table lookup (small catalogues) and the binary search (large ones) find the same clashes, so the
    same generator gives the same negatives, with the membership built per call or once beforehand."""
    history = sp.random(40, 30, density=0.5, format="csr", random_state=np.random.default_rng(3))
    users = np.repeat(np.arange(40), 7)
    drawn = []
    for dense_cells in (splits.DENSE_MEMBERSHIP_CELLS, 0):
        monkeypatch.setattr(splits, "DENSE_MEMBERSHIP_CELLS", dense_cells)
        drawn.append(sample_negatives(history, users, 3, np.random.default_rng(5)))
        drawn.append(sample_negatives(history, users, 3, np.random.default_rng(5),
                                      in_history=splits.history_membership(history)))
    for other in drawn[1:]:
        np.testing.assert_array_equal(drawn[0], other)
    assert not history.toarray()[users[:, None], drawn[0]].any()


def test_time_new_items_are_the_newest_items_split_earlier_val_later_test():
    # user 0 sees item i at t=i+1; user 1 sees item 9 later (t=20) and item 3 first (t=0)
    frame = pd.concat([user_rows(0, list(range(10)), list(range(1, 11))),
                       user_rows(1, [9, 3], [20, 0])], ignore_index=True)
    # item 3's first positive is now t=0, so the order by first positive is 3, 0, 1, 2, 4, ..., 9
    val, test = new_items(frame, cold_share=0.4, val_share=0.5)
    assert val.tolist() == [6, 7] and test.tolist() == [8, 9]
    labels = assign_new_item_split(frame, val, test)
    item = frame["item_idx"].to_numpy()
    assert set(labels[np.isin(item, [8, 9])]) == {"test"}
    assert set(labels[np.isin(item, [6, 7])]) == {"val"}
    assert set(labels[~np.isin(item, [6, 7, 8, 9])]) == {"train"}
    # the warm test marks warm rows only: a marked row of a new item stays the new item's
    marked = np.isin(item, [0, 8]) & (frame["user_idx"] == 0).to_numpy()
    labels = assign_new_item_split(frame, val, test, warm_test=marked)
    assert labels[marked].tolist() == ["warm_test", "test"]
    assert set(labels[~marked & ~np.isin(item, [6, 7, 8, 9])]) == {"train"}
    with pytest.raises(ValueError, match="warm_test marks 2 rows"):
        assign_new_item_split(frame, val, test, warm_test=np.ones(2, dtype=bool))


def test_random_new_items_are_seeded_disjoint_and_sized():
    frame = user_rows(0, list(range(20)), list(range(20)))
    val, test = new_items(frame, cold_share=0.5, val_share=0.4, variant="random", seed=3)
    again = new_items(frame, cold_share=0.5, val_share=0.4, variant="random", seed=3)
    assert (len(val), len(test)) == (4, 6)
    assert not np.intersect1d(val, test).size
    assert val.tolist() == again[0].tolist() and test.tolist() == again[1].tolist()
    other = new_items(frame, cold_share=0.5, val_share=0.4, variant="random", seed=4)
    assert np.concatenate(other).tolist() != np.concatenate([val, test]).tolist()


def test_new_items_refuse_a_share_that_leaves_no_test_item():
    with pytest.raises(ValueError, match="no validation or no test"):
        new_items(user_rows(0, [1, 2, 3], [1, 2, 3]), cold_share=0.3)
