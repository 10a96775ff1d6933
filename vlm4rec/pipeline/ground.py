"""Ground stage: every item image described under each prompt arm, through the description cache."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from vlm4rec.grounding import DescriptionCache, Grounder, build_grounder, ground_items, mentions_title
from vlm4rec.pipeline.common import (GROUNDING_DIR, METRICS_DIR, load_prepared_data, peak_rss_mb, timed,
                                     write_json)


def grounder_from_params(ground: dict[str, Any]) -> Grounder:
    """The grounder ``ground.backend`` built with its own keys (``ground.<backend>``)."""
    backend = ground["backend"]
    options = {k: v for k, v in (ground.get(backend) or {}).items() if v is not None}
    return build_grounder(backend, **options)


def run(ground: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Describe every item image under each prompt arm through the cache; one long table out."""
    costs: dict[str, Any] = {}
    items = load_prepared_data().items
    grounder = grounder_from_params(ground)
    tables, arms = [], {}
    with timed(costs, "wall"), DescriptionCache(ground["cache"]) as cache:
        for arm in ground["prompt_arms"]:
            result = ground_items(items, grounder, cache, arm)
            table = result.table.assign(arm=arm)
            table["mentions_title"] = [
                bool(d) and mentions_title(d, t) for d, t in zip(table["description"].fillna(""), items["title"])]
            tables.append(table)
            arms[arm] = result.counts | {"title_mention_rate": float(table.loc[table["status"] == "ok",
                                                                                "mentions_title"].mean())}
    descriptions = pd.concat(tables, ignore_index=True).merge(
        items[["item_idx", "title", "image_path"]], on="item_idx")
    descriptions["grounder_method"] = grounder.description_of_method
    GROUNDING_DIR.mkdir(parents=True, exist_ok=True)
    # The file holds content only: whether a row came from the cache is run provenance (in the metrics),
    # and would otherwise make a cached re-run look like new descriptions to every later stage.
    descriptions.drop(columns="from_cache").to_parquet(GROUNDING_DIR / "descriptions.parquet", index=False)
    metrics = {"grounder": {"backend": ground["backend"], "model": grounder.model_id,
                            "description_of_method": grounder.description_of_method},
               "arms": arms, "cost": costs | {"peak_rss_mb": round(peak_rss_mb(), 1)}}
    write_json(METRICS_DIR / "ground.json", metrics)
    return descriptions, metrics


def grounding_gallery(descriptions: pd.DataFrame, n_items: int = 12, seed: int = 0) -> pd.DataFrame:
    """A seeded sample of described items with one caption holding every arm's description."""
    ok = descriptions[descriptions["status"] == "ok"]
    chosen = np.random.default_rng(seed).permutation(np.sort(ok["item_idx"].unique()))[:n_items]
    rows = []
    for item in chosen:
        part = ok[ok["item_idx"] == item]
        caption = part["title"].iloc[0] + "\n" + "\n".join(
            f"[{arm}] {text}" for arm, text in zip(part["arm"], part["description"]))
        rows.append({"item_idx": item, "image_path": part["image_path"].iloc[0], "caption": caption})
    return pd.DataFrame(rows)


def description_diagnostics(descriptions: pd.DataFrame, top: int = 30) -> dict[str, pd.DataFrame]:
    """Per arm: length statistics, vocabulary size, title-mention (leakage) rate; most frequent words."""
    ok = descriptions[descriptions["status"] == "ok"].copy()
    ok["words"] = ok["description"].str.lower().str.findall(r"[a-z][a-z'-]+")
    ok["n_words"] = ok["words"].str.len()
    summary = ok.groupby("arm").agg(items=("item_idx", "size"), mean_words=("n_words", "mean"),
                                    median_words=("n_words", "median"), max_words=("n_words", "max"),
                                    vocabulary=("words", lambda w: len(set().union(*w))))
    leakage = descriptions.groupby("arm").agg(
        described=("status", lambda s: int((s == "ok").sum())),
        naming_title=("mentions_title", "sum"))
    leakage["title_mention_rate"] = leakage["naming_title"] / leakage["described"].clip(lower=1)
    words = ok.explode("words").groupby(["arm", "words"]).size().rename("count").reset_index()
    top_words = (words.sort_values(["arm", "count"], ascending=[True, False]).groupby("arm").head(top)
                 .rename(columns={"words": "word"}).reset_index(drop=True))
    return {"summary": summary, "leakage": leakage, "top_words": top_words}
