"""Ground stage: every item image described under each prompt arm, through the description cache."""
from __future__ import annotations

from typing import Any

import pandas as pd

from vlm4rec.config import ComputeParams, GroundParams
from vlm4rec.data import load_prepared
from vlm4rec.errors import StudyError
from vlm4rec.distributed import ray_config
from vlm4rec.distributed.grounding import GrounderSpec, RayDescriber
from vlm4rec.grounding import DescriptionCache, GroundingResult, build_grounder, ground_items
from vlm4rec.grounding.runner import Describer, LocalDescriber
from vlm4rec.pipeline.outputs import GROUNDING_DIR, PREPARED_DIR, peak_rss_mb, timed
from vlm4rec.pipeline.stage_metrics import GroundMetrics


def describer_from_params(ground: GroundParams, compute: ComputeParams) -> Describer:
    """The grounder ``ground.backend`` with its own keys (``ground.<backend>``): built here for
    ``compute.executor: local``, or one per actor of a Ray pool for ``ray``."""
    config = ray_config(compute)
    if config is None:
        return LocalDescriber(build_grounder(ground.backend_params))
    return RayDescriber(GrounderSpec(ground.backend_params), config)


def check_success_rate(result: GroundingResult, arm: str, min_success_rate: float) -> None:
    """A :class:`StudyError` when fewer than ``min_success_rate`` of the items with an image were described
    under ``arm``, naming the most frequent failure kinds (finished descriptions stay in the cache)."""
    counts = result.counts
    with_image = counts["items"] - counts["no_image"]
    if with_image == 0 or counts["ok"] / with_image >= min_success_rate:
        return
    kinds = sorted(counts["failed_by_kind"].items(), key=lambda kv: -kv[1])[:3]
    raise StudyError(
        f"only {counts['ok']:,} of {with_image:,} items with an image were described under prompt arm {arm} "
        f"({counts['ok'] / with_image:.1%} < ground.min_success_rate {min_success_rate}); most frequent "
        f"failures: {', '.join(f'{kind} ({n:,})' for kind, n in kinds)}. Finished descriptions are cached: "
        "a rerun describes only what is missing.")


def run(ground: GroundParams, compute: ComputeParams) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Describe every item image under each prompt arm through the cache; one long table out."""
    costs: dict[str, Any] = {}
    items = load_prepared(PREPARED_DIR).items
    describer = describer_from_params(ground, compute)
    identity = describer.identity
    tables, arms = [], {}
    with timed(costs, "wall"), DescriptionCache(ground.cache) as cache:
        for arm in ground.prompt_arms:
            result = ground_items(items, describer, cache, arm)
            check_success_rate(result, arm, ground.min_success_rate)
            table = result.table.assign(arm=arm)
            tables.append(table)
            arms[arm] = result.counts | {"title_mention_rate": float(table.loc[table["status"] == "ok",
                                                                                "mentions_title"].mean())}
    descriptions = pd.concat(tables, ignore_index=True).merge(
        items[["item_idx", "title", "image_path"]], on="item_idx")
    descriptions["grounder_method"] = identity.description_of_method
    GROUNDING_DIR.mkdir(parents=True, exist_ok=True)
    # The file holds content only: whether a row came from the cache is run provenance (in the metrics),
    # and would otherwise make a cached re-run look like new descriptions to every later stage.
    descriptions.drop(columns="from_cache").to_parquet(GROUNDING_DIR / "descriptions.parquet", index=False)
    metrics = {"grounder": {"backend": ground.backend, "model": identity.model_id,
                            "description_of_method": identity.description_of_method},
               "arms": arms, "cost": costs | {"peak_rss_mb": round(peak_rss_mb(), 1)}}
    GroundMetrics.model_validate(metrics).save(GroundMetrics.path())
    return descriptions, metrics
