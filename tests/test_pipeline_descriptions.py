"""Diagnostics of the ground stage's table (vlm4rec/pipeline/descriptions.py)."""
from __future__ import annotations

import pandas as pd

from vlm4rec.pipeline.descriptions import description_diagnostics, grounding_gallery


def table() -> pd.DataFrame:
    rows = [(0, "image_only", "ok", "A red poster.", False), (0, "image_title", "ok", "Heat: a red poster.", True),
            (1, "image_only", "failed", None, False), (1, "image_title", "failed", None, False),
            (2, "image_only", "ok", "A dark poster, showing a suit.", False),
            (2, "image_title", "no_image", None, False)]
    frame = pd.DataFrame(rows, columns=["item_idx", "arm", "status", "description", "mentions_title"])
    return frame.assign(title=frame["item_idx"].map({0: "Heat (1995)", 1: "Babe (1995)", 2: "Casino (1995)"}),
                        image_path=frame["item_idx"].map(lambda i: f"/img/{i}.jpg"))


def test_gallery_captions_hold_every_described_arm_and_survive_nothing_described() -> None:
    gallery = grounding_gallery(table(), n_items=5, seed=0).set_index("item_idx")
    assert sorted(gallery.index) == [0, 2]
    assert gallery.loc[0, "caption"] == "Heat (1995)\n[image_only] A red poster.\n[image_title] Heat: a red poster."
    empty = grounding_gallery(table().assign(status="failed"))
    assert empty.empty and list(empty.columns) == ["item_idx", "image_path", "caption"]


def test_diagnostics_count_words_and_the_title_mention_rate_per_arm() -> None:
    diagnostics = description_diagnostics(table())
    assert diagnostics["summary"].loc["image_only", "items"] == 2
    assert diagnostics["summary"].loc["image_only", "max_words"] == 4  # dark poster showing suit ("a" is no word)
    leakage = diagnostics["leakage"]
    assert leakage.loc["image_title", "title_mention_rate"] == 1.0 and leakage.loc["image_only", "naming_title"] == 0
