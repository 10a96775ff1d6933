"""The fetch stage glue (vlm4rec/pipeline/fetch.py): the source manifest prepare depends on, the adapter
keys it resolves, and the stage's exit on a machine without the data and without a network."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import get_args

import pytest
import yaml

from test_datasets_movielens_fetch import official, offline_urls  # noqa: F401 (fixtures used here)
from study_params import RAW, section
from test_datasets_movielens_fetch import poster, write_release
from vlm4rec.config import DataParams
from vlm4rec.datasets import INPUT_PATH_KEYS, load_source
from vlm4rec.errors import StudyError
from vlm4rec.pipeline.fetch import run
from vlm4rec.pipeline.source_manifest import SOURCE_MANIFEST, adapter_keys, load_source_manifest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def workdir(tmp_path, monkeypatch) -> Path:
    """An empty project root as the current directory (the stage writes data/raw and metrics there)."""
    work = tmp_path / "project"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def data_params(source: str, **keys) -> DataParams:
    """The repository's ``data`` section with ``source`` chosen and ``keys`` set in ``data.<source>``."""
    return section("data", source=source, images_outside_folder="refuse", **{source: RAW["data"][source] | keys})


@pytest.fixture()
def movielens_params(offline_urls) -> Callable[..., DataParams]:
    """``movielens_params(root, **keys)``: ``data`` for the release at ``root``, where no download can succeed."""
    return lambda root, **keys: data_params("movielens_1m", **{"root": str(root), "posters_dir": None, **offline_urls}
                                                             | keys)


def test_movielens_manifest_metrics_and_adapter_keys(official, movielens_params, workdir, tmp_path):
    root = write_release(tmp_path / "ml-1m", official)
    data = movielens_params(root)
    metrics = run(data)
    assert metrics["release_from"] == "root" and metrics["counts"]["posters_found"] == 3
    assert json.loads((workdir / "metrics" / "fetch.json").read_text())["counts"] == metrics["counts"]
    manifest = load_source_manifest()
    assert manifest["source"] == "movielens_1m" and manifest["root"] == root.as_posix()
    assert manifest["posters_dir"] == (root / "posters").as_posix()
    assert set(manifest["files"]) == {"ratings.dat", "movies.dat", "users.dat"}
    assert manifest["movies_without_poster"] == ["73"]
    keys = adapter_keys(data)
    assert keys == {"root": root.as_posix(), "posters_dir": (root / "posters").as_posix(),
                    "images_outside_folder": "refuse"}
    assert load_source("movielens_1m", **keys).counts["posters_found"] == 3
    assert not (workdir / "data" / "raw" / "ml-1m").exists()  # nothing downloaded


def test_manifest_bytes_change_only_when_a_file_does(official, movielens_params, workdir, tmp_path):
    root = write_release(tmp_path / "ml-1m", official)
    data = movielens_params(root)
    run(data)
    before = SOURCE_MANIFEST.read_bytes()
    run(data)
    assert SOURCE_MANIFEST.read_bytes() == before
    (root / "posters" / "99.jpg").write_bytes(poster("1"))  # another picture
    run(data)
    assert SOURCE_MANIFEST.read_bytes() != before


def test_prepare_refuses_a_manifest_fetched_with_other_keys(official, movielens_params, workdir, tmp_path):
    """Changing data.movielens_1m.root and running prepare alone must not read the folder the last fetch
    found."""
    root = write_release(tmp_path / "ml-1m", official)
    data = movielens_params(root)
    run(data)
    moved = movielens_params(tmp_path / "elsewhere")
    with pytest.raises(StudyError, match=rf"^data.movielens_1m.root is '{tmp_path}/elsewhere' but the fetch stage last "
                                         rf"ran with '{root}': run the fetch stage first \(dvc repro fetch\)"):
        adapter_keys(moved)
    with pytest.raises(StudyError, match=r"data.movielens_1m.posters_dir is '/p' but the fetch stage last ran with None"):
        adapter_keys(movielens_params(root, posters_dir="/p"))
    assert adapter_keys(data)["root"] == root.as_posix()


def test_other_sources_are_fingerprinted_by_size_and_mtime_never_downloaded(workdir, tmp_path):
    root, images = tmp_path / "baby", tmp_path / "images"
    root.mkdir()
    images.mkdir()
    for name in ("baby.inter", "image_feat.npy", "text_feat.npy"):
        (root / name).write_bytes(b"x" * 10)
    (images / "0.jpg").write_bytes(b"jpeg")
    data = data_params("mmrec", root=str(root), name="baby", meta_csv=str(tmp_path / "meta.csv"),
                       images_dir=str(images))
    metrics = run(data)
    paths = load_source_manifest()["paths"]
    assert metrics["counts"] == {"paths": 3, "paths_missing": 1}
    assert paths["root"]["files"] == 3 and paths["root"]["bytes"] == 30
    assert paths["meta_csv"] == {"path": (tmp_path / "meta.csv").as_posix(), "missing": True}
    before = SOURCE_MANIFEST.read_bytes()
    (images / "1.jpg").write_bytes(b"jpeg")
    run(data)
    assert load_source_manifest()["paths"]["images_dir"]["files"] == 2 and SOURCE_MANIFEST.read_bytes() != before
    assert adapter_keys(data) == data.mmrec.model_dump() | {"images_outside_folder": "refuse"}


def test_stage_outputs_must_match_the_chosen_source(workdir):
    mmrec = data_params("mmrec", root="baby", name="baby")
    with pytest.raises(StudyError, match="source.json is missing: run `dvc repro`"):
        adapter_keys(mmrec)
    run(data_params("amazon2023", reviews_path="r.jsonl", meta_path="m.jsonl"))
    with pytest.raises(StudyError, match="records source 'amazon2023' but data.source is 'mmrec'"):
        adapter_keys(mmrec)


def test_every_source_but_movielens_has_its_input_paths_listed():
    """The fetch stage fingerprints a source other than MovieLens-1M by the paths its loader reads."""
    assert {"movielens_1m", *INPUT_PATH_KEYS} == set(get_args(DataParams.model_fields["source"].annotation))


def test_stage_command_without_data_or_network_prints_the_instruction(workdir, tmp_path, refused_url):
    zip_url = refused_url("/ml-1m.zip")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["movielens_1m"] |= {"root": "../shared/data/ml-1m", "zip_url": zip_url,
                                       "posters_url": refused_url("/{movie_id}.jpg")}
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    (workdir / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    env = os.environ | {"PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "vlm4rec.pipeline.fetch"], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        f"ERROR: MovieLens-1M is not at ../shared/data/ml-1m and could not be downloaded from {zip_url} "
        "(Connection refused). Provide a folder holding the official ml-1m files ratings.dat, movies.dat, "
        "users.dat and posters/<MovieID>.jpg, and set data.movielens_1m.root to it (params.yaml).")
    assert not (workdir / "data" / "raw" / "source.json").exists()
