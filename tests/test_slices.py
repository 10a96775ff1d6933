import math

import numpy as np
import pandas as pd
import pytest

from vlm4rec.data import PreparedData
from vlm4rec.evaluation import EvalData
from vlm4rec.metrics import ranking_metrics
from vlm4rec.slices import (history_bin_labels, image_availability_groups, item_popularity_groups,
                            item_slice_recall, per_user_recall_on, per_user_slice_table, slices_for_methods,
                            user_history_groups)

N_ITEMS = 8
# (user, item, split). Items 6 and 7 only in test: cold. User 4 has only a test item.
ROWS = [(0, 0, "train"), (0, 1, "train"), (0, 2, "train"), (0, 5, "val"),
        (0, 6, "test"), (0, 3, "test"),
        (1, 0, "train"), (1, 1, "train"), (1, 3, "val"), (1, 2, "test"), (1, 7, "test"),
        (2, 0, "train"), (2, 3, "train"), (2, 3, "train"), (2, 1, "val"), (2, 4, "test"),
        (3, 0, "train"), (3, 1, "train"), (3, 4, "train"), (3, 2, "val"), (3, 3, "test"),
        (4, 0, "test")]
HAS_IMAGE = [True, True, False, True, False, True, True, False]
USERS = np.array([3, 0, 4, 1, 2])
TOPK = np.array([[3, 5, 6],   # user 3, test {3}: rank 1
                 [7, 6, 4],   # user 0, test {6, 3}: 6 at rank 2
                 [1, 2, 0],   # user 4, test {0}: rank 3
                 [2, 6, 5],   # user 1, test {2, 7}: 2 at rank 1
                 [5, 6, 7]])  # user 2, test {4}: miss


def interactions() -> pd.DataFrame:
    frame = pd.DataFrame(ROWS, columns=["user_idx", "item_idx", "split"])
    frame["timestamp"] = np.arange(len(frame), dtype=np.int64)
    frame["rating"] = np.float32(5.0)
    return frame


def items() -> pd.DataFrame:
    return pd.DataFrame({"item_idx": np.arange(N_ITEMS), "item_id": [str(i) for i in range(N_ITEMS)],
                         "has_image": HAS_IMAGE})


def prepared() -> PreparedData:
    users = pd.DataFrame({"user_idx": np.arange(5), "user_id": [str(u) for u in range(5)]})
    return PreparedData(items=items(), users=users, interactions=interactions())


def test_popularity_groups_hand_computed() -> None:
    """Train + validation popularity in distinct users: items 0 and 1: 4 each (item 1 gets user 2's
    validation row), items 2 and 3: 2 (item 3's repeated train row counts once), items 4 and 5: 1 (item 5
    only in validation); items 6 and 7 appear only in test: cold."""
    groups = item_popularity_groups(interactions(), N_ITEMS, head_share=0.4)  # ceil(0.4 * 6) = 3 head
    assert list(groups.index) == list(range(N_ITEMS))
    assert list(groups) == ["head", "head", "head", "tail", "tail", "tail", "cold", "cold"]
    # ceil(0.5 * 6) = 3; ceil(0.2 * 6) = 2: the tie between items 0 and 1 goes to the lower index
    assert list(item_popularity_groups(interactions(), N_ITEMS, 0.5)[:5]) == ["head"] * 3 + ["tail"] * 2
    assert list(item_popularity_groups(interactions(), N_ITEMS, 0.1)[:2]) == ["head", "tail"]


def loop_popularity_groups(frame: pd.DataFrame, n_items: int, head_share: float) -> list[str]:
    """The definition with Python sets and sorted()."""
    users_of: dict[int, set[int]] = {i: set() for i in range(n_items)}
    for user, item, split in zip(frame["user_idx"], frame["item_idx"], frame["split"]):
        if split in ("train", "val"):
            users_of[item].add(user)
    warm = sorted((i for i in range(n_items) if users_of[i]), key=lambda i: (-len(users_of[i]), i))
    n_head = math.ceil(round(head_share * len(warm), 9))
    head = set(warm[:n_head])
    return ["head" if i in head else "tail" if users_of[i] else "cold" for i in range(n_items)]


def random_interactions(seed: int, n_users: int = 40, n_items: int = 30) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_items + 1)  # skewed popularity, many ties
    rows = []
    for user in range(n_users):
        picked = rng.choice(n_items, size=rng.integers(3, 12), replace=False, p=weights / weights.sum())
        rows += [(user, int(item), split) for item, split in
                 zip(picked, rng.choice(["train", "train", "val", "test"], size=len(picked)))]
    frame = pd.DataFrame(rows, columns=["user_idx", "item_idx", "split"])
    frame.loc[frame.groupby("user_idx").head(1).index, "split"] = "test"  # every user has a test item
    return frame


