"""Switching ``ground.backend`` in params.yaml: the ground stage runs the same way with ``hf`` (a local
model directory, saved like a user's weights) and ``openai`` (a real loopback server), and a re-run is
served from the description cache."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from random_models import TINY_LLAVA, save_random_vlm
from study_params import RAW, section
from test_grounding_openai import ScriptedServer
from vlm4rec.config import GroundParams
from vlm4rec.data import PreparedData, save_prepared
from vlm4rec.pipeline import ground

KEY_ENV = "VLM4REC_PIPELINE_TEST_KEY"


@pytest.fixture()
def catalogue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Three items (the last without a poster) prepared under ``tmp_path/data/prepared``; cwd = tmp_path."""
    monkeypatch.chdir(tmp_path)
    paths = []
    for i, colour in enumerate([(200, 30, 30), (30, 30, 200)]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (40, 60), colour).save(paths[-1])
    items = pd.DataFrame({"item_idx": np.arange(3), "item_id": ["a", "b", "c"],
                          "title": ["Red (1990)", "Blue (1991)", "None (1992)"], "year": pd.array([1990, 1991, 1992]),
                          "genres": "", "meta_text": "", "image_path": [*paths, None],
                          "has_image": [True, True, False], "image_url": None})
    users = pd.DataFrame({"user_idx": [0], "user_id": ["u"]})
    inter = pd.DataFrame({"user_idx": [0, 0, 0], "item_idx": [0, 1, 2], "timestamp": [1, 2, 3],
                          "rating": np.float32(5), "split": ["train", "val", "test"]})
    save_prepared(PreparedData(items, users, inter), "data/prepared")
    return tmp_path


def ground_params(backend: str, options: dict) -> GroundParams:
    return section("ground", backend=backend, **{backend: RAW["ground"][backend] | options})


def run_twice(params: GroundParams) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Ground twice; the stage's output file must not change when the second run is served from cache
    (later stages would otherwise re-run for nothing)."""
    local = section("compute", executor="local")
    first, metrics = ground.run(params, local)
    written = Path("data/grounding/descriptions.parquet").read_bytes()
    again, _ = ground.run(params, local)
    assert Path("data/grounding/descriptions.parquet").read_bytes() == written
    return first, again, metrics


def check(first: pd.DataFrame, again: pd.DataFrame, metrics: dict, backend: str) -> None:
    assert metrics["grounder"]["backend"] == backend
    for arm in ("image_only", "image_title"):
        rows = first[first["arm"] == arm].set_index("item_id")
        assert list(rows["status"]) == ["ok", "ok", "no_image"]
        assert rows.loc["a", "description"] and metrics["arms"][arm]["described"] == 2
    assert again.loc[again["status"] == "ok", "from_cache"].all()
    assert Path("data/grounding/descriptions.parquet").exists()


def test_hf_backend_from_a_local_model_directory(catalogue: Path) -> None:
    model_dir = save_random_vlm(TINY_LLAVA, catalogue / "tiny-llava")
    first, again, metrics = run_twice(ground_params("hf", {"model": str(model_dir), "max_new_tokens": 4,
                                                           "batch_size": 2, "dtype": "float32"}))
    check(first, again, metrics, "hf")
    assert str(model_dir) in metrics["grounder"]["model"]


def test_openai_backend_against_a_loopback_server(catalogue: Path, monkeypatch: pytest.MonkeyPatch,
                                                  loopback) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-pipeline-secret")
    server = ScriptedServer(loopback)
    first, again, metrics = run_twice(ground_params("openai", {
        "base_url": server.url, "model": "served-vlm", "api_key_env": KEY_ENV, "max_retries": 1,
        "timeout_s": 5}))
    check(first, again, metrics, "openai")
    assert len(server.requests) == 4  # 2 images x 2 prompt arms; the re-run asked nothing
    assert set(first.loc[first["status"] == "ok", "description"]) == {"a red poster"}
    for written in ("data/grounding/descriptions.parquet", "data/grounding/cache.sqlite", "metrics/ground.json"):
        assert b"sk-pipeline-secret" not in Path(written).read_bytes(), written
