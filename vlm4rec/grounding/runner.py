"""Ground a catalogue: one description per item, through the cache, counted and crash-safe.

Every item keeps its row: ``ok`` (described, now or from the cache), ``failed`` (with the error's kind
and reason: a broken image or a grounder error; the run goes on) or ``no_image``. Items whose images
have the same bytes and prompt are described once. Each finished batch is written to the cache in one
commit as it arrives, so an interrupted run resumes where it stopped.

Describing the pending batches is the one pluggable step: a :class:`Describer` yields finished batches,
here in one process (:class:`LocalDescriber`, the default for a plain :class:`Grounder`), or from a pool of
Ray actors (:class:`vlm4rec.distributed.grounding.RayDescriber`); everything else runs on the driver as below.
"""
from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image
from tqdm import tqdm

from vlm4rec.grounding.base import Grounder, GroundingError, GroundingStopped
from vlm4rec.grounding.cache import FAILED, OK, CacheEntry, DescriptionCache, cache_key
from vlm4rec.grounding.prompts import build_prompt, mentions_title
from vlm4rec.images import ImageLoadError, load_image, read_image_bytes

NO_IMAGE = "no_image"
STATUSES = (OK, FAILED, NO_IMAGE)
REQUIRED_COLUMNS = ("item_idx", "item_id", "title", "image_path", "has_image")
TABLE_COLUMNS = ["item_idx", "item_id", "status", "description", "mentions_title", "from_cache", "error_kind",
                 "error", "image_sha256", "grounder", "model", "prompt_arm"]


@dataclass
class GroundingResult:
    """``table``: one row per input item (:data:`TABLE_COLUMNS`, status in :data:`STATUSES`);
    ``counts``: items, ok, failed, no_image, from_cache, described, unique_images, duplicate_items,
    failed_by_kind, title_mentions (ok descriptions naming their item, see :func:`mentions_title`),
    wall_s, describe_s, images_per_s, items_per_s, usage (the grounder's :meth:`~Grounder.usage` counts spent
    in this run, e.g. requests per server)."""

    table: pd.DataFrame
    counts: dict[str, Any]


@dataclass(frozen=True)
class GrounderIdentity:
    """What keys the cache and labels the table, known without the grounder itself (a Ray driver holds
    no model): the grounder's id, model id, settings, batch size and method description."""

    grounder_id: str
    model_id: str
    settings: dict[str, Any]
    batch_size: int
    description_of_method: str

    @classmethod
    def of(cls, grounder: Grounder) -> "GrounderIdentity":
        return cls(grounder.grounder_id, grounder.model_id, grounder.settings(), grounder.batch_size,
                   grounder.description_of_method)


@dataclass
class Unit:
    """One (image bytes, prompt) pair to describe, shared by every item (``rows``) with those bytes and prompt."""

    key: str
    sha256: str
    path: Path
    prompt: str
    rows: list[int] = field(default_factory=list)


@dataclass
class DescribedBatch:
    """A finished batch: ``index`` into the batches handed to :meth:`Describer.describe`, one cache entry
    per unit (in the batch's order), and the grounder's usage counts it spent."""

    index: int
    entries: list[CacheEntry]
    usage: dict[str, Any]


class Describer(ABC):
    """Describes the batches of units a run lacks; ``identity`` is the grounder's (it keys the cache)."""

    identity: GrounderIdentity

    @abstractmethod
    def describe(self, batches: list[list[Unit]]) -> Iterator[DescribedBatch]:
        """Every batch described exactly once, yielded as it finishes (in any order).
        Raises :class:`GroundingStopped` when the grounder cannot go on."""


class LocalDescriber(Describer):
    """One grounder in this process, batch after batch."""

    def __init__(self, grounder: Grounder):
        self.grounder, self.identity = grounder, GrounderIdentity.of(grounder)

    def describe(self, batches: list[list[Unit]]) -> Iterator[DescribedBatch]:
        for index, batch in enumerate(batches):
            yield describe_batch(index, batch, self.grounder)


@dataclass
class _Outcome:
    status: str
    description: str | None = None
    error_kind: str | None = None
    error: str | None = None
    sha256: str | None = None
    from_cache: bool = False