@pytest.mark.parametrize("seed,head_share", [(0, 0.2), (1, 0.3), (2, 0.5)])
def test_popularity_groups_match_loop(seed: int, head_share: float) -> None:
    frame = random_interactions(seed)
    assert list(item_popularity_groups(frame, 30, head_share)) == loop_popularity_groups(frame, 30, head_share)


def test_popularity_groups_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="head_share"):
        item_popularity_groups(interactions(), N_ITEMS, head_share=1.0)
    with pytest.raises(ValueError, match="outside"):
        item_popularity_groups(interactions(), 4, head_share=0.2)


def test_history_bin_labels() -> None:
    assert history_bin_labels((0, 10, 25, 50, 100, math.inf)) == ["1-10", "11-25", "26-50", "51-100", ">100"]
    assert history_bin_labels((0, 1, 3, math.inf)) == ["1", "2-3", ">3"]


def test_user_history_groups_count_train_and_val() -> None:
    # distinct train + val positives: user 0: 4, 1: 3, 2: 3 (item 3 repeated), 3: 4, 4: 0
    groups = user_history_groups(interactions(), bins=(0, 3, 10, math.inf))
    assert list(groups.index) == [0, 1, 2, 3, 4]
    assert list(groups) == ["4-10", "1-3", "1-3", "4-10", "0"]
    assert list(groups.cat.categories) == ["0", "1-3", "4-10", ">10"]
    assert list(user_history_groups(interactions())) == ["1-10"] * 4 + ["0"]


def test_user_history_groups_reject_bad_bins() -> None:
    for bins in [(0,), (0, 5, 5), (-1, 5), (0, 2.5, math.inf)]:
        with pytest.raises(ValueError, match="bins"):
            user_history_groups(interactions(), bins=bins)
    with pytest.raises(ValueError, match="outside the bins"):
        user_history_groups(interactions(), bins=(0, 3))  # users 0 and 3 have 4


def test_per_user_slice_table_hand_computed() -> None:
    per_user = pd.DataFrame({"user_idx": USERS, "recall@2": [1.0, 0.5, 0.0, 0.5, 0.0],
                             "ndcg@2": [1.0, 0.4, 0.0, 0.6, 0.0]})
    groups = user_history_groups(interactions(), bins=(0, 3, 10, math.inf))
    table = per_user_slice_table(per_user, groups, ["recall@2", "ndcg@2"])
    assert list(table["slice"]) == ["0", "1-3", "4-10", ">10"]
    assert list(table["n_users"]) == [1, 2, 2, 0]
    np.testing.assert_allclose(table["recall@2"], [0.0, 0.25, 0.75, np.nan])
    np.testing.assert_allclose(table["ndcg@2"], [0.0, 0.3, 0.7, np.nan])
    with pytest.raises(ValueError, match="not per-user columns"):
        per_user_slice_table(per_user, groups, ["recall@5"])
    with pytest.raises(ValueError, match="have no group"):
        per_user_slice_table(per_user, groups.drop(4), ["recall@2"])


@pytest.mark.parametrize("k,expected", [(2, {"head": (2, 1), "tail": (3, 1), "cold": (2, 1)}),
                                        (3, {"head": (2, 2), "tail": (3, 1), "cold": (2, 1)})])
def test_item_slice_recall_popularity_hand_computed(k: int, expected: dict[str, tuple[int, int]]) -> None:
    groups = item_popularity_groups(interactions(), N_ITEMS, head_share=0.4)
    table = item_slice_recall(TOPK, USERS, interactions(), groups, k)
    assert list(table["slice"]) == ["head", "tail", "cold"]
    assert [(n, h) for n, h in zip(table["n_pairs"], table["hits"])] == list(expected.values())
    np.testing.assert_allclose(table["recall"], [h / n for n, h in expected.values()])


def test_item_slice_recall_image_availability_hand_computed() -> None:
    groups = image_availability_groups(items())
    assert list(groups[groups == "without image"].index) == [2, 4, 7]
    table = item_slice_recall(TOPK, USERS, interactions(), groups, k=2)
    assert list(table["slice"]) == ["with image", "without image"]
    assert list(table["n_pairs"]) == [4, 3] and list(table["hits"]) == [2, 1]
    np.testing.assert_allclose(table["recall"], [0.5, 1 / 3])


def loop_pair_recall(topk: np.ndarray, users: np.ndarray, frame: pd.DataFrame, groups: pd.Series,
                     k: int) -> dict[str, tuple[int, int]]:
    """(pairs, hits) per group, one test row at a time."""
    ranked = {int(u): set(row[:k].tolist()) for u, row in zip(users, topk)}
    counts: dict[str, tuple[int, int]] = {}
    for user, item, split in zip(frame["user_idx"], frame["item_idx"], frame["split"]):
        if split == "test":
            n, h = counts.get(groups[item], (0, 0))
            counts[groups[item]] = (n + 1, h + int(item in ranked[user]))
    return counts


