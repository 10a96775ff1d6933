"""Align-MacridVAE adapter on a small folder in the release's layout."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vlm4rec.data import DataFormatError, prepare
from vlm4rec.datasets.macridvae import load_align_macridvae
from vlm4rec.splits import SplitConfig

N_ITEMS, DIM = 12, 768
ASINS = [f"B00{i:04d}X" for i in range(N_ITEMS)]
TRAIN = [(0, 0), (0, 1), (0, 10), (1, 2), (1, 3), (2, 4), (2, 5), (2, 11)]
VAL = [(0, 2), (1, 4), (2, 6)]
TEST = [(0, 3), (1, 10), (2, 7)]


def write_pairs(path: Path, pairs: list[tuple[int, int]], header: bool) -> None:
    lines = (["user,item"] if header else []) + [f"{u},{i}" for u, i in pairs]
    path.write_text("\n".join(lines) + "\n")


def make_release(root: Path, items_text: str | None = None) -> dict[str, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    write_pairs(root / "train.txt", TRAIN, header=True)
    write_pairs(root / "validation.txt", VAL, header=False)
    write_pairs(root / "test.txt", TEST, header=True)
    if items_text is None:
        items_text = "asin,item\n" + "".join(f"{a},{i}\n" for i, a in enumerate(ASINS))
    (root / "items.txt").write_text(items_text)
    (root / "users.txt").write_text("reviewerID,user\nRA,0\nRB,1\nRC,2\n")
    rng = np.random.default_rng(0)
    text = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    image = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    text[5] = 0.0
    image[[3, 11]] = 0.0
    np.save(root / "embed_text.npy", text)
    np.save(root / "embed_image.npy", image)
    return {"clip_title_text": text, "clip_image": image}


def test_release_read_as_is(tmp_path):
    arrays = make_release(tmp_path / "rel")
    raw = load_align_macridvae(tmp_path / "rel")
    inter = raw.interactions
    assert inter["split"].tolist() == ["train"] * 8 + ["val"] * 3 + ["test"] * 3
    assert inter["timestamp"].tolist() == list(range(14))  # file order, train then val then test
    assert list(zip(inter["user_id"], inter["item_id"])) == [
        (str(u), str(i)) for u, i in TRAIN + VAL + TEST]
    assert (inter["rating"] == 1.0).all()
    assert raw.items["item_id"].tolist() == [str(i) for i in range(N_ITEMS)]
    assert raw.items["title"].tolist() == ASINS  # no titles in the release
    for name, array in arrays.items():
        np.testing.assert_array_equal(raw.features[name], array)
    assert raw.counts == {"items_listed": 12, "users_listed": 3, "interactions_train": 8,
                          "interactions_val": 3, "interactions_test": 3, "titles_from_asin": 12,
                          "items_with_image_file": 0, "images_not_regular_file": 0,
                          "images_outside_folder": 0, "clip_title_text_zero_rows": 1,
                          "clip_image_zero_rows": 2}


@pytest.mark.parametrize("items_text", [
    "".join(f"{a}\t{i}\n" for i, a in enumerate(ASINS)),                 # no header, tab
    "".join(f"{i} {a}\n" for i, a in reversed(list(enumerate(ASINS)))),  # id first, spaces, shuffled
    "item_id;asin\n" + "".join(f"{i};{a}\n" for i, a in enumerate(ASINS)),
])
def test_items_file_separator_header_and_column_order_detected(tmp_path, items_text):
    make_release(tmp_path / "rel", items_text)
    raw = load_align_macridvae(tmp_path / "rel")
    assert raw.items["title"].tolist() == ASINS


def test_prepare_keeps_split_and_aligns_features(tmp_path):
    arrays = make_release(tmp_path / "rel")
    raw = load_align_macridvae(tmp_path / "rel")
    data = prepare(raw, min_rating=4, min_positives=5, split=SplitConfig(), universe="interacted")
    # the given split is used as is: no rating filter, no user filter
    assert len(data.interactions) == 14 and data.n_users == 3
    assert data.interactions.groupby("split").size().to_dict() == {"test": 3, "train": 8, "val": 3}
    # the universe is the interacted items: 8 and 9 are listed but never interacted with
    assert sorted(data.items["item_id"], key=int) == [str(i) for i in range(12) if i not in (8, 9)]
    for name, array in arrays.items():
        for row in data.items.itertuples():
            np.testing.assert_array_equal(data.features[name][row.item_idx], array[int(row.item_id)])
    zero = ~data.features["clip_image"].any(axis=1)
    assert sorted(data.items.loc[zero, "item_id"]) == ["11", "3"]
    test = data.interactions[data.interactions["split"] == "test"].merge(data.items, on="item_idx")
    assert sorted(test["item_id"]) == ["10", "3", "7"]


def test_meta_titles_and_asin_named_images(tmp_path):
    make_release(tmp_path / "rel")
    meta = tmp_path / "meta.jsonl"
    meta.write_text(json.dumps({"asin": ASINS[1], "title": "Red &amp; Blue Dress",
                                "category": ["Clothing", "Women"], "brand": "Acme",
                                "imageURLHighRes": ["http://h/1.jpg"]}) + "\n")
    images = tmp_path / "img"
    images.mkdir()
    (images / f"{ASINS[4]}.jpg").write_bytes(b"jpeg")
    raw = load_align_macridvae(tmp_path / "rel", images_dir=images, meta_path=meta)
    items = raw.items.set_index("item_id")
    assert items.loc["1", "title"] == "Red & Blue Dress"
    assert items.loc["1", "meta_text"] == "Categories: Clothing > Women. Store: Acme."
    assert items.loc["1", "image_url"] == "http://h/1.jpg"
    assert items.loc["0", "title"] == ASINS[0]
    assert items["has_image"].tolist() == [i == 4 for i in range(N_ITEMS)]
    assert items.loc["4", "image_path"] == str(images / f"{ASINS[4]}.jpg")
    assert (raw.counts["titles_from_asin"], raw.counts["items_missing_meta"]) == (11, 11)


def test_bad_release_files_are_format_errors(tmp_path):
    root = tmp_path / "rel"
    make_release(root)
    (root / "test.txt").write_text("user,item\n0,3\n1,x\n")
    with pytest.raises(DataFormatError) as err:
        load_align_macridvae(root)
    assert (err.value.path, err.value.line) == (str(root / "test.txt"), 3)

    make_release(root)
    (root / "validation.txt").write_text("0,12\n")
    with pytest.raises(DataFormatError, match="item ids outside 0..11"):
        load_align_macridvae(root)

    make_release(root)
    (root / "validation.txt").write_text("3,1\n")
    with pytest.raises(DataFormatError, match="user ids outside 0..2"):
        load_align_macridvae(root)

    make_release(root, "asin,item\nB1,0\nB2,2\n")
    with pytest.raises(DataFormatError, match="not exactly 0..n-1"):
        load_align_macridvae(root)

    make_release(root)
    np.save(root / "embed_image.npy", np.zeros((N_ITEMS - 1, DIM), np.float32))
    with pytest.raises(DataFormatError, match="expected shape"):
        load_align_macridvae(root)

    make_release(root)
    (root / "train.txt").unlink()
    with pytest.raises(DataFormatError, match="file not found"):
        load_align_macridvae(root)
