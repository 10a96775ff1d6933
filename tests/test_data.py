"""prepare(), dataset_counts() and the Parquet round trip on a hand-built raw dataset."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vlm4rec.data import (ITEM_COLUMNS, DataFormatError, RawDataset, dataset_counts, id_order, load_prepared,
                          prepare, save_prepared)
from vlm4rec.splits import SplitConfig


def ratings(user: str, items: list[str], stars: list[float], start: int = 100) -> list[dict]:
    return [{"user_id": user, "item_id": i, "rating": r, "timestamp": start + t}
            for t, (i, r) in enumerate(zip(items, stars))]


def item_table(ids: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"item_id": ids, "title": [f"Movie {i}" for i in ids],
                         "image_path": [None if i == "c" else f"/posters/{i}.jpg" for i in ids]})


def raw_dataset() -> RawDataset:
    """Users: u1 five positives (kept), u2 four positives and a 3-star (dropped), u3 five positives with
    one repeated item (four distinct: dropped), u4 five positives incl. item f that only u4 has (cold).
    Item z has no positive and leaves the universe; item c has no image."""
    rows = (ratings("u1", ["a", "b", "c", "d", "e"], [4, 5, 4, 5, 4])
            + ratings("u2", ["a", "b", "c", "d", "e"], [4, 4, 4, 4, 3])
            + ratings("u3", ["a", "b", "a", "c", "d"], [4, 4, 5, 4, 4])
            + ratings("u4", ["b", "a", "c", "d", "f", "z"], [5, 4, 4, 4, 5, 1]))
    items = item_table(["a", "b", "c", "d", "e", "f", "z"])
    features = {"vec": np.arange(7, dtype=np.float32)[:, None] * np.ones((1, 2), dtype=np.float32)}
    return RawDataset(name="tiny", interactions=pd.DataFrame(rows), items=items, features=features)


@pytest.fixture(scope="module")
def prepared():
    return prepare(raw_dataset(), min_rating=4, min_positives=5, split=SplitConfig(), universe="interacted")


def test_prepare_keeps_positives_of_users_with_enough_distinct_positives(prepared):
    assert list(prepared.users["user_id"]) == ["u1", "u4"]
    assert list(prepared.users["user_idx"]) == [0, 1]
    assert len(prepared.interactions) == 10
    assert (prepared.interactions["rating"] >= 4).all()


def test_interacted_universe_is_every_positive_item_including_cold_ones(prepared):
    assert list(prepared.items["item_id"]) == ["a", "b", "c", "d", "e", "f"]
    assert list(prepared.items["item_idx"]) == list(range(6))
    assert list(prepared.items.columns) == ["item_idx", *ITEM_COLUMNS]
    f_idx = 5
    f_rows = prepared.interactions[prepared.interactions["item_idx"] == f_idx]
    assert list(f_rows["split"]) == ["test"]  # u4's latest positive: never in train, still in the universe
    np.testing.assert_array_equal(prepared.items["has_image"], [True, True, False, True, True, True])


def test_prepare_reorders_features_to_the_item_universe(prepared):
    np.testing.assert_array_equal(prepared.features["vec"][:, 0], [0, 1, 2, 3, 4, 5])
    assert prepared.features["vec"].dtype == np.float32


def test_catalogue_universe_keeps_every_item_of_the_item_table():
    data = prepare(raw_dataset(), min_rating=4, min_positives=5, split=SplitConfig())
    assert list(data.items["item_id"]) == ["a", "b", "c", "d", "e", "f", "z"]
    np.testing.assert_array_equal(data.features["vec"][:, 0], np.arange(7))
    assert dataset_counts(data)["items_without_positives"] == 1  # z: one 1-star rating, no positive
    assert 6 not in set(data.interactions["item_idx"])


def test_unknown_universe_and_repeated_item_ids_are_refused():
    with pytest.raises(ValueError, match="unknown universe 'all'"):
        prepare(raw_dataset(), 4, 5, SplitConfig(), universe="all")
    raw = raw_dataset()
    raw.items = pd.concat([raw.items, raw.items.iloc[[0]]], ignore_index=True)
    with pytest.raises(DataFormatError, match="appear twice"):
        prepare(raw, 4, 5, SplitConfig())


def test_id_order_is_numeric_for_integer_ids_and_lexicographic_otherwise():
    assert id_order(["10", "9", "100", "9", "1"]) == ["1", "9", "10", "100"]
    assert id_order(["b10", "b9", "a"]) == ["a", "b10", "b9"]
    assert id_order(["10", "x"]) == ["10", "x"]


def test_integer_ids_order_indices_and_break_same_second_ties_by_movie_id():
    """Items 9, 10 and 100 rated in the same second: as strings "10" < "100" < "9" would make 9 the user's
    latest positive; by MovieID 100 is, so 100 is the test item and 10 the validation item."""
    rows = [{"user_id": "2", "item_id": i, "rating": 5, "timestamp": t}
            for i, t in [("1", 1), ("5", 2), ("7", 3), ("100", 9), ("10", 9), ("9", 9)]]
    rows += [{"user_id": "10", "item_id": i, "rating": 5, "timestamp": t}
             for t, i in enumerate(["1", "5", "7", "9", "10"])]
    raw = RawDataset(name="ids", interactions=pd.DataFrame(rows),
                     items=item_table(["100", "10", "9", "7", "5", "1"]))
    data = prepare(raw, min_rating=4, min_positives=5, split=SplitConfig(val_ratio=0.2, test_ratio=0.2))
    assert list(data.items["item_id"]) == ["1", "5", "7", "9", "10", "100"]
    assert list(data.users["user_id"]) == ["2", "10"]
    user = data.interactions[data.interactions["user_idx"] == 0].merge(data.items, on="item_idx")
    labels = dict(zip(user["item_id"], user["split"]))
    assert (labels["100"], labels["10"], labels["9"]) == ("test", "val", "train")


def test_prepare_splits_each_user_temporally(prepared):
    inter = prepared.interactions
    u1 = inter[inter["user_idx"] == 0]
    assert list(u1["item_idx"]) == [0, 1, 2, 3, 4]
    assert list(u1["split"]) == ["train", "train", "train", "val", "test"]
    u4 = inter[inter["user_idx"] == 1]
    assert list(u4["item_idx"]) == [1, 0, 2, 3, 5]
    assert list(u4["split"]) == ["train", "train", "train", "val", "test"]


def test_prepare_keeps_the_earliest_of_repeated_interactions():
    rows = ratings("u", ["a", "b", "c", "d", "e"], [4, 4, 4, 4, 4]) + [
        {"user_id": "u", "item_id": "a", "rating": 5, "timestamp": 999}]
    raw = RawDataset("dup", pd.DataFrame(rows), item_table(["a", "b", "c", "d", "e"]))
    data = prepare(raw, min_rating=4, min_positives=5, split=SplitConfig(protocol="leave_last_out"))
    inter = data.interactions
    assert len(inter) == 5
    assert inter.loc[inter["item_idx"] == 0, "timestamp"].tolist() == [100]
    assert inter.loc[inter["item_idx"] == 4, "split"].tolist() == ["test"]


def test_prepare_treats_all_rows_as_positive_when_min_rating_is_none():
    rows = ratings("u", ["a", "b", "c"], [1, 2, 3])
    raw = RawDataset("implicit", pd.DataFrame(rows), item_table(["a", "b", "c"]))
    data = prepare(raw, min_rating=None, min_positives=3, split=SplitConfig(protocol="leave_last_out"))
    assert list(data.interactions["split"]) == ["train", "val", "test"]


def test_prepare_uses_a_given_split_as_is():
    rows = pd.DataFrame({"user_id": ["u", "u", "v"], "item_id": ["a", "b", "a"], "rating": [1.0, 1.0, 1.0],
                         "timestamp": [1, 2, 3], "split": ["test", "train", "val"]})
    data = prepare(RawDataset("given", rows, item_table(["a", "b"])), min_rating=4, min_positives=5,
                   split=SplitConfig())
    inter = data.interactions
    assert list(zip(inter["user_idx"], inter["item_idx"], inter["split"])) == [
        (0, 0, "test"), (0, 1, "train"), (1, 0, "val")]


def test_prepare_rejects_unknown_split_labels_and_items_without_records():
    rows = pd.DataFrame({"user_id": ["u"], "item_id": ["a"], "rating": [1.0], "timestamp": [1],
                         "split": ["holdout"]})
    with pytest.raises(DataFormatError, match="unknown split labels"):
        prepare(RawDataset("bad", rows, item_table(["a"])), None, 1, SplitConfig())
    with pytest.raises(DataFormatError, match="no item record"):
        prepare(RawDataset("bad", rows.drop(columns="split"), item_table(["b"])), None, 1, SplitConfig())


def test_dataset_counts_match_hand_counts(prepared):
    assert dataset_counts(prepared) == {
        "users": 2, "items": 6, "interactions": 10, "items_without_positives": 0, "items_with_image": 5,
        "items_without_image": 1,
        "interactions_train": 6, "users_with_train": 2, "interactions_val": 2, "users_with_val": 2,
        "cold_items_in_val": 1,  # d: both users' validation item, in no train row
        "interactions_test": 2, "users_with_test": 2,
        "cold_items_in_test": 2,  # e (u1's test) and f (u4's test) are in no train row
    }


def test_cold_test_items_are_those_outside_train_and_validation():
    """b is in v's validation and u's test: seen before test, so not cold in test (cold in validation)."""
    rows = pd.DataFrame({"user_id": ["u", "u", "v", "v"], "item_id": ["a", "b", "a", "b"], "rating": 1.0,
                         "timestamp": [1, 2, 3, 4], "split": ["train", "test", "train", "val"]})
    data = prepare(RawDataset("given", rows, item_table(["a", "b"])), min_rating=None, min_positives=1,
                   split=SplitConfig())
    counts = dataset_counts(data)
    assert (counts["cold_items_in_val"], counts["cold_items_in_test"]) == (1, 0)


def test_save_and_load_prepared_round_trip(prepared, tmp_path):
    save_prepared(prepared, tmp_path)
    loaded = load_prepared(tmp_path)
    pd.testing.assert_frame_equal(loaded.interactions, prepared.interactions, check_dtype=False)
    assert list(loaded.items["item_id"]) == list(prepared.items["item_id"])
    np.testing.assert_array_equal(loaded.features["vec"], prepared.features["vec"])


def test_prepare_counts_everything_it_drops(prepared):
    """21 rows read; 2 below 4 stars (u2's 3, u4's z); u3's repeated 'a'; u2 and u3 (4 distinct
    positives each, 8 in all) fall below five positives."""
    assert prepared.dropped == {"interactions_read": 21, "below_min_rating": 2, "repeated_user_item_pairs": 1,
                                "users_below_min_positives": 2, "positives_of_those_users": 8}
