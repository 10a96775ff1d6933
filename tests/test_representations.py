"""Item texts with fallbacks, Representation bookkeeping and persistence, precomputed features."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from vlm4rec.representations import Representation, from_features, from_texts, item_texts


class HashingEncoder:
    """Deterministic stand-in for a SentenceTransformer: a text's vector is seeded by its sha256."""

    dim = 8

    def __init__(self):
        self.seen: list[str] = []

    def get_embedding_dimension(self) -> int:
        return self.dim

    def encode(self, texts, batch_size, convert_to_numpy, normalize_embeddings, show_progress_bar):
        self.seen.extend(texts)
        rows = [np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)).normal(size=self.dim)
                for t in texts]
        rows = np.array(rows, dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def vector(self, text: str) -> np.ndarray:
        return self.encode([text], 1, True, True, False)[0]

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.encode(list(texts), 8, True, True, False)


@pytest.fixture
def items() -> pd.DataFrame:
    return pd.DataFrame({
        "item_idx": [0, 1, 2, 3],
        "title": ["Toy Story (1995)", "Heat (1995)", "Casino (1995)", "Babe (1995)"],
        "meta_text": ["Animation, Comedy", "Action, Crime", "", "Comedy"],
    })


@pytest.fixture
def descriptions() -> pd.Series:
    # item 1 has no image, item 3's grounding failed: neither is in the (status ok) descriptions
    return pd.Series({2: "A man in a suit before neon lights.", 0: "Cartoon toys on a bed."})


def test_title_texts_have_no_fallback(items):
    texts = item_texts(items, "title")
    assert texts.texts == items["title"].tolist()
    assert texts.n_fallback == 0


def test_title_meta_joins_genres_and_falls_back_to_title_without_metadata(items):
    texts = item_texts(items, "title_meta")
    assert texts.texts == ["Toy Story (1995). Genres: Animation, Comedy", "Heat (1995). Genres: Action, Crime",
                           "Casino (1995)", "Babe (1995). Genres: Comedy"]
    assert texts.is_fallback.tolist() == [False, False, True, False]


def test_genres_is_the_metadata_without_the_title_and_never_falls_back_to_it(items):
    texts = item_texts(items, "genres")
    assert texts.texts == ["Genres: Animation, Comedy", "Genres: Action, Crime", "", "Genres: Comedy"]
    assert texts.n_fallback == 0 and texts.is_missing.tolist() == [False, False, True, False]
    encoder = HashingEncoder()
    rep = from_texts("genres", texts, encoder.embed, encoder.dim, "hash-8")
    assert rep.n_missing == 1 and rep.coverage == 0.75 and not rep.vectors[2].any()
    assert not any("Casino" in text or "Toy Story" in text for text in encoder.seen)


def test_description_falls_back_to_title_for_items_without_a_description(items, descriptions):
    texts = item_texts(items, "description", descriptions)
    assert texts.texts == ["Cartoon toys on a bed.", "Heat (1995)", "A man in a suit before neon lights.",
                           "Babe (1995)"]
    assert texts.is_fallback.tolist() == [False, True, False, True]
    assert texts.n_fallback == 2 and "title" in texts.fallback_rule


def test_title_description_prepends_the_title(items, descriptions):
    texts = item_texts(items, "title_description", descriptions)
    assert texts.texts == ["Toy Story (1995). Cartoon toys on a bed.", "Heat (1995)",
                           "Casino (1995). A man in a suit before neon lights.", "Babe (1995)"]
    assert texts.is_fallback.tolist() == [False, True, False, True]


def test_blank_description_counts_as_missing(items):
    texts = item_texts(items, "description", pd.Series({0: "  ", 1: "Two men and a gun."}))
    assert texts.texts[:2] == ["Toy Story (1995)", "Two men and a gun."]
    assert texts.is_fallback.tolist() == [True, False, True, True]


@pytest.mark.parametrize("bad, message", [
    (None, "need `descriptions`"),
    (pd.Series({7: "unknown item"}), "not in items"),
    (pd.Series(["a", "b"], index=[0, 0]), "repeated"),
])
def test_bad_descriptions_are_refused(items, bad, message):
    with pytest.raises(ValueError, match=message):
        item_texts(items, "description", bad)


def test_items_without_title_use_what_else_they_have_or_go_missing(items, descriptions):
    items.loc[[0, 1], "title"] = " "  # item 0 has metadata and a description, item 1 neither
    assert item_texts(items, "title").texts[:2] == ["", ""]
    meta = item_texts(items, "title_meta")
    assert meta.texts[:2] == ["Genres: Animation, Comedy", "Genres: Action, Crime"] and not meta.is_fallback[:2].any()
    described = item_texts(items, "title_description", descriptions)
    assert described.texts[:2] == ["Cartoon toys on a bed.", ""]
    assert list(described.is_missing) == [False, True, False, False]
    assert list(described.is_fallback) == [False, False, False, True]  # item 1 has no title to fall back on
    encoder = HashingEncoder()
    rep = from_texts("title_description", described, encoder.embed, encoder.dim, "hash-8")
    assert rep.n_missing == 1 and rep.n_fallback == 1 and rep.coverage == 0.5
    assert not rep.vectors[1].any() and "" not in encoder.seen


def test_unknown_kind_is_refused(items):
    with pytest.raises(ValueError, match="unknown text kind"):
        item_texts(items, "image")


def test_from_texts_encodes_the_chosen_texts_and_reports_coverage(items, descriptions):
    encoder = HashingEncoder()
    texts = item_texts(items, "description", descriptions)
    rep = from_texts("description_image_only", texts, encoder.embed, encoder.dim, "hash-8 on tagger descriptions")
    assert rep.name == "description_image_only" and rep.source == "hash-8 on tagger descriptions"
    assert rep.n_fallback == 2 and rep.n_missing == 0 and rep.coverage == 0.5
    assert rep.fallback_rule == texts.fallback_rule
    np.testing.assert_allclose(rep.vectors[1], encoder.vector("Heat (1995)"), atol=1e-6)
    np.testing.assert_allclose(rep.vectors[2], encoder.vector("A man in a suit before neon lights."), atol=1e-6)


def test_from_features_normalises_rows_and_counts_zero_rows_missing():
    array = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])
    rep = from_features("clip_image", array, "Align-MacridVAE CLIP image features")
    np.testing.assert_allclose(rep.vectors, [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]])
    assert rep.vectors.dtype == np.float32
    assert rep.n_missing == 1 and rep.n_fallback == 0 and rep.coverage == pytest.approx(2 / 3)


