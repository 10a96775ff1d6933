"""Planted signal through the whole method: grounding -> encoding -> profiles -> evaluation.

Two synthetic catalogues with the same users. In the first the preference signal is in the images
(users like one colour class of posters; titles are drawn independently of the class), so ``image``
and ``description`` must beat ``title`` and a shuffled-embedding control. In the second the signal is
in the titles (class vocabulary; poster colours drawn independently), so the ordering must flip.
Everything runs through the real components: the tagger, EfficientNet-Lite0 features, MiniLM, the
profile recommender and ``select_and_test``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from study_params import section
from vlm4rec.data import RawDataset, prepare
from vlm4rec.encoders import EfficientNetLite0Features, encode_image_paths, encode_texts, load_text_encoder
from vlm4rec.evaluation import EvalData, select_and_test
from vlm4rec.grounding import DescriptionCache, build_grounder, ground_items
from vlm4rec.matching import ProfileRecommender
from vlm4rec.representations import item_texts
from vlm4rec.splits import SplitConfig

COLOURS = [(205, 30, 30), (35, 70, 205), (40, 160, 60)]
CLASS_WORDS = [["galaxy", "rocket", "astronaut", "planet"], ["wedding", "romance", "kiss", "bride"],
               ["detective", "murder", "crime", "gangster"]]
NEUTRAL_WORDS = ["river", "window", "paper", "winter", "garden", "letter", "station", "mirror", "island",
                 "summer", "shadow", "voice"]
N_PER_CLASS, N_USERS, HISTORY = 16, 90, 10


def poster(colour: tuple[int, int, int], rng: np.random.Generator) -> Image.Image:
    """A 96x144 poster of one dominant colour with a grey panel at a random place, plus pixel noise."""
    pixels = np.empty((144, 96, 3), dtype=np.float32)
    pixels[:] = colour
    top, left = rng.integers(10, 90), rng.integers(5, 50)
    pixels[top:top + 30, left:left + 40] = 128
    pixels += rng.normal(0, 12, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def catalogue(tmp_path, signal: str, seed: int = 0) -> RawDataset:
    """Items of three classes; the class shows in the images (signal='image') or titles ('title')."""
    rng = np.random.default_rng(seed)
    rows = []
    for item in range(3 * N_PER_CLASS):
        cls = item // N_PER_CLASS
        colour = COLOURS[cls] if signal == "image" else COLOURS[rng.integers(3)]
        words = CLASS_WORDS[cls] if signal == "title" else NEUTRAL_WORDS
        title = " ".join(rng.choice(words, size=2, replace=False)).title() + f" {item}"
        path = tmp_path / f"{item}.png"
        poster(colour, rng).save(path)
        rows.append({"item_id": str(item), "title": title, "image_path": str(path), "has_image": True})
    inter = []
    for user in range(N_USERS):
        cls = user % 3
        liked = rng.choice(np.arange(cls * N_PER_CLASS, (cls + 1) * N_PER_CLASS), size=HISTORY, replace=False)
        inter += [{"user_id": str(user), "item_id": str(i), "rating": 5.0, "timestamp": t}
                  for t, i in enumerate(liked)]
    return RawDataset(name=f"planted-{signal}", interactions=pd.DataFrame(inter), items=pd.DataFrame(rows))


def recall_at_10(data: EvalData, name: str, vectors: np.ndarray) -> float:
    result = select_and_test(name, lambda: ProfileRecommender(vectors, name=name), data, ks=(10,),
                             select_metric="recall@10")
    return result.test_summary()["recall@10"]


def representation_scores(tmp_path, signal: str) -> dict[str, float]:
    prepared = prepare(catalogue(tmp_path, signal), min_rating=4, min_positives=5, split=SplitConfig())
    items = prepared.items
    with DescriptionCache(tmp_path / "cache.sqlite") as cache:
        tagger = build_grounder(section("ground.tagger"))
        grounded = ground_items(items, tagger, cache, "image_only", progress=False).table
    descriptions = grounded[grounded["status"] == "ok"].set_index("item_idx")["description"]
    encoder = load_text_encoder()
    vectors = {
        "title": encode_texts(item_texts(items, "title").texts, encoder, progress=False),
        "description": encode_texts(item_texts(items, "description", descriptions).texts, encoder,
                                    progress=False),
        "image": encode_image_paths(items["image_path"].tolist(), EfficientNetLite0Features(),
                                    progress=False).vectors,
    }
    vectors["shuffled"] = vectors["description"][np.random.default_rng(1).permutation(len(items))]
    data = EvalData.from_prepared(prepared)
    return {name: recall_at_10(data, name, v) for name, v in vectors.items()}


@pytest.fixture(scope="module")
def image_signal(tmp_path_factory) -> dict[str, float]:
    return representation_scores(tmp_path_factory.mktemp("image_signal"), "image")


@pytest.fixture(scope="module")
def title_signal(tmp_path_factory) -> dict[str, float]:
    return representation_scores(tmp_path_factory.mktemp("title_signal"), "title")


def test_signal_in_images_makes_image_and_description_beat_title_and_shuffled(image_signal):
    for name in ("image", "description"):
        assert image_signal[name] > image_signal["title"] + 0.15, image_signal
        assert image_signal[name] > image_signal["shuffled"] + 0.15, image_signal


def test_signal_in_titles_makes_title_beat_image_and_description(title_signal):
    for name in ("image", "description", "shuffled"):
        assert title_signal["title"] > title_signal[name] + 0.15, title_signal
