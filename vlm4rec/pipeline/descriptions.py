"""Diagnostics of the ground stage's description table, shown by the ground notebook and the report: a
poster gallery sample, description lengths and vocabulary, and how often descriptions name their title."""
from __future__ import annotations

import numpy as np
import pandas as pd


def grounding_gallery(descriptions: pd.DataFrame, n_items: int = 12, seed: int = 0) -> pd.DataFrame:
    """A seeded sample of described items with one caption holding every arm's description (columns
    item_idx, image_path, caption; no rows when nothing was described)."""
    ok = descriptions[descriptions["status"] == "ok"]
    chosen = np.random.default_rng(seed).permutation(np.sort(ok["item_idx"].unique()))[:n_items]
    rows = []
    for item in chosen:
        part = ok[ok["item_idx"] == item]
        caption = part["title"].iloc[0] + "\n" + "\n".join(
            f"[{arm}] {text}" for arm, text in zip(part["arm"], part["description"]))
        rows.append({"item_idx": item, "image_path": part["image_path"].iloc[0], "caption": caption})
    return pd.DataFrame(rows, columns=["item_idx", "image_path", "caption"])


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
