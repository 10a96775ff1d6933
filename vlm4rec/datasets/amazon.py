"""Amazon Reviews 2023 (McAuley Lab): ``{Category}.jsonl[.gz]`` + ``meta_{Category}.jsonl[.gz]``.

Reviews: one JSON object a line with ``user_id``, ``parent_asin`` (the item), ``rating`` (1-5) and
``timestamp`` in **milliseconds** (converted to seconds here). Metadata: ``parent_asin``, ``title``,
``categories`` / ``store`` / ``features`` (lists and strings) and ``images``: a list of
``{thumb, large, hi_res, variant}``. The metadata reader also accepts the 2018 release's keys (``asin``,
``category``, ``brand``, ``feature``, ``imageURLHighRes`` / ``imageURL``) so that other Amazon-derived
releases can take their titles from it.

Decisions (all counted in ``RawDataset.counts``):
- Files are streamed line by line (``gzip.open`` for ``.gz``); metadata rows are kept only for items
  that survive the k-core, so a category's multi-GB metadata never sits in memory.
- A repeated (user, item) pair keeps its earliest review (the rule :func:`vlm4rec.data.prepare`
  applies), before the k-core, so that the core counts distinct items.
- ``min_rating`` (optional) drops reviews below it *before* the k-core (the core is then one of
  positives); without it the core is over all reviews and ``prepare``'s ``min_rating`` acts afterwards.
- An item that has reviews but no metadata row stays in the universe with an empty title, no image
  URL and no metadata text (``items_missing_meta``): dropping it would change the universe silently.
- Titles and texts are cleaned of page-script junk (HTML tags, entities, ``var x = ...;``,
  ``P.when(...)`` fragments), whitespace collapsed.
- ``image_url``: the ``MAIN`` image variant (else the first image), its ``large`` URL, falling back to
  ``hi_res`` then ``thumb``; ``image_path``: ``<images_dir>/<parent_asin>.jpg`` when that file exists.
"""
from __future__ import annotations

import gzip
import html
import json
import math
import re
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from vlm4rec.data import DataFormatError, RawDataset
from vlm4rec.download import OutsideFolderPolicy, attach_image_paths
from vlm4rec.download import download_images as fetch_images

BadLinePolicy = Literal["error", "skip"]

_SCRIPT_BLOCK = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")
_JS_STATEMENT = re.compile(
    r"(?:\bvar\s+[\w$]+\s*=|\bP\.when\s*\(|\bfunction\s*\(|\b(?:window|document)\.[\w$]+)[^;]*;")
_JS_CLOSER = re.compile(r"\}\s*\)+\s*;?")
_SPACE = re.compile(r"\s+")


def clean_text(text: Any) -> str:
    """Readable text from a scraped field: entities unescaped, tags and script fragments removed."""
    if not isinstance(text, str):
        return ""
    text = html.unescape(text)
    text = _SCRIPT_BLOCK.sub(" ", text)
    text = _TAG.sub(" ", text)
    text = _JS_STATEMENT.sub(" ", text)
    text = _JS_CLOSER.sub(" ", text)
    return _SPACE.sub(" ", text).strip()


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(
        path, encoding="utf-8")


