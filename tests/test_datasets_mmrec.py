"""MMRec adapter on a small folder in MMRec's format."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vlm4rec.data import DataFormatError, prepare
from vlm4rec.datasets.mmrec import load_mmrec
from vlm4rec.splits import SplitConfig

N_ITEMS = 6
# userID itemID rating timestamp x_label
ROWS = [(0, 0, 5, 100, 0), (0, 1, 4, 200, 0), (0, 2, 5, 300, 1), (0, 3, 3, 400, 2),
        (1, 1, 5, 150, 0), (1, 4, 2, 250, 0), (1, 0, 4, 350, 1), (1, 2, 5, 450, 2),
        (2, 4, 5, 120, 0), (2, 3, 5, 130, 1), (2, 1, 1, 140, 2)]


def write_inter(path: Path, rows: list[tuple],
                header: str = "userID\titemID\trating\ttimestamp\tx_label") -> None:
    path.write_text(header + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))


def make_release(root: Path) -> dict[str, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    write_inter(root / "baby.inter", ROWS)
    rng = np.random.default_rng(1)
    image = rng.normal(size=(N_ITEMS, 4096)).astype(np.float32)
    text = rng.normal(size=(N_ITEMS, 384)).astype(np.float32)
    np.save(root / "image_feat.npy", image)
    np.save(root / "text_feat.npy", text)
    return {"mmrec_image_feat": image, "mmrec_text_feat": text}


def test_x_label_mapping_and_counts(tmp_path):
    make_release(tmp_path)
    raw = load_mmrec(tmp_path, "baby")
    inter = raw.interactions
    assert inter["split"].tolist() == [{0: "train", 1: "val", 2: "test"}[r[4]] for r in ROWS]
    assert inter["timestamp"].tolist() == [r[3] for r in ROWS]
    assert inter["rating"].tolist() == [float(r[2]) for r in ROWS]
    assert list(zip(inter["user_id"], inter["item_id"])) == [(str(r[0]), str(r[1])) for r in ROWS]
    assert raw.items["item_id"].tolist() == [str(i) for i in range(N_ITEMS)]
    assert raw.items["title"].tolist() == [""] * N_ITEMS
    assert raw.items["image_url"].isna().all()
    assert raw.counts == {"interactions": 11, "items_with_features": 6, "interactions_train": 5,
                          "interactions_val": 3, "interactions_test": 3, "items_with_image_file": 0,
                          "images_not_regular_file": 0, "images_outside_folder": 0,
                          "mmrec_image_feat_zero_rows": 0, "mmrec_text_feat_zero_rows": 0}
    assert raw.name == "mmrec:baby"


def test_prepare_keeps_split_and_aligns_features(tmp_path):
    arrays = make_release(tmp_path)
    data = prepare(load_mmrec(tmp_path, "baby"), min_rating=4, min_positives=5, split=SplitConfig(),
                   universe="interacted")
    assert len(data.interactions) == len(ROWS)  # the given split: no rating or user filter
    assert data.interactions.groupby("split").size().to_dict() == {"test": 3, "train": 5, "val": 3}
    assert data.items["item_id"].tolist() == ["0", "1", "2", "3", "4"]  # item 5: no interaction
    for name, array in arrays.items():
        np.testing.assert_array_equal(data.features[name], array[:5])
    merged = data.interactions.merge(data.items, on="item_idx").merge(data.users, on="user_idx")
    got = sorted(zip(merged["user_id"], merged["item_id"], merged["split"]))
    want = sorted((str(r[0]), str(r[1]), ["train", "val", "test"][r[4]]) for r in ROWS)
    assert got == want


def test_meta_csv_titles_urls_and_images(tmp_path):
    make_release(tmp_path)
    meta = tmp_path / "meta.tsv"
    meta.write_text("itemID\tasin\ttitle\timUrl\n"
                    "0\tB0\tSoft &amp; Warm Blanket\thttp://h/0.jpg\n"
                    "2\tB2\tTeether\t\n"
                    "2\tB2\tduplicate row\thttp://h/dup.jpg\n")
    images = tmp_path / "img"
    images.mkdir()
    (images / "2.jpg").write_bytes(b"jpeg")
    raw = load_mmrec(tmp_path, "baby", meta_csv=meta, images_dir=images)
    items = raw.items.set_index("item_id")
    assert items["title"].tolist() == ["Soft & Warm Blanket", "", "Teether", "", "", ""]
    assert items["image_url"].tolist() == ["http://h/0.jpg", None, None, None, None, None]
    assert items["has_image"].tolist() == [False, False, True, False, False, False]
    assert (raw.counts["items_missing_meta"], raw.counts["meta_rows_duplicate"]) == (4, 1)

    comma = tmp_path / "meta.csv"
    comma.write_text("asin,itemID,title\nB1,1,Bib\n")
    raw = load_mmrec(tmp_path, "baby", meta_csv=comma)
    assert raw.items["title"].tolist() == ["", "Bib", "", "", "", ""]
    assert raw.items["image_url"].isna().all()


def test_bad_files_are_format_errors(tmp_path):
    make_release(tmp_path)
    write_inter(tmp_path / "baby.inter", ROWS[:2] + [(0, 2, 5, 300, 3)])
    with pytest.raises(DataFormatError, match="x_label") as err:
        load_mmrec(tmp_path, "baby")
    assert err.value.line == 4

    write_inter(tmp_path / "baby.inter", [(0, "x", 5, 1, 0)])
    with pytest.raises(DataFormatError, match="'itemID' is not a non-negative integer"):
        load_mmrec(tmp_path, "baby")

    write_inter(tmp_path / "baby.inter", ROWS, header="userID\titemID\trating\tx_label\textra")
    with pytest.raises(DataFormatError, match=r"missing columns \['timestamp'\]"):
        load_mmrec(tmp_path, "baby")

    write_inter(tmp_path / "baby.inter", ROWS + [(0, 6, 5, 1, 0)])
    with pytest.raises(DataFormatError, match="itemID 6 has no feature row"):
        load_mmrec(tmp_path, "baby")

    make_release(tmp_path)
    np.save(tmp_path / "text_feat.npy", np.zeros((N_ITEMS + 1, 384), np.float32))
    with pytest.raises(DataFormatError, match="disagree"):
        load_mmrec(tmp_path, "baby")

    make_release(tmp_path)
    (tmp_path / "meta.csv").write_text("itemID,title\n9,far away\n")
    with pytest.raises(DataFormatError, match="not an integer in 0..5"):
        load_mmrec(tmp_path, "baby", meta_csv=tmp_path / "meta.csv")
    with pytest.raises(DataFormatError, match="file not found"):
        load_mmrec(tmp_path, "sports")
