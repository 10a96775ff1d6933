"""The offline tagger: real EfficientNet-Lite0 labels on a real photo, hand-checked colour and tone words,
and a catalogue of broken and odd images run through ground_items."""
import io
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage import data

from study_params import section
from vlm4rec.grounding.cache import DescriptionCache
from vlm4rec.grounding.prompts import IMAGE_ONLY, IMAGE_TITLE, build_prompt
from vlm4rec.grounding.runner import ground_items
from vlm4rec.grounding.tagger import PALETTE, TaggerGrounder, compose_description, tone_words

CAT_CLASSES = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}  # ImageNet 281-285


@pytest.fixture(scope="module")
def tagger():
    return TaggerGrounder(section("ground.tagger", batch_size=4))


@pytest.fixture(scope="module")
def chelsea():
    return Image.fromarray(data.chelsea())


def solid(rgb, size=(8, 8)) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, dtype=np.float32) / 255.0, (*size, 3)).copy()


def test_names_a_cat_on_chelsea(tagger, chelsea):
    labels = tagger.objects([chelsea])[0]
    assert labels and labels[0] in CAT_CLASSES
    description = tagger.describe([chelsea], [build_prompt(IMAGE_ONLY, "Chelsea (2020)")])[0]
    assert f"showing a {labels[0]}" in description or f"showing an {labels[0]}" in description
    assert description.startswith("A") and description.endswith(".") and "Chelsea" not in description


def test_deterministic_and_independent_of_batching(tagger, chelsea):
    images = [chelsea, Image.fromarray(data.coffee()), Image.fromarray(data.rocket())]
    prompts = [build_prompt(IMAGE_ONLY, "")] * 3
    first = tagger.describe(images, prompts)
    assert tagger.describe(images, prompts) == first
    fresh = TaggerGrounder(section("ground.tagger", batch_size=1))  # no memory of the batch above: one at a time
    assert [fresh.describe([image], [prompts[0]])[0] for image in images] == first


def test_second_prompt_arm_reuses_the_image_analysis(chelsea, monkeypatch):
    tagger = TaggerGrounder(section("ground.tagger"))
    calls = []
    original = tagger.objects
    monkeypatch.setattr(tagger, "objects", lambda images: calls.append(len(images)) or original(images))
    coffee = Image.fromarray(data.coffee())
    plain = tagger.describe([chelsea, coffee, chelsea], [build_prompt(IMAGE_ONLY, "")] * 3)
    leaked = tagger.describe([chelsea, coffee], [build_prompt(IMAGE_TITLE, "Heat (1995)")] * 2)
    assert calls == [2]  # the repeated chelsea and the second arm never reach the classifier
    assert plain[0] == plain[2] and leaked[1] == f"Poster of Heat (1995): {plain[1]}"


def test_threshold_above_one_names_no_objects(tagger, chelsea):
    tagger.threshold = 1.01
    try:
        assert "showing" not in tagger.describe([chelsea], ["x"])[0]
    finally:
        tagger.threshold = 0.1


def test_title_arm_prefixes_the_prompt_title(tagger, chelsea):
    plain = tagger.describe([chelsea], [build_prompt(IMAGE_ONLY, "Heat (1995)")])[0]
    leaked = tagger.describe([chelsea], [build_prompt(IMAGE_TITLE, "Heat (1995)")])[0]
    assert leaked == f"Poster of Heat (1995): {plain}"


def test_tone_words_by_hand():
    assert tone_words(solid((200, 30, 30))) == ["bright", "vivid", "low-contrast"]
    assert tone_words(solid((40, 40, 40))) == ["dark", "black-and-white", "low-contrast"]
    halves = np.concatenate([solid((0, 0, 0)), solid((255, 255, 255))])  # value mean 0.5, luminance std 0.5
    assert tone_words(halves) == ["black-and-white", "high-contrast"]
    muted = solid((150, 140, 130))  # saturation 20/150 = 0.13, value 0.59
    assert tone_words(muted) == ["muted", "low-contrast"]