def iter_json_lines(path: str | Path, on_bad_line: BadLinePolicy,
                    counts: dict[str, int], prefix: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each JSON-object line; count blank and skipped bad lines.

    A line that is not a JSON object raises :class:`DataFormatError` (``on_bad_line="error"``) or is
    counted as ``{prefix}_bad_lines`` (``"skip"``).
    """
    path = Path(path)
    counts.setdefault(f"{prefix}_blank_lines", 0)
    counts.setdefault(f"{prefix}_bad_lines", 0)
    number = 0
    try:
        with _open_text(path) as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    counts[f"{prefix}_blank_lines"] += 1
                    continue
                try:
                    record = json.loads(line)
                    if not isinstance(record, dict):
                        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
                except ValueError as err:
                    if on_bad_line == "error":
                        raise DataFormatError(path, number, f"malformed JSON line: {err}") from err
                    counts[f"{prefix}_bad_lines"] += 1
                    continue
                yield number, record
    except (EOFError, gzip.BadGzipFile, UnicodeDecodeError) as err:
        raise DataFormatError(path, number + 1, f"unreadable file: {err}") from err


def _review_fields(record: dict[str, Any]) -> tuple[str, str, float, int]:
    """(user, item, rating, timestamp seconds) of one review; ValueError names what is wrong."""
    user, item = record.get("user_id"), record.get("parent_asin")
    rating, stamp = record.get("rating"), record.get("timestamp")
    if not isinstance(user, str) or not user:
        raise ValueError("missing or empty 'user_id'")
    if not isinstance(item, str) or not item:
        raise ValueError("missing or empty 'parent_asin'")
    if isinstance(rating, bool) or not isinstance(rating, (int, float)) or math.isnan(rating):
        raise ValueError(f"'rating' is not a number: {rating!r}")
    if isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or stamp != stamp // 1:
        raise ValueError(f"'timestamp' is not an integer of milliseconds: {stamp!r}")
    return user, item, float(rating), int(stamp) // 1000


def _coded(codes: array, keys: dict[str, int]) -> pd.Categorical:
    """Categorical strings from integer codes and the key -> code dict that assigned them."""
    return pd.Categorical.from_codes(np.frombuffer(codes, dtype=np.int64),
                                     categories=pd.Index(list(keys), dtype=object))


def read_reviews(path: str | Path, on_bad_line: BadLinePolicy,
                 counts: dict[str, int]) -> pd.DataFrame:
    """Reviews as user_id, item_id (categorical), rating, timestamp (seconds), in file order.

    Ids are stored once each and referenced by integer codes, so that a category with tens of
    millions of reviews fits in memory (a Python string per review would not).
    """
    user_keys: dict[str, int] = {}
    item_keys: dict[str, int] = {}
    users, items, ratings, stamps = array("q"), array("q"), array("d"), array("q")
    for number, record in iter_json_lines(path, on_bad_line, counts, "reviews"):
        try:
            user, item, rating, stamp = _review_fields(record)
        except ValueError as err:
            if on_bad_line == "error":
                raise DataFormatError(path, number, str(err)) from err
            counts["reviews_bad_lines"] += 1
            continue
        users.append(user_keys.setdefault(user, len(user_keys)))
        items.append(item_keys.setdefault(item, len(item_keys)))
        ratings.append(rating)
        stamps.append(stamp)
    counts["reviews_read"] = len(users)
    return pd.DataFrame({"user_id": _coded(users, user_keys), "item_id": _coded(items, item_keys),
                         "rating": np.frombuffer(ratings, dtype=np.float64),
                         "timestamp": np.frombuffer(stamps, dtype=np.int64)})


def k_core_filter(inter: pd.DataFrame, k: int) -> pd.DataFrame:
    """Iteratively keep users and items with at least ``k`` interactions each (rows are pairs)."""
    while k > 1 and len(inter):
        user_n = inter.groupby("user_id", observed=True)["item_id"].transform("size")
        item_n = inter.groupby("item_id", observed=True)["user_id"].transform("size")
        keep = (user_n >= k) & (item_n >= k)
        if keep.all():
            break
        inter = inter[keep]
    return inter


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _image_url(record: dict[str, Any]) -> str | None:
    """The main image's large URL (2023 ``images``), else the 2018 release's first high-res URL."""
    images = [img for img in record.get("images") or [] if isinstance(img, dict)]
    if images:
        main = next((img for img in images if img.get("variant") == "MAIN"), images[0])
        for size in ("large", "hi_res", "thumb"):
            if isinstance(main.get(size), str) and main[size]:
                return main[size]
    for key in ("imageURLHighRes", "imageURL"):
        urls = _as_list(record.get(key))
        if urls:
            return urls[0]
    return None


def item_record(record: dict[str, Any]) -> dict[str, Any]:
    """One metadata line as an item row: title, genres (categories), meta_text, image_url."""
    categories = [clean_text(c) for c in _as_list(record.get("categories") or record.get("category"))]
    categories = [c for c in categories if c]
    store = clean_text(record.get("store") or record.get("brand"))
    features = [clean_text(f) for f in _as_list(record.get("features") or record.get("feature"))]
    parts = []
    if categories:
        parts.append("Categories: " + " > ".join(categories) + ".")
    if store:
        parts.append(f"Store: {store}.")
    if any(features):
        parts.append("Features: " + "; ".join(f for f in features if f) + ".")
    return {"title": clean_text(record.get("title")), "genres": "|".join(categories),
            "meta_text": " ".join(parts), "image_url": _image_url(record)}


def read_item_meta(path: str | Path, wanted: set[str], on_bad_line: BadLinePolicy,
                   counts: dict[str, int]) -> pd.DataFrame:
    """Item rows (item_id + :func:`item_record` columns) for the ``wanted`` ASINs of a metadata file.

    The id is ``parent_asin`` (2023) or ``asin`` (2018). Rows for other items are counted as
    ``meta_rows_unused``, repeated rows for one item keep the first (``meta_rows_duplicate``).
    """
    rows: dict[str, dict[str, Any]] = {}
    counts.update(meta_rows_read=0, meta_rows_unused=0, meta_rows_duplicate=0)
    for number, record in iter_json_lines(path, on_bad_line, counts, "meta"):
        item = record.get("parent_asin") or record.get("asin")
        if not isinstance(item, str) or not item:
            if on_bad_line == "error":
                raise DataFormatError(path, number, "missing 'parent_asin' / 'asin'")
            counts["meta_bad_lines"] += 1
            continue
        counts["meta_rows_read"] += 1
        if item not in wanted:
            counts["meta_rows_unused"] += 1
        elif item in rows:
            counts["meta_rows_duplicate"] += 1
        else:
            rows[item] = {"item_id": item, **item_record(record)}
    return pd.DataFrame(list(rows.values()),
                        columns=["item_id", "title", "genres", "meta_text", "image_url"])


def items_with_meta(item_ids: list[str], meta: pd.DataFrame, counts: dict[str, int]) -> pd.DataFrame:
    """One row per item id, metadata where present, empty title / no URL where not (counted)."""
    ids = pd.Series(item_ids, dtype=object)
    items = pd.DataFrame({"item_id": ids}).merge(meta.astype({"item_id": object}), on="item_id",
                                                  how="left")
    missing = items["title"].isna()
    counts["items_missing_meta"] = int(missing.sum())
    for col in ("title", "genres", "meta_text"):
        items[col] = items[col].fillna("")
    items["image_url"] = items["image_url"].astype(object).where(items["image_url"].notna(), None)
    counts["items_with_image_url"] = int(items["image_url"].notna().sum())
    counts["items_without_title"] = int((items["title"] == "").sum())
    return items


def _download_main_images(items: pd.DataFrame, images_dir: str | Path,
                          counts: dict[str, int]) -> None:
    """Fetch each item's ``image_url`` into ``images_dir``; add the report's counts as ``images_*``."""
    with_url = items[items["image_url"].notna()]
    report = fetch_images(dict(zip(with_url["item_id"], with_url["image_url"])), images_dir)
    counts.update({f"images_{key}": n for key, n in report.counts().items()})
    if report.failures:
        report.write_failures(Path(images_dir) / "download_failures.csv")


def load_amazon2023(reviews_path: str | Path, meta_path: str | Path,
                    images_dir: str | Path | None = None, k_core: int = 5,
                    min_rating: float | None = None, on_bad_line: BadLinePolicy = "error",
                    download_images: bool = False,
                    images_outside_folder: OutsideFolderPolicy = "refuse") -> RawDataset:
    """Read one Amazon Reviews 2023 category into a :class:`RawDataset` (see the module docstring).

    ``k_core``: users and items keep at least this many distinct interactions (1 or less: no filter).
    ``on_bad_line``: ``"error"`` raises :class:`DataFormatError` with file and line, ``"skip"`` counts
    the line and goes on. ``download_images``: first fetch the kept items' main images into
    ``images_dir`` (resumable; counts ``images_*``, failures in ``images_dir/download_failures.csv``).
    ``images_outside_folder``: see :func:`vlm4rec.download.attach_image_paths`.
    """
    if on_bad_line not in ("error", "skip"):
        raise ValueError(f"on_bad_line must be 'error' or 'skip', not {on_bad_line!r}")
    if download_images and images_dir is None:
        raise ValueError("download_images=True needs an images_dir to download into")
    counts: dict[str, int] = {}
    inter = read_reviews(reviews_path, on_bad_line, counts)
    if min_rating is not None:
        below = inter["rating"] < min_rating
        counts["reviews_below_min_rating"] = int(below.sum())
        inter = inter[~below]
    deduped = inter.sort_values(["user_id", "timestamp", "item_id"], kind="mergesort").drop_duplicates(
        ["user_id", "item_id"], keep="first")
    counts["duplicate_pairs_dropped"] = len(inter) - len(deduped)
    cored = k_core_filter(deduped, k_core).reset_index(drop=True)
    counts["k_core_removed"] = len(deduped) - len(cored)
    cored = cored.astype({"user_id": object, "item_id": object})
    counts.update(interactions=len(cored), users=int(cored["user_id"].nunique()),
                  items=int(cored["item_id"].nunique()))
    item_ids = sorted(set(cored["item_id"]))
    meta = read_item_meta(meta_path, set(item_ids), on_bad_line, counts)
    items = items_with_meta(item_ids, meta, counts)
    if download_images and images_dir is not None:
        _download_main_images(items, images_dir, counts)
    items = attach_image_paths(items, images_dir, counts, outside_folder=images_outside_folder)
    counts["items_with_image_file"] = int(items["has_image"].sum())
    name = Path(reviews_path).name.split(".")[0]
    return RawDataset(name=f"amazon2023:{name}", interactions=cored, items=items, counts=counts)