@pytest.mark.parametrize("seed", [0, 1])
def test_item_slice_recall_matches_loop_and_metrics(seed: int) -> None:
    frame = random_interactions(seed)
    rng = np.random.default_rng(seed + 10)
    users = rng.permutation(frame["user_idx"].unique())
    topk = np.stack([rng.choice(30, size=10, replace=False) for _ in users])
    groups = item_popularity_groups(frame, 30, 0.2)
    table = item_slice_recall(topk, users, frame, groups, k=5)
    loop = loop_pair_recall(topk, users, frame, groups, k=5)
    for row in table.itertuples():
        assert (row.n_pairs, row.hits) == loop.get(row.slice, (0, 0))
    # total hits over the groups = sum over users of recall@5 * |test items| (the metrics module)
    targets = EvalData.from_prepared(PreparedData(
        items=pd.DataFrame({"item_idx": np.arange(30)}), users=pd.DataFrame({"user_idx": np.arange(40)}),
        interactions=frame.assign(timestamp=0))).test_targets
    per_user = ranking_metrics(topk, targets, users, [5])
    n_test = np.diff(targets.indptr)[users]
    assert table["hits"].sum() == round(float((per_user["recall@5"] * n_test).sum()))


def test_item_slice_recall_rejects_bad_input() -> None:
    groups = item_popularity_groups(interactions(), N_ITEMS, 0.4)
    with pytest.raises(ValueError, match="no ranked list"):
        item_slice_recall(TOPK[1:], USERS[1:], interactions(), groups, k=2)  # user 3 has a test item
    with pytest.raises(ValueError, match="k=4"):
        item_slice_recall(TOPK, USERS, interactions(), groups, k=4)
    with pytest.raises(ValueError, match="test items have no group"):
        item_slice_recall(TOPK, USERS, interactions(), groups.drop(6), k=2)


def test_slices_for_methods_long_format() -> None:
    data = prepared()
    targets = EvalData.from_prepared(data).test_targets
    results = {name: (topk, USERS, ranking_metrics(topk, targets, USERS, [2, 3]))
               for name, topk in [("a", TOPK), ("b", TOPK[:, ::-1].copy())]}
    out = slices_for_methods(results, data, k=2, head_share=0.4)
    assert list(out.columns) == ["method", "slice_kind", "slice", "metric", "n", "value"]
    # per method: 6 history groups x 2 metrics + 3 popularity groups + 2 image groups
    assert len(out) == 2 * (6 * 2 + 3 + 2)
    a = out[out["method"] == "a"].set_index(["slice_kind", "slice", "metric"])
    # recall@2 of users 0..3 (history 3-4, group 1-10): 0.5, 0.5, 0.0, 1.0; user 4 (no history): 0
    assert a.loc[("user_history", "1-10", "recall@2"), "n"] == 4
    assert a.loc[("user_history", "1-10", "recall@2"), "value"] == pytest.approx(0.5)
    assert a.loc[("user_history", "0", "recall@2"), "value"] == 0.0
    assert a.loc[("user_history", ">100", "ndcg@2"), "n"] == 0
    assert [a.loc[("item_popularity", s, "pair_recall@2"), "value"] for s in ("head", "tail", "cold")] == \
        pytest.approx([0.5, 1 / 3, 0.5])
    assert a.loc[("image_availability", "without image", "pair_recall@2"), "value"] == pytest.approx(1 / 3)
    # method b reverses the lists: user 4's item 0 becomes a hit at k=2, user 1's item 2 a miss
    b = out[out["method"] == "b"].set_index(["slice_kind", "slice", "metric"])
    assert b.loc[("item_popularity", "head", "pair_recall@2"), "value"] == 0.5


def test_slices_for_methods_rejects_mismatched_users() -> None:
    data = prepared()
    per_user = ranking_metrics(TOPK, EvalData.from_prepared(data).test_targets, USERS, [2])
    with pytest.raises(ValueError, match="different users"):
        slices_for_methods({"a": (TOPK, USERS, per_user.iloc[1:])}, data, k=2)


def test_per_user_recall_on_a_set_of_items_hand_computed() -> None:
    """Cold test items are 6 and 7: user 0 has item 6 (hit at rank 2), user 1 has item 7 (miss)."""
    table = per_user_recall_on(TOPK, USERS, interactions(), np.array([6, 7]), k=2)
    assert table.to_dict(orient="list") == {"user_idx": [0, 1], "n_items": [1, 1], "recall@2": [1.0, 0.0]}
    both = per_user_recall_on(TOPK, USERS, interactions(), np.array([2, 6, 7]), k=2)
    assert both.set_index("user_idx").loc[1, "recall@2"] == 0.5  # item 2 hit, item 7 missed
