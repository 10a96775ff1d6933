"""Reruns are bit-for-bit identical: the match and fuse stages' code, run twice on the same inputs, writes
byte-identical result files (wall times live only in the metrics' ``cost``; learned fusions train with
deterministic kernels and a fixed thread count)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from study_params import typed
from vlm4rec.data import PreparedData, save_prepared
from vlm4rec.pipeline import fuse, match
from vlm4rec.pipeline.outputs import EMBEDDINGS_DIR, PREPARED_DIR, RESULTS_DIR
from vlm4rec.representations import from_features
from vlm4rec.splits import SplitConfig, assign_split

REPO = Path(__file__).resolve().parents[1]
N_USERS, N_ITEMS = 50, 60


def write_inputs() -> None:
    """A prepared dataset with clustered preferences and three representations, in the stage layout."""
    rng = np.random.default_rng(0)
    cluster = np.arange(N_ITEMS) % 4
    rows = [(u, int(i), t, 5.0) for u in range(N_USERS)
            for t, i in enumerate(rng.choice(np.flatnonzero(cluster == u % 4), 8, replace=False))]
    inter = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp", "rating"])
    inter["split"] = assign_split(inter, SplitConfig())
    items = pd.DataFrame({"item_idx": np.arange(N_ITEMS), "item_id": [str(i) for i in range(N_ITEMS)],
                          "title": [f"Item {i}" for i in range(N_ITEMS)], "has_image": True})
    users = pd.DataFrame({"user_idx": np.arange(N_USERS), "user_id": [str(u) for u in range(N_USERS)]})
    save_prepared(PreparedData(items=items, users=users, interactions=inter), PREPARED_DIR)
    centres = rng.normal(size=(4, 16))
    for name in ("title", "description_image_only", "image"):
        vectors = centres[cluster] + rng.normal(size=(N_ITEMS, 16))
        from_features(name, vectors, "synthetic").save(EMBEDDINGS_DIR)


def run_match_and_fuse(raw: dict) -> dict[str, bytes]:
    p = {key: typed(key, raw[key]) for key in ("eval", "match", "profile", "baselines", "compute", "fusion")}
    match.run(p["eval"], p["match"], p["profile"], p["baselines"], p["compute"])
    fuse.run(p["eval"], p["fusion"])
    return {path.relative_to(RESULTS_DIR).as_posix(): path.read_bytes()
            for path in sorted(RESULTS_DIR.rglob("*")) if path.is_file()}


def test_match_and_fuse_write_byte_identical_results_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_inputs()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["match"]["representations"] = ["title", "description_image_only", "image"]
    params["baselines"] |= {"itemknn_cf": {"k_neighbours": [5], "shrinkage": [0]}, "ease": {"l2": [10.0]}}
    params["fusion"] |= {"epochs": 3, "seeds": [0, 1], "batch_size": 16, "negatives": 10, "dim": 16,
                         "combine_grid": ["product"]}
    first = run_match_and_fuse(params)
    metrics_first = json.loads(Path("metrics/fusion.json").read_text())
    shutil.rmtree(RESULTS_DIR)
    second = run_match_and_fuse(params)
    assert sorted(first) == sorted(second) and any(name.startswith("fusion/fusion_gating@seed1/") for name in first)
    changed = [name for name in first if first[name] != second[name]]
    assert not changed, f"reruns differ in {changed}"
    metrics_second = json.loads(Path("metrics/fusion.json").read_text())
    assert metrics_first["training"] == metrics_second["training"] and metrics_first["methods"] == metrics_second["methods"]
