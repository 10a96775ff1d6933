"""Prepare stage: read the source, make implicit positives, filter users, split."""
from __future__ import annotations

from typing import Any

import numpy as np

from vlm4rec.config import DataParams, SplitParams
from vlm4rec.data import PreparedData, RawDataset, dataset_counts, id_order, prepare, save_prepared
from vlm4rec.datasets import load_source
from vlm4rec.pipeline.source_manifest import adapter_keys
from vlm4rec.pipeline.outputs import PREPARED_DIR, peak_rss_mb, timed
from vlm4rec.pipeline.stage_metrics import PrepareMetrics
from vlm4rec.splits import SplitConfig


def load_raw(data: DataParams) -> RawDataset:
    """The source named by ``data.source``, read where the fetch stage found (or put) its files."""
    return load_source(data.source, **adapter_keys(data))


def sample_users(raw: RawDataset, n_users: int | None, seed: int) -> RawDataset:
    """A seeded sample of ``n_users`` source users (all when None), for smoke runs and tests."""
    if n_users is None:
        return raw
    users = np.array(id_order(raw.interactions["user_id"]), dtype=object)
    if n_users >= len(users):
        return raw
    keep = set(np.random.default_rng(seed).choice(users, size=n_users, replace=False))
    inter = raw.interactions[raw.interactions["user_id"].astype(str).isin(keep)]
    return RawDataset(name=raw.name, interactions=inter, items=raw.items, features=raw.features,
                      counts=raw.counts | {"sampled_users": n_users})


def rated_items_without_positive(raw: RawDataset, prepared: PreparedData) -> int:
    """Items of the prepared universe that the source has interactions on but that hold no positive after
    preparation (all rated below ``data.min_rating``, or only by dropped users): they are not "never
    interacted with"."""
    rated = set(raw.interactions["item_id"].astype(str))
    positive = set(prepared.items["item_id"].astype(str).to_numpy()[np.unique(prepared.interactions["item_idx"])])
    return len((rated & set(prepared.items["item_id"].astype(str))) - positive)


def split_protocol(raw: RawDataset, split: SplitParams) -> str:
    """``split.protocol``, or ``source`` when the source labels its own split (which prepare keeps as is)."""
    return "source" if "split" in raw.interactions.columns else split.protocol


def run(data: DataParams, split: SplitParams) -> tuple[PreparedData, dict[str, Any]]:
    """Read the source, make implicit positives, filter users, split, write Parquet and metrics."""
    costs: dict[str, Any] = {}
    with timed(costs, "wall"):
        raw = sample_users(load_raw(data), data.user_sample, data.seed)
        prepared = prepare(raw, data.min_rating, data.min_positives, SplitConfig(**split.model_dump()), data.universe)
        save_prepared(prepared, PREPARED_DIR)
    metrics = {"dataset": data.source, "universe": data.universe, "split_protocol": split_protocol(raw, split),
               "counts": dataset_counts(prepared) | {
                   "items_without_positives_but_rated": rated_items_without_positive(raw, prepared)},
               "source_counts": raw.counts, "dropped_in_preparation": prepared.dropped,
               "cost": costs | {"peak_rss_mb": round(peak_rss_mb(), 1)}}
    PrepareMetrics.model_validate(metrics).save(PrepareMetrics.path())
    return prepared, metrics