def test_colour_names_by_share(tagger):
    named = {**PALETTE, "black": (10, 10, 10), "grey": (128, 128, 128), "white": (250, 250, 250)}

    def image(counts):
        rows = [np.tile(np.array(named[name], np.float32) / 255, (n, 1)) for name, n in counts]
        return np.concatenate(rows).reshape(10, 10, 3)

    assert tagger.colour_names(image([("blue", 60), ("yellow", 30), ("green", 10)])) == ["blue", "yellow", "green"]
    # 5% is below the 10% minimum share; the top three are kept at most.
    assert tagger.colour_names(image([("red", 50), ("white", 45), ("green", 5)])) == ["red", "white"]
    assert tagger.colour_names(image([("red", 40), ("white", 25), ("pink", 20), ("teal", 15)])) == [
        "red", "white", "pink"]
    # Unsaturated pixels are named by value (dark grey is black, not brown); saturated ones by the nearest colour.
    assert tagger.colour_names(solid((60, 60, 55), (10, 10))) == ["black"]       # value 0.24 < 0.25
    assert tagger.colour_names(solid((200, 195, 190), (10, 10))) == ["grey"]     # saturation 0.05, value 0.78
    assert tagger.colour_names(solid((230, 20, 60), (10, 10))) == ["red"]        # nearest chromatic: red
    assert tagger.colour_names(solid((30, 10, 5), (10, 10))) == ["black"]        # value 0.12 < 0.15


def test_compose_description():
    assert compose_description(["dark", "high-contrast"], ["black", "red"], ["tabby", "suit"]) == (
        "A dark, high-contrast poster dominated by black and red, showing a tabby and a suit.")
    assert compose_description([], ["blue"], ["espresso"]) == "A poster dominated by blue, showing an espresso."
    assert compose_description([], [], []) == "A poster."
    assert compose_description(["impressive"], ["red", "green", "blue"], []) == (
        "An impressive poster dominated by red, green and blue.")


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def bomb_png() -> bytes:
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 90_000, 90_000, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def test_broken_and_odd_images_are_described_or_recorded(tagger, tmp_path):
    cat = Image.fromarray(data.chelsea())
    rgba = cat.convert("RGBA")
    rgba.putalpha(128)
    files = {
        "good.jpg": encoded(cat, "JPEG"),
        "zero.jpg": b"",
        "truncated.jpg": encoded(cat, "JPEG")[:2000],
        "text.jpg": b"<html>404 Not Found</html>",
        "alpha.png": encoded(rgba, "PNG"),
        "palette.png": encoded(cat.convert("P"), "PNG"),
        "grey.png": encoded(cat.convert("L"), "PNG"),
        "cmyk.jpg": encoded(cat.convert("CMYK"), "JPEG"),
        "sixteen.png": encoded(Image.fromarray((np.asarray(cat.convert("L"), np.uint16) * 257)), "PNG"),
        "bomb.png": bomb_png(),
    }
    for name, payload in files.items():
        (tmp_path / name).write_bytes(payload)
    names = [*files, "missing.jpg", None]
    items = pd.DataFrame({"item_idx": range(len(names)), "item_id": [f"m{i}" for i in range(len(names))],
                          "title": [f"Film {i}" for i in range(len(names))], "image_path": names,
                          "has_image": [n is not None for n in names]})
    with DescriptionCache(tmp_path / "cache.sqlite") as cache:
        result = ground_items(items, tagger, cache, IMAGE_ONLY, progress=False, image_root=tmp_path)
    table = result.table.set_index(pd.Index(names, dtype=object))
    described = ["good.jpg", "alpha.png", "palette.png", "grey.png", "cmyk.jpg", "sixteen.png"]
    assert (table.loc[described, "status"] == "ok").all()
    assert table.loc[described, "description"].str.startswith("A").all()
    expected_kinds = {"zero.jpg": "empty", "truncated.jpg": "truncated", "text.jpg": "not_an_image",
                      "bomb.png": "decompression_bomb", "missing.jpg": "missing_file"}
    for name, kind in expected_kinds.items():
        assert table.loc[name, "status"] == "failed" and table.loc[name, "error_kind"] == kind
        assert table.loc[name, "error"]
    assert table["status"].iloc[-1] == "no_image"
    assert result.counts["failed_by_kind"] == {"decompression_bomb": 1, "empty": 1, "missing_file": 1,
                                               "not_an_image": 1, "truncated": 1}
    assert (result.counts["ok"], result.counts["failed"], result.counts["no_image"]) == (6, 5, 1)
    # 16-bit values v * 257 are rescaled to exactly the 8-bit v, so both greyscale copies read alike.
    assert table.loc["sixteen.png", "description"] == table.loc["grey.png", "description"]