def ground_items(items: pd.DataFrame, grounder: Grounder | Describer, cache: DescriptionCache, arm: str,
                 progress: bool = True, retry_failed: bool = True,
                 image_root: str | Path | None = None) -> GroundingResult:
    """Describe every item's image with ``grounder`` under prompt ``arm``, reusing ``cache``.

    ``grounder`` is a grounder (described here, batch after batch) or any :class:`Describer` (e.g. Ray
    actors); either way this process works out what the cache lacks and writes each finished batch.
    ``image_root`` resolves relative ``image_path`` values. With ``retry_failed`` (default) cached
    failures are attempted again (a server may be back); cached descriptions are never recomputed.
    :class:`GroundingStopped` (e.g. every server unreachable) ends the run with how far it got.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in items.columns]
    if missing:
        raise ValueError(f"items table lacks columns {missing}")
    start = time.perf_counter()
    describer = grounder if isinstance(grounder, Describer) else LocalDescriber(grounder)
    identity = describer.identity
    outcomes: list[_Outcome | None] = [None] * len(items)
    units = _collect_units(items, identity, arm, image_root, outcomes)
    cached = cache.get_many(units)
    pending = []
    for key, unit in units.items():
        entry = cached.get(key)
        if entry is not None and (entry.status == OK or not retry_failed):
            _assign(outcomes, unit, _outcome_of(entry, from_cache=True))
        else:
            pending.append(unit)
    batches = [pending[first:first + identity.batch_size] for first in range(0, len(pending), identity.batch_size)]
    bar = tqdm(total=len(items), initial=len(items) - sum(len(u.rows) for u in pending), unit="item",
               desc=f"grounding ({identity.grounder_id}, {arm})", disable=not progress)
    describe_start = time.perf_counter()
    usage: dict[str, Any] = {}
    try:
        for done in describer.describe(batches):
            cache.put_many(done.entries)
            for unit, entry in zip(batches[done.index], done.entries):
                _assign(outcomes, unit, _outcome_of(entry, from_cache=False))
            usage = add_counts(usage, done.usage)
            bar.update(sum(len(u.rows) for u in batches[done.index]))
    except GroundingStopped as err:
        raise GroundingStopped(f"{err}; {_progress(units, outcomes)}; rerun resumes from the cache") from None
    finally:
        bar.close()
    describe_s = time.perf_counter() - describe_start
    table = _table(items, outcomes, identity, arm)
    counts = _counts(table, units, pending, describe_s, time.perf_counter() - start)
    return GroundingResult(table, counts | {"usage": usage})


def add_counts(total: dict[str, Any], more: dict[str, Any], sign: int = 1) -> dict[str, Any]:
    """``total + sign * more`` over nested dicts of numbers (a key missing on one side counts as 0)."""
    out = dict(total)
    for key, value in more.items():
        if isinstance(value, dict):
            out[key] = add_counts(out.get(key, {}), value, sign)
        else:
            out[key] = out.get(key, 0) + sign * value
    return out


def _progress(units: dict[str, Unit], outcomes: list[_Outcome | None]) -> str:
    """"<n> of <m> described": items with an image whose description is ready, of all such items."""
    ready = [o is not None and o.status == OK for o in outcomes]
    return (f"{sum(len(u.rows) for u in units.values() if ready[u.rows[0]]):,} of "
            f"{sum(len(u.rows) for u in units.values()):,} described")


def _collect_units(items: pd.DataFrame, identity: GrounderIdentity, arm: str, image_root: str | Path | None,
                   outcomes: list[_Outcome | None]) -> dict[str, Unit]:
    """Hash every available image; items without one get their outcome now, the rest share units."""
    units: dict[str, Unit] = {}
    for row, (title, image_path, has_image) in enumerate(
            zip(items["title"], items["image_path"], items["has_image"])):
        if not has_image or image_path is None or pd.isna(image_path) or not str(image_path):
            outcomes[row] = _Outcome(NO_IMAGE)
            continue
        path = Path(image_root, image_path) if image_root is not None else Path(image_path)
        try:
            sha = hashlib.sha256(read_image_bytes(path)).hexdigest()
        except ImageLoadError as err:
            outcomes[row] = _Outcome(FAILED, error_kind=err.kind, error=err.reason)
            continue
        prompt = build_prompt(arm, str(title))
        key = cache_key(sha, identity.grounder_id, identity.model_id, prompt, identity.settings)
        units.setdefault(key, Unit(key, sha, path, prompt)).rows.append(row)
    return units


def describe_batch(index: int, batch: list[Unit], grounder: Grounder) -> DescribedBatch:
    """Decode and describe one batch; every unit gets an entry (ok or failed with its reason). The image
    is read again from its path and must still have the bytes it was keyed by."""
    before = grounder.usage()
    entries = _entries(batch, grounder)
    return DescribedBatch(index, entries, add_counts(grounder.usage(), before, sign=-1))


def _entries(batch: list[Unit], grounder: Grounder) -> list[CacheEntry]:
    images: dict[int, Image.Image] = {}
    failures: dict[int, GroundingError | ImageLoadError] = {}
    for position, unit in enumerate(batch):
        try:
            data = read_image_bytes(unit.path)
            if hashlib.sha256(data).hexdigest() != unit.sha256:
                raise ImageLoadError("changed", f"{unit.path} changed while grounding was running")
            images[position] = load_image(data)
        except ImageLoadError as err:
            failures[position] = err
    order = sorted(images)
    described = (grounder.describe_outcomes([images[p] for p in order], [batch[p].prompt for p in order])
                 if order else [])
    if len(described) != len(order):
        raise RuntimeError(f"{type(grounder).__name__} returned {len(described)} outcomes for {len(order)} images")
    results: dict[int, str | GroundingError | ImageLoadError] = {**failures, **dict(zip(order, described))}
    settings = grounder.settings()
    entries = []
    for position, unit in enumerate(batch):
        result = results[position]
        common = dict(key=unit.key, image_sha256=unit.sha256, grounder_id=grounder.grounder_id,
                      model_id=grounder.model_id, prompt=unit.prompt, settings=settings)
        if isinstance(result, str):
            entries.append(CacheEntry(**common, status=OK, description=result))
        else:
            entries.append(CacheEntry(**common, status=FAILED, error_kind=result.kind, error=result.reason))
    return entries


def _outcome_of(entry: CacheEntry, from_cache: bool) -> _Outcome:
    return _Outcome(entry.status, entry.description, entry.error_kind, entry.error, entry.image_sha256, from_cache)


def _assign(outcomes: list[_Outcome | None], unit: Unit, outcome: _Outcome) -> None:
    for row in unit.rows:
        outcomes[row] = outcome


def _table(items: pd.DataFrame, outcomes: list[_Outcome | None], identity: GrounderIdentity,
           arm: str) -> pd.DataFrame:
    if any(o is None for o in outcomes):
        raise RuntimeError("internal error: an item was left without an outcome")
    table = pd.DataFrame({
        "item_idx": items["item_idx"].to_numpy(), "item_id": items["item_id"].astype(str).to_numpy(),
        "status": [o.status for o in outcomes], "description": [o.description for o in outcomes],
        "mentions_title": [o.status == OK and mentions_title(o.description, str(title))
                           for o, title in zip(outcomes, items["title"])],
        "from_cache": [o.from_cache for o in outcomes], "error_kind": [o.error_kind for o in outcomes],
        "error": [o.error for o in outcomes], "image_sha256": [o.sha256 for o in outcomes]})
    table["grounder"], table["model"], table["prompt_arm"] = identity.grounder_id, identity.model_id, arm
    return table[TABLE_COLUMNS]


def _counts(table: pd.DataFrame, units: dict[str, Unit], pending: list[Unit], describe_s: float,
            wall_s: float) -> dict[str, Any]:
    status = table["status"]
    failed = table[status == FAILED]
    return {
        "items": len(table), "ok": int((status == OK).sum()), "failed": len(failed),
        "no_image": int((status == NO_IMAGE).sum()), "from_cache": int(table["from_cache"].sum()),
        "described": sum(1 for u in pending if table.at[u.rows[0], "status"] == OK),
        "unique_images": len(units), "duplicate_items": sum(len(u.rows) - 1 for u in units.values()),
        "failed_by_kind": dict(sorted(Counter(failed["error_kind"]).items())),
        "title_mentions": int(table["mentions_title"].sum()),
        "wall_s": round(wall_s, 3), "describe_s": round(describe_s, 3),
        "images_per_s": round(len(pending) / describe_s, 2) if pending and describe_s > 0 else None,
        "items_per_s": round(len(table) / wall_s, 2) if wall_s > 0 else None,
    }