@pytest.mark.parametrize("array, message", [(np.array([1.0, 2.0]), "2-d"),
                                            (np.array([[np.nan, 1.0]]), "NaN")])
def test_from_features_refuses_bad_arrays(array, message):
    with pytest.raises(ValueError, match=message):
        from_features("x", array, "test")


def test_save_and_load_round_trip(tmp_path, items):
    encoder = HashingEncoder()
    rep = from_texts("title", item_texts(items, "title"), encoder.embed, encoder.dim, "hash-8 on titles")
    rep.save(tmp_path)
    meta = json.loads((tmp_path / "title.json").read_text())
    assert meta["n_items"] == 4 and meta["dim"] == 8 and meta["coverage"] == 1.0
    loaded = Representation.load(tmp_path, "title")
    np.testing.assert_array_equal(loaded.vectors, rep.vectors)
    assert loaded.meta() == rep.meta()


def test_load_refuses_a_matrix_that_disagrees_with_its_metadata(tmp_path):
    rep = from_features("image", np.eye(3), "identity")
    rep.save(tmp_path)
    np.save(tmp_path / "image.npy", np.eye(2, dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        Representation.load(tmp_path, "image")


def test_load_vectors_names_the_key_and_lists_what_exists(tmp_path):
    from vlm4rec.errors import StudyError
    from vlm4rec.representations import load_vectors

    from_features("image", np.eye(3), "identity").save(tmp_path)
    np.testing.assert_array_equal(load_vectors(tmp_path, "image"), np.eye(3, dtype=np.float32))
    with pytest.raises(StudyError, match="match.representations names 'imgae'.*: image$"):
        load_vectors(tmp_path, "imgae", "match.representations")


def test_a_representation_whose_every_item_fell_back_is_refused_where_it_is_used(tmp_path, items):
    """Every description failed: description_* would be the title's vectors under another name."""
    from vlm4rec.errors import StudyError
    from vlm4rec.representations import load_vectors

    encoder = HashingEncoder()
    void = from_texts("description_image_only", item_texts(items, "description", pd.Series(dtype=object)),
                      encoder.embed, encoder.dim, "hash-8 on no descriptions")
    title = from_texts("title", item_texts(items, "title"), encoder.embed, encoder.dim, "hash-8 on titles")
    np.testing.assert_array_equal(void.vectors, title.vectors)  # what matching it would score
    no_image = from_features("image", np.zeros((4, 3)), "no image at all")
    assert not void.has_content and not no_image.has_content and title.has_content
    for rep in (void, no_image, title):
        rep.save(tmp_path)
    with pytest.raises(StudyError, match=r"match.representations names 'description_image_only', which has no item "
                                         r"of its own: of its 4 items 4 fell back \(.*\) and 0 have no vector"):
        load_vectors(tmp_path, "description_image_only", "match.representations")
    with pytest.raises(StudyError, match=r"fusion.modalities names 'image', .* 0 fell back .* and 4 have no vector"):
        load_vectors(tmp_path, "image", "fusion.modalities")
    assert load_vectors(tmp_path, "title").shape == (4, 8)
