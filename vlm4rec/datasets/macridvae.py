"""The Align-MacridVAE release (Kaggle) that the VLM4Rec paper used: Amazon Clothing, Shoes and Jewelry
with CLIP ViT-L/14 item embeddings.

Folder layout::

    train.txt, validation.txt, test.txt   CSV ``user,item`` (integer ids; an optional header line)
    items.txt                             ASIN and integer item id (separator and header detected)
    users.txt                             reviewer id and integer user id (optional; checks user ids)
    embed_text.npy, embed_image.npy       (n_items, 768) float, row = item id, all-zero row = missing

Decisions (counted in ``RawDataset.counts``):
- The release's split is used as is (``split`` = train / val / test); every pair is a positive
  (``rating`` 1.0).
- The release has no timestamps. ``timestamp`` is the line's position in the concatenation
  train, validation, test (0, 1, 2, ...): a monotone order within and across the files, so that
  recency features are defined and validation / test come after train. It is *not* time.
- Features keep their truthful names: ``clip_title_text`` (CLIP text embedding of the title) and
  ``clip_image`` (CLIP image embedding); all-zero rows stay zero (the representation layer counts
  them as missing).
- The release has no titles: ``title`` is the ASIN unless ``meta_path`` (an Amazon metadata JSON-lines
  file, 2018 ``asin`` or 2023 ``parent_asin`` keys) gives one (``titles_from_asin`` counts the rest).
- Images are optional: ``<images_dir>/<ASIN>.jpg``.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from vlm4rec.data import DataFormatError, RawDataset
from vlm4rec.datasets.amazon import items_with_meta, read_item_meta
from vlm4rec.download import OutsideFolderPolicy, attach_image_paths

SPLIT_FILES = {"train": "train.txt", "val": "validation.txt", "test": "test.txt"}
FEATURE_FILES = {"clip_title_text": "embed_text.npy", "clip_image": "embed_image.npy"}
_INT = re.compile(r"^\d+$")


def _separator(line: str) -> str | None:
    """The field separator of a line: tab, comma or semicolon, else None (runs of whitespace)."""
    return next((sep for sep in ("\t", ",", ";") if sep in line), None)


def _split_fields(line: str, sep: str | None) -> list[str]:
    return [field.strip() for field in line.strip().split(sep)]


def _read_rows(path: Path) -> tuple[list[str] | None, list[tuple[int, list[str]]]]:
    """(header or None, [(line number, fields)]) of a small delimited text file.

    The first line is a header when it has no integer field while the second line has one.
    """
    if not path.is_file():
        raise DataFormatError(path, None, "file not found")
    lines = [(n, line) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if line.strip()]
    if not lines:
        raise DataFormatError(path, None, "empty file")
    sep = _separator(lines[0][1])
    rows = [(n, _split_fields(line, sep)) for n, line in lines]
    first_has_int = any(_INT.match(f) for f in rows[0][1])
    second_has_int = len(rows) > 1 and any(_INT.match(f) for f in rows[1][1])
    if not first_has_int and (second_has_int or len(rows) == 1):
        return [f.lower() for f in rows[0][1]], rows[1:]
    return None, rows


def _int_column(path: Path, rows: list[tuple[int, list[str]]], col: int) -> np.ndarray:
    """Column ``col`` as int64; a missing or non-integer field is a :class:`DataFormatError`."""
    values = np.empty(len(rows), dtype=np.int64)
    for k, (number, fields) in enumerate(rows):
        if col >= len(fields) or not _INT.match(fields[col]):
            raise DataFormatError(path, number, f"expected an integer in column {col + 1}: {fields}")
        values[k] = int(fields[col])
    return values


def _named_column(header: list[str] | None, names: tuple[str, ...]) -> int | None:
    if header is None:
        return None
    return next((header.index(n) for n in names if n in header), None)


def read_pairs(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(user ids, item ids) of a split file: CSV ``user,item`` with an optional header line."""
    header, rows = _read_rows(path)
    user_col = _named_column(header, ("user", "user_id", "userid"))
    item_col = _named_column(header, ("item", "item_id", "itemid"))
    if header is not None and (user_col is None or item_col is None):
        raise DataFormatError(path, 1, f"header {header} names no 'user' and 'item' columns")
    return (_int_column(path, rows, 0 if user_col is None else user_col),
            _int_column(path, rows, 1 if item_col is None else item_col))


