"""Every dataset adapter through the stage code the notebooks run: prepare -> ground -> embed -> match.

Each source gets a small synthetic dataset written in its exact file format (the writers of the adapter
tests), with ``params.yaml``'s defaults and only the source keys changed, and must come out the other end
with test metrics for the baselines and its representations (shipped features included), on the same
users and items. The DVC + papermill layer on top of the same functions is covered by test_pipeline.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from test_datasets_amazon import meta, review, write_jsonl
from test_datasets_macridvae import write_pairs
from study_params import typed
from test_datasets_mmrec import write_inter
from vlm4rec.pipeline import embed, fetch, ground, match, prepare

REPO = Path(__file__).resolve().parents[1]
N_USERS, N_ITEMS, PER_USER = 30, 60, 8


def interactions(seed: int = 0) -> list[tuple[int, int, int]]:
    """(user, item, position) triples: user u has the PER_USER items after u * PER_USER (mod N_ITEMS), in
    a random order, so every item is interacted with and stays in the universe."""
    rng = np.random.default_rng(seed)
    return [(u, (u * PER_USER + int(j)) % N_ITEMS, t) for u in range(N_USERS)
            for t, j in enumerate(rng.permutation(PER_USER))]


def amazon_files(root: Path) -> dict:
    images = root / "images"
    images.mkdir(parents=True)
    reviews = [review(f"U{u}", f"B{i:03d}", 5.0, 1_600_000_000 + 1000 * u + t) for u, i, t in interactions()]
    metas = [meta(f"B{i:03d}", f"Product {i} <b>Deluxe</b>", categories=["Shoes"], store="Acme")
             for i in range(N_ITEMS)]
    for i in range(0, N_ITEMS, 2):  # half the items have a product photo
        colour = (40 * (i % 6), 200 - 30 * (i % 5), 90)
        Image.new("RGB", (64, 96), colour).save(images / f"B{i:03d}.jpg")
    return {"reviews_path": str(write_jsonl(root / "Shoes.jsonl.gz", reviews)),
            "meta_path": str(write_jsonl(root / "meta_Shoes.jsonl", metas)), "images_dir": str(images),
            "k_core": 2}


def given_split(position: int) -> str:
    return "train" if position < PER_USER - 2 else ("val" if position == PER_USER - 2 else "test")


def macridvae_files(root: Path) -> dict:
    root.mkdir(parents=True)
    pairs = {"train": [], "val": [], "test": []}
    for u, i, t in interactions():
        pairs[given_split(t)].append((u, i))
    write_pairs(root / "train.txt", pairs["train"], header=True)
    write_pairs(root / "validation.txt", pairs["val"], header=False)
    write_pairs(root / "test.txt", pairs["test"], header=False)
    (root / "items.txt").write_text("asin,item\n" + "".join(f"A{i:04d},{i}\n" for i in range(N_ITEMS)))
    rng = np.random.default_rng(1)
    text, image = (rng.normal(size=(N_ITEMS, 768)).astype(np.float32) for _ in range(2))
    image[[3, 7]] = 0.0  # missing image features, as in the release
    np.save(root / "embed_text.npy", text)
    np.save(root / "embed_image.npy", image)
    return {"root": str(root)}


def mmrec_files(root: Path) -> dict:
    root.mkdir(parents=True)
    label = {"train": 0, "val": 1, "test": 2}
    write_inter(root / "shoes.inter", [(u, i, 5, 1_600_000_000 + t, label[given_split(t)])
                                       for u, i, t in interactions()])
    rng = np.random.default_rng(2)
    np.save(root / "image_feat.npy", rng.normal(size=(N_ITEMS, 4096)).astype(np.float32))
    np.save(root / "text_feat.npy", rng.normal(size=(N_ITEMS, 384)).astype(np.float32))
    return {"root": str(root), "name": "shoes"}


SOURCES = {
    "amazon2023": (amazon_files, ["title", "title_meta", "description_image_only", "image"]),
    "align_macridvae": (macridvae_files, ["title", "clip_title_text", "clip_image"]),
    "mmrec": (mmrec_files, ["mmrec_text_feat", "mmrec_image_feat"]),
}


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_source_runs_through_fetch_prepare_ground_embed_match(source: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    write_files, representations = SOURCES[source]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"] |= {"source": source, source: params["data"][source] | write_files(tmp_path / "raw")}
    params["ground"]["prompt_arms"] = ["image_only"]
    params["match"]["representations"] = representations
    params["baselines"] |= {"itemknn_cf": {"k_neighbours": [5], "shrinkage": [0]}, "ease": {"l2": [10.0]}}
    monkeypatch.chdir(tmp_path)

    p = {key: typed(key, value) for key, value in params.items()}
    fetch.run(p["data"])
    prepared, counts = prepare.run(p["data"], p["split"])
    assert counts["counts"]["users"] == N_USERS and counts["counts"]["interactions_test"] > 0
    ground.run(p["ground"], p["compute"])
    embed.run(p["embed"], p["ground"], p["compute"])
    results, metrics = match.run(p["eval"], p["match"], p["profile"], p["baselines"], p["compute"])

    assert set(metrics["methods"]) == {"mostpop", "itemknn_cf", "ease", *representations}
    for key, result in results.items():
        assert sorted(result.test_per_user["user_idx"]) == list(range(N_USERS)), key
        assert 0.0 <= metrics["methods"][key.name]["test"]["recall@10"] <= 1.0
    embedded = json.loads(Path("metrics/embed.json").read_text())["representations"]
    if source == "align_macridvae":  # zero rows of the release stay missing, never scored as vectors
        assert embedded["clip_image"]["missing"] == 2 and embedded["clip_image"]["coverage"] == pytest.approx(58 / 60)
    if source == "mmrec":  # no metadata file, no titles: title vectors are all missing, never made up
        assert embedded["title"]["missing"] == N_ITEMS and embedded["title"]["coverage"] == 0
    if source == "amazon2023":
        assert embedded["image"]["missing"] == N_ITEMS // 2
        assert embedded["description_image_only"]["fallback"] == N_ITEMS // 2
