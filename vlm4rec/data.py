"""Prepared dataset tables: the one schema every source adapter produces and every stage reads.

A source adapter (``vlm4rec.datasets.*``) returns a :class:`RawDataset` keyed by the source's own ids;
:func:`prepare` turns it into a :class:`PreparedData` with dense indices, implicit positives, the user
filter and a split, and :func:`save_prepared` / :func:`load_prepared` move it through Parquet so that
later stages never re-read the raw files.

Prepared tables
---------------
``items``         item_idx (int64, 0..n-1), item_id (str), title (str), year (Int64, nullable),
                  genres (str, ``|``-joined, may be empty), meta_text (str: genres or categories as
                  readable text), image_path (str or None), has_image (bool), image_url (str or None)
``users``         user_idx (int64, 0..m-1), user_id (str)
``interactions``  user_idx, item_idx (int64), timestamp (int64, seconds), rating (float32),
                  split (str: ``train`` / ``val`` / ``test``)
``features``      optional precomputed item features, ``name -> (n_items, d)`` float32, rows aligned
                  to item_idx; an all-zero row means "missing" (e.g. the Align-MacridVAE CLIP release)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

import numpy as np
import pandas as pd

from vlm4rec.errors import StudyError
from vlm4rec.splits import SPLITS, SplitConfig, assign_split
from vlm4rec.stage_outputs import read_output

ITEM_COLUMNS = ["item_id", "title", "year", "genres", "meta_text", "image_path", "has_image", "image_url"]
Universe = Literal["catalogue", "interacted"]
UNIVERSES: tuple[str, ...] = ("catalogue", "interacted")


class DataFormatError(StudyError, ValueError):
    """A source file does not have the documented format; the message names file and line."""

    def __init__(self, path: str | Path, line: int | None, reason: str):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")
        self.path, self.line, self.reason = str(path), line, reason


@dataclass
class RawDataset:
    """What a source adapter returns, in the source's own ids.

    interactions: user_id (str), item_id (str), rating (float), timestamp (int64 seconds), and an
    optional ``split`` column when the source ships its own split (then it is used as is).
    items: :data:`ITEM_COLUMNS` (missing optional columns are filled by :func:`prepare`).
    features: name -> array aligned to ``items`` row order.
    """

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame
    features: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class PreparedData:
    """Dense-indexed tables of one prepared dataset (see module docstring)."""

    items: pd.DataFrame
    users: pd.DataFrame
    interactions: pd.DataFrame
    features: dict[str, np.ndarray] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)  # what preparation removed, and why

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)


def _complete_items(items: pd.DataFrame) -> pd.DataFrame:
    """Fill optional item columns with their documented empty values, in schema order."""
    items = items.copy()
    defaults = {"title": "", "year": pd.NA, "genres": "", "meta_text": "", "image_path": None,
                "image_url": None}
    for col, default in defaults.items():
        if col not in items:
            items[col] = default
    if "has_image" not in items:
        items["has_image"] = items["image_path"].notna()
    items["item_id"] = items["item_id"].astype(str)
    items["year"] = items["year"].astype("Int64")
    items["has_image"] = items["has_image"].astype(bool)
    for col in ("title", "genres", "meta_text"):
        items[col] = items[col].fillna("").astype(str)
    return items[ITEM_COLUMNS]


def id_order(ids: Iterable[str]) -> list[str]:
    """The distinct source ids in the study's order: numerically when every id is an integer (MovieLens
    MovieIDs and UserIDs: 1, 2, 10, not 1, 10, 2), else lexicographically. Dense indices, the split's
    same-timestamp tie rule and the score tie rule all follow this order."""
    unique = sorted(set(map(str, ids)))
    if unique and all(_is_integer(i) for i in unique):
        return sorted(unique, key=int)
    return unique


def _is_integer(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def implicit_positives(interactions: pd.DataFrame, min_rating: float | None) -> pd.DataFrame:
    """Keep interactions rated at least ``min_rating`` (all of them when None: already implicit)."""
    if min_rating is None:
        return interactions
    return interactions[interactions["rating"] >= min_rating]


def filter_users(interactions: pd.DataFrame, min_positives: int) -> pd.DataFrame:
    """Keep users with at least ``min_positives`` positive interactions."""
    counts = interactions.groupby("user_id")["item_id"].transform("size")
    return interactions[counts >= min_positives]


def prepare(raw: RawDataset, min_rating: float | None, min_positives: int, split: SplitConfig,
            universe: Universe = "catalogue") -> PreparedData:
    """Implicit positives, user filter, dense indices and the split (or the source's own split).

    ``universe``: ``catalogue`` (default) ranks every item of the source's item table, so that no future
    interaction decides which items exist; ``interacted`` keeps only items with at least one kept positive
    (any split), as many papers do. Cold items stay either way. Item and user indices follow
    :func:`id_order` of the source ids, so they are stable across runs and integer ids sort numerically.
    """
    if universe not in UNIVERSES:
        raise ValueError(f"unknown universe {universe!r}; expected one of {UNIVERSES}")
    inter = raw.interactions.copy()
    inter["user_id"] = inter["user_id"].astype(str)
    inter["item_id"] = inter["item_id"].astype(str)
    given_split = "split" in inter.columns
    dropped = {"interactions_read": len(inter)}
    if not given_split:
        inter = implicit_positives(inter, min_rating)
    dropped["below_min_rating"] = dropped["interactions_read"] - len(inter)
    # One positive per (user, item): a repeated interaction keeps its earliest timestamp. Done before
    # the user filter so that a repeat does not count as a second positive.
    inter = inter.sort_values(["user_id", "timestamp", "item_id"], kind="mergesort")
    before = len(inter)
    inter = inter.drop_duplicates(["user_id", "item_id"], keep="first")
    dropped["repeated_user_item_pairs"] = before - len(inter)
    if not given_split:
        before_users, before = inter["user_id"].nunique(), len(inter)
        inter = filter_users(inter, min_positives)
        dropped["users_below_min_positives"] = before_users - inter["user_id"].nunique()
        dropped["positives_of_those_users"] = before - len(inter)

    items = _complete_items(raw.items)
    repeated = items["item_id"][items["item_id"].duplicated()]
    if len(repeated):
        raise DataFormatError(raw.name, None, f"{len(repeated)} item ids appear twice in the item table, "
                              f"e.g. {repeated.head(5).tolist()}")
    known = set(items["item_id"])
    unknown = [i for i in id_order(inter["item_id"]) if i not in known]
    if unknown:
        raise DataFormatError(raw.name, None, f"{len(unknown)} interacted items have no item record, "
                              f"e.g. {unknown[:5]}")
    kept = id_order(items["item_id"] if universe == "catalogue" else inter["item_id"])
    order = {item_id: idx for idx, item_id in enumerate(items["item_id"])}
    items = items.set_index("item_id").loc[kept].reset_index()
    items.insert(0, "item_idx", np.arange(len(items), dtype=np.int64))
    features = {name: np.asarray(arr, dtype=np.float32)[[order[i] for i in kept]]
                for name, arr in raw.features.items()}

    users = pd.DataFrame({"user_id": id_order(inter["user_id"])})
    users.insert(0, "user_idx", np.arange(len(users), dtype=np.int64))
    inter = inter.merge(users, on="user_id").merge(items[["item_id", "item_idx"]], on="item_id")
    inter["timestamp"] = inter["timestamp"].astype(np.int64)
    inter["rating"] = inter["rating"].astype(np.float32)
    inter = inter.sort_values(["user_idx", "timestamp", "item_idx"], kind="mergesort")
    if not given_split:
        inter["split"] = assign_split(inter, split)
    unknown_splits = set(inter["split"]) - set(SPLITS)
    if unknown_splits:
        raise DataFormatError(raw.name, None, f"unknown split labels {sorted(unknown_splits)}")
    inter = inter[["user_idx", "item_idx", "timestamp", "rating", "split"]].reset_index(drop=True)
    return PreparedData(items=items, users=users, interactions=inter, features=features, dropped=dropped)


def dataset_counts(data: PreparedData) -> dict[str, int]:
    """The counts a reader checks first: sizes per split, cold items, image availability.

    ``cold_items_in_<split>``: items of that split with no positive in the history models are fitted on
    when they rank it (validation: train; test: train + validation), the definition the slices use."""
    inter = data.interactions
    counts = {"users": data.n_users, "items": data.n_items, "interactions": len(inter),
              "items_without_positives": int(data.n_items - inter["item_idx"].nunique()),
              "items_with_image": int(data.items["has_image"].sum()),
              "items_without_image": int((~data.items["has_image"]).sum())}
    for position, name in enumerate(SPLITS):
        part = inter[inter["split"] == name]
        counts[f"interactions_{name}"] = len(part)
        counts[f"users_with_{name}"] = int(part["user_idx"].nunique())
        if position:
            history_items = set(inter.loc[inter["split"].isin(SPLITS[:position]), "item_idx"])
            counts[f"cold_items_in_{name}"] = int(len(set(part["item_idx"]) - history_items))
    return counts


def save_prepared(data: PreparedData, out_dir: str | Path) -> None:
    """Write the prepared tables as Parquet (and features as ``.npy``) under ``out_dir``."""
    out = Path(out_dir)
    (out / "features").mkdir(parents=True, exist_ok=True)
    data.items.to_parquet(out / "items.parquet", index=False)
    data.users.to_parquet(out / "users.parquet", index=False)
    data.interactions.to_parquet(out / "interactions.parquet", index=False)
    for name, arr in data.features.items():
        np.save(out / "features" / f"{name}.npy", arr.astype(np.float32))
    (out / "features" / "index.json").write_text(json.dumps(sorted(data.features), indent=1))


def load_prepared(in_dir: str | Path) -> PreparedData:
    """Read what :func:`save_prepared` wrote; a missing, truncated or corrupt file is a StudyError naming it
    and the stage that writes it."""
    path = Path(in_dir)
    names = read_output(path / "features" / "index.json", lambda file: json.loads(file.read_text()))
    tables = {name: read_output(path / f"{name}.parquet", pd.read_parquet) for name in ("items", "users", "interactions")}
    return PreparedData(**tables, features={n: read_output(path / "features" / f"{n}.npy", np.load) for n in names})