def read_id_table(path: Path, id_names: tuple[str, ...], key_names: tuple[str, ...]) -> pd.Series:
    """A two-column id table (original key and dense integer id) as ``key`` strings indexed by id.

    Columns come from the header names when there is a header, else the id column is the one whose
    values are exactly 0..n-1 and the key is the other. The ids must be exactly 0..n-1, since they
    index the embedding rows.
    """
    header, rows = _read_rows(path)
    if any(len(fields) < 2 for _, fields in rows):
        number = next(n for n, fields in rows if len(fields) < 2)
        raise DataFormatError(path, number, "expected two columns (original id and integer id)")
    id_col = _named_column(header, id_names)
    key_col = _named_column(header, key_names)
    n_cols = min(len(fields) for _, fields in rows)
    if id_col is None:
        dense = [c for c in range(n_cols) if _is_dense_range(rows, c)]
        if len(dense) != 1:
            raise DataFormatError(path, None, "cannot tell the integer id column from the original "
                                  f"id column (columns that are exactly 0..n-1: {dense})")
        id_col = dense[0]
    if key_col is None:
        key_col = next(c for c in range(n_cols) if c != id_col)
    ids = _int_column(path, rows, id_col)
    if not np.array_equal(np.sort(ids), np.arange(len(ids))):
        raise DataFormatError(path, None, "integer ids are not exactly 0..n-1")
    return pd.Series([fields[key_col] for _, fields in rows], index=ids).sort_index()


def _is_dense_range(rows: list[tuple[int, list[str]]], col: int) -> bool:
    fields = [f[col] for _, f in rows]
    if not all(_INT.match(f) for f in fields):
        return False
    return sorted(int(f) for f in fields) == list(range(len(fields)))


def _load_feature(path: Path, n_items: int) -> np.ndarray:
    if not path.is_file():
        raise DataFormatError(path, None, "file not found")
    array = np.load(path)
    if array.ndim != 2 or array.shape[0] != n_items:
        raise DataFormatError(path, None, f"expected shape ({n_items}, d), got {array.shape}")
    return array.astype(np.float32, copy=False)


def _check_ids(path: Path, ids: np.ndarray, n: int, what: str) -> None:
    bad = (ids < 0) | (ids >= n)
    if bad.any():
        raise DataFormatError(path, None, f"{int(bad.sum())} {what} ids outside 0..{n - 1}, "
                              f"e.g. {ids[bad][:5].tolist()}")


def load_align_macridvae(root: str | Path, images_dir: str | Path | None = None,
                         meta_path: str | Path | None = None,
                         images_outside_folder: OutsideFolderPolicy = "refuse") -> RawDataset:
    """Read the Align-MacridVAE release folder ``root`` (see the module docstring);
    ``images_outside_folder``: see :func:`vlm4rec.download.attach_image_paths`."""
    root = Path(root)
    asins = read_id_table(root / "items.txt", ("item", "item_id", "itemid", "id"),
                          ("asin", "item_asin", "org_id", "original_id"))
    users_file = root / "users.txt"
    n_users = (len(read_id_table(users_file, ("user", "user_id", "userid", "id"),
                                 ("reviewerid", "reviewer_id", "org_id", "original_id")))
               if users_file.is_file() else None)
    counts: dict[str, int] = {"items_listed": len(asins)}
    parts, offset = [], 0
    for split, file_name in SPLIT_FILES.items():
        users, items = read_pairs(root / file_name)
        _check_ids(root / file_name, items, len(asins), "item")
        if n_users is not None:
            _check_ids(root / file_name, users, n_users, "user")
        parts.append(pd.DataFrame({"user_id": users.astype(str).astype(object),
                                   "item_id": items.astype(str).astype(object), "rating": 1.0,
                                   "timestamp": np.arange(offset, offset + len(users), dtype=np.int64),
                                   "split": split}))
        offset += len(users)
        counts[f"interactions_{split}"] = len(users)
    if n_users is not None:
        counts["users_listed"] = n_users

    items = attach_image_paths(_describe(asins, meta_path, counts), images_dir, counts, key="asin",
                               outside_folder=images_outside_folder)
    counts["items_with_image_file"] = int(items["has_image"].sum())
    features = {name: _load_feature(root / file_name, len(items))
                for name, file_name in FEATURE_FILES.items()}
    for name, array in features.items():
        counts[f"{name}_zero_rows"] = int((~array.any(axis=1)).sum())
    return RawDataset(name="align_macridvae", interactions=pd.concat(parts, ignore_index=True),
                      items=items, features=features, counts=counts)


def _describe(asins: pd.Series, meta_path: str | Path | None, counts: dict[str, int]) -> pd.DataFrame:
    """Item rows (item_id = release id, asin, title ...): metadata by ASIN when ``meta_path`` is given,
    the ASIN as title where there is no title."""
    if meta_path is None:
        items = pd.DataFrame({"asin": asins.to_numpy(dtype=object), "title": ""})
    else:
        meta = read_item_meta(meta_path, set(asins), "error", counts)
        items = items_with_meta(asins.tolist(), meta, counts).rename(columns={"item_id": "asin"})
    items.insert(0, "item_id", asins.index.astype(str).astype(object))
    no_title = items["title"] == ""
    items["title"] = items["title"].where(~no_title, items["asin"])
    counts["titles_from_asin"] = int(no_title.sum())
    return items
