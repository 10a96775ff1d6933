"""MMRec's preprocessed Amazon datasets (Baby, Sports, Clothing, ...) in the MMRec framework's format.

Folder layout (``root``)::

    {name}.inter      TSV with a header: userID, itemID, rating, timestamp (seconds), x_label
                      (0 = train, 1 = validation, 2 = test); ids are dense integers
    image_feat.npy    (n_items, 4096) CNN image features MMRec ships (VGG fc7-style), row = itemID
    text_feat.npy     (n_items, 384) sentence-transformer embeddings of the item text, row = itemID

The features keep names that say whose they are: ``mmrec_image_feat`` and ``mmrec_text_feat``.
The split (``x_label``) is used as is. MMRec ships no titles: an optional item metadata CSV
(``meta_csv``; comma or tab separated, columns ``itemID`` and any of ``asin``, ``title``,
``imUrl`` / ``image_url``) supplies titles and image URLs for grounding; items without a row keep
an empty title (``items_missing_meta``). Images: ``<images_dir>/<itemID>.jpg`` when present.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vlm4rec.data import DataFormatError, RawDataset
from vlm4rec.datasets.amazon import clean_text, items_with_meta
from vlm4rec.download import OutsideFolderPolicy, attach_image_paths

INTER_COLUMNS = ["userID", "itemID", "rating", "timestamp", "x_label"]
X_LABELS = {0: "train", 1: "val", 2: "test"}
FEATURE_FILES = {"mmrec_image_feat": "image_feat.npy", "mmrec_text_feat": "text_feat.npy"}
URL_COLUMNS = ("imUrl", "image_url")


def _first_bad_row(path: Path, frame: pd.DataFrame, bad: pd.Series, reason: str) -> DataFormatError:
    """A :class:`DataFormatError` at the first bad row (line = row + 2: header, 1-based)."""
    row = int(np.flatnonzero(bad.to_numpy())[0])
    return DataFormatError(path, row + 2, f"{reason}: {frame.iloc[row].to_dict()}")


def read_inter(path: Path) -> pd.DataFrame:
    """The ``.inter`` file as user_id, item_id (str), rating, timestamp, split."""
    if not path.is_file():
        raise DataFormatError(path, None, "file not found")
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    missing = [c for c in INTER_COLUMNS if c not in frame.columns]
    if missing:
        raise DataFormatError(path, 1, f"missing columns {missing}; header is {list(frame.columns)}")
    numbers = {c: pd.to_numeric(frame[c], errors="coerce") for c in INTER_COLUMNS}
    for col in ("userID", "itemID", "timestamp", "x_label"):
        bad = numbers[col].isna() | (numbers[col] % 1 != 0) | (numbers[col] < 0)
        if bad.any():
            raise _first_bad_row(path, frame, bad, f"'{col}' is not a non-negative integer")
    if numbers["rating"].isna().any():
        raise _first_bad_row(path, frame, numbers["rating"].isna(), "'rating' is not a number")
    labels = numbers["x_label"].astype(np.int64)
    bad_label = ~labels.isin(list(X_LABELS))
    if bad_label.any():
        raise _first_bad_row(path, frame, bad_label, "'x_label' is not 0, 1 or 2")
    return pd.DataFrame({"user_id": numbers["userID"].astype(np.int64).astype(str).astype(object),
                         "item_id": numbers["itemID"].astype(np.int64).astype(str).astype(object),
                         "rating": numbers["rating"].astype(np.float64),
                         "timestamp": numbers["timestamp"].astype(np.int64),
                         "split": labels.map(X_LABELS)})


def read_meta_csv(path: Path, n_items: int, counts: dict[str, int]) -> pd.DataFrame:
    """Item rows (item_id, title, image_url; no genres or metadata text) from an item metadata CSV
    (comma or tab separated); a repeated itemID keeps its first row."""
    with open(path, encoding="utf-8") as handle:
        sep = "\t" if "\t" in handle.readline() else ","
    meta = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    if "itemID" not in meta.columns:
        raise DataFormatError(path, 1, f"no 'itemID' column; header is {list(meta.columns)}")
    ids = pd.to_numeric(meta["itemID"], errors="coerce")
    bad = ids.isna() | (ids % 1 != 0) | (ids < 0) | (ids >= n_items)
    if bad.any():
        raise _first_bad_row(path, meta, bad, f"'itemID' is not an integer in 0..{n_items - 1}")
    url_col = next((c for c in URL_COLUMNS if c in meta.columns), None)
    out = pd.DataFrame({
        "item_id": ids.astype(np.int64).astype(str).astype(object),
        "title": meta["title"].map(clean_text) if "title" in meta else "",
        "genres": "", "meta_text": "",
        "image_url": meta[url_col].where(meta[url_col] != "", None) if url_col else None})
    counts["meta_rows_duplicate"] = int(out["item_id"].duplicated().sum())
    return out.drop_duplicates("item_id", keep="first")


def load_mmrec(root: str | Path, name: str, meta_csv: str | Path | None = None,
               images_dir: str | Path | None = None,
               images_outside_folder: OutsideFolderPolicy = "refuse") -> RawDataset:
    """Read MMRec dataset ``name`` (e.g. ``baby``: ``baby.inter``) from ``root`` (module docstring);
    ``images_outside_folder``: see :func:`vlm4rec.download.attach_image_paths`."""
    root = Path(root)
    inter = read_inter(root / f"{name}.inter")
    features = {}
    for feature, file_name in FEATURE_FILES.items():
        path = root / file_name
        if not path.is_file():
            raise DataFormatError(path, None, "file not found")
        features[feature] = np.load(path).astype(np.float32, copy=False)
    shapes = {f: a.shape for f, a in features.items()}
    n_items = features["mmrec_image_feat"].shape[0]
    if any(len(s) != 2 or s[0] != n_items for s in shapes.values()):
        raise DataFormatError(root, None, f"feature files disagree or are not 2-D: {shapes}")
    max_item = int(inter["item_id"].astype(np.int64).max()) if len(inter) else -1
    if max_item >= n_items:
        raise DataFormatError(root / f"{name}.inter", None,
                              f"itemID {max_item} has no feature row (features have {n_items} rows)")

    counts: dict[str, int] = {"interactions": len(inter), "items_with_features": n_items}
    counts.update({f"interactions_{s}": int((inter["split"] == s).sum()) for s in X_LABELS.values()})
    ids = np.arange(n_items).astype(str).tolist()
    if meta_csv is None:
        items = pd.DataFrame({"item_id": pd.Series(ids, dtype=object), "title": "", "image_url": None})
    else:
        items = items_with_meta(ids, read_meta_csv(Path(meta_csv), n_items, counts), counts)
    items = attach_image_paths(items, images_dir, counts, outside_folder=images_outside_folder)
    counts["items_with_image_file"] = int(items["has_image"].sum())
    for feature, array in features.items():
        counts[f"{feature}_zero_rows"] = int((~array.any(axis=1)).sum())
    return RawDataset(name=f"mmrec:{name}", interactions=inter, items=items, features=features,
                      counts=counts)
