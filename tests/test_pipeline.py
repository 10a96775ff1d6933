"""End-to-end: the real pipeline (dvc repro -> papermill notebooks -> vlm4rec) on a small user sample.

The repository's tracked files are copied into a temporary git repository, ``params.yaml`` is shrunk
(a user sample, a poster subset, smaller grids), and ``dvc repro`` runs every stage exactly as a user
would. The test then checks the stage outputs, recomputes the test metrics from the saved top-K lists
with an independent implementation, and checks DVC's incrementality (a second repro does nothing, a
matching parameter invalidates only matching and what depends on it; a touched module invalidates exactly
the stages that import it).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stage_deps import stage_code_files, stages as dvc_stages

REPO = Path(__file__).resolve().parents[1]
ML1M = (REPO.parent / "shared" / "data" / "ml-1m").resolve()
N_POSTERS = 120

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (ML1M / "ratings.dat").exists(), reason="MovieLens-1M not present")]


def _run(cmd: list[str], cwd: Path) -> str:
    env = os.environ | {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def _small_params(params: dict, posters: Path) -> dict:
    params["data"]["user_sample"] = 40
    params["data"]["movielens_1m"] |= {"root": str(ML1M), "posters_dir": str(posters)}
    params["eval"]["bootstrap_resamples"] = 200
    params["baselines"]["itemknn_cf"] = {"k_neighbours": [20, 50], "shrinkage": [0]}
    params["baselines"]["ease"] = {"l2": [50, 500]}
    params["fusion"] |= {"seeds": [0, 1], "epochs": 3, "combine_grid": ["sum"]}
    params["robustness"]["representations"] = ["title", "description_image_only"]
    params["graph"]["training"]["fast"] |= {"epochs": 4, "eval_every": 2, "batch_size": 4096, "models": {}}
    params["graph"]["cells"] = {"lightgcn": {"model": "lightgcn", "modalities": []},
                                "smore-description-image": {"model": "smore",
                                                            "modalities": ["description_image_only", "image"]}}
    params["cold_start"] |= {"graph_cells": ["smore-description-image"], "seeds": [0, 1], "backbone_epochs": 2}
    # A few cells of each matrix stage: the machinery is the same, each cell costs a process start.
    params["ablation"] = {"grounded": ["description"], "ungrounded": ["title"], "arms": ["image_only"],
                          "aggregations": ["mean", "knn_sum"], "caps": ["all"]}
    return params


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A temporary copy of the repository after a full ``dvc repro`` on the small configuration."""
    root = tmp_path_factory.mktemp("study")
    work = root / "repo"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    stage_outputs = ("data/", "metrics/", "plots/", "reports/", "dvc.lock")  # a developer's earlier runs
    for name in files:
        if (REPO / name).is_file() and not name.startswith(stage_outputs):
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, work / name)
    posters = root / "posters"
    posters.mkdir()
    for poster in sorted((ML1M / "posters").glob("*.jpg"))[:N_POSTERS]:
        shutil.copy2(poster, posters / poster.name)
    params = _small_params(yaml.safe_load((work / "params.yaml").read_text()), posters)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["python", "-m", "vlm4rec.stage_lists", "--write"], work)  # the smaller graph cells and ablation grid
    _run(["git", "init", "-q"], work)
    _run(["git", "add", "-A"], work)
    _run(["git", "commit", "-qm", "study copy"], work)
    _run(["dvc", "repro"], work)
    return work


def test_every_stage_left_its_report_and_metrics(study: Path) -> None:
    stages = yaml.safe_load((study / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        for out in stage.get("outs", []):
            path = next(iter(out)) if isinstance(out, dict) else out
            if "${" not in path:
                assert (study / path).exists(), f"stage {name} did not write {path}"
    assert sorted(p.name for p in (study / "reports").glob("*.html"))
    shown = _run(["dvc", "metrics", "show", "--json"], study)
    assert "recall@10" in shown


def test_metrics_recomputed_independently_from_saved_topk(study: Path) -> None:
    """Recall / NDCG@10 from the saved test top-K lists and test targets, by a plain Python loop; the
    robustness results against a global time cut computed here from the timestamps."""
    inter = pd.read_parquet(study / "data/prepared/interactions.parquet")
    robustness = yaml.safe_load((study / "params.yaml").read_text())["robustness"]
    global_test = inter["timestamp"] >= np.quantile(inter["timestamp"], 1 - robustness["test_ratio"])
    tests = {"match": inter["split"] == "test", "fusion": inter["split"] == "test", "global_time": global_test}
    for stage, is_test in tests.items():
        check_saved_topk(study / "data/results" / stage, inter[is_test].groupby("user_idx")["item_idx"].apply(set))


def test_robustness_counts_the_test_users_without_history_from_the_timestamps(study: Path) -> None:
    inter = pd.read_parquet(study / "data/prepared/interactions.parquet")
    robustness = yaml.safe_load((study / "params.yaml").read_text())["robustness"]
    global_test = inter["timestamp"] >= np.quantile(inter["timestamp"], 1 - robustness["test_ratio"])
    test_users = set(inter.loc[global_test, "user_idx"])
    with_history = test_users & set(inter.loc[~global_test, "user_idx"])
    counted = json.loads((study / "metrics/robustness.json").read_text())["test_users"]
    assert counted == {"all": len(test_users), "with_history": len(with_history),
                       "cold_start": len(test_users - with_history)}


def test_new_item_results_recomputed_from_the_newest_items(study: Path) -> None:
    """The cold_start stage's saved lists against the newest items' interactions, found here from the first
    positives (the newest 10%, their later half the test items): every test user once with the right
    metrics, and among the new items, lists of test new items only."""
    inter = pd.read_parquet(study / "data/prepared/interactions.parquet")
    cold = yaml.safe_load((study / "params.yaml").read_text())["cold_start"]
    first = inter.groupby("item_idx")["timestamp"].min().reset_index().sort_values(["timestamp", "item_idx"])
    n_cold = round(cold["cold_share"] * len(first))
    newest = first["item_idx"].to_numpy()[len(first) - n_cold:]
    test_items = set(newest[round(cold["val_share"] * n_cold):].tolist())
    test = inter[inter["item_idx"].isin(test_items)].groupby("user_idx")["item_idx"].apply(set)
    counts = json.loads((study / "metrics/cold_start.json").read_text())["counts"]
    assert counts["test_cold_items"] == len(test_items) and counts["test_users"] == len(test)
    for candidates in ("all", "cold"):
        check_saved_topk(study / "data/results/cold_start" / candidates, test)
    # warm: each user's main-split test positives on warm items, held out of training; hybrid: those and the new
    warm = inter[inter["split"].eq("test") & ~inter["item_idx"].isin(newest)].groupby("user_idx")["item_idx"].apply(set)
    check_saved_topk(study / "data/results/cold_start/warm", warm)
    check_saved_topk(study / "data/results/cold_start/hybrid", pd.concat([warm, test]).groupby(level=0).agg(
        lambda sets: set().union(*sets)))
    assert {"ease", "lightgcn@seed0"} <= {path.name for path in (study / "data/results/cold_start/warm").iterdir()}
    assert not (study / "data/results/cold_start/cold/ease").exists()  # no signal for new items: not scored there
    warm_cost = json.loads((study / "metrics/cold_start.json").read_text())["warm_cost"]
    families = {path.name.split("@")[0] for path in (study / "data/results/cold_start/warm").iterdir()}
    assert {r["method"] for r in warm_cost["hybrid"]} == families - {"lightgcn"}
    assert all(r["reference"] == "lightgcn" for r in warm_cost["warm"])
    assert all(r["diff_ci_low"] <= r["mean_diff"] <= r["diff_ci_high"] for r in warm_cost["warm"]
               if not r["verdict_blocked_by"])
    # every dedicated cold-start model fed every representation, among the checked lists (seeds for the trained)
    saved = {path.name for path in (study / "data/results/cold_start/cold").iterdir()}
    for model in cold["models"]:
        for rep in cold["model_content"]:
            assert {f"{model}-{rep}", f"{model}-{rep}@seed0"} & saved, (model, rep)
    # the title scores every item (the fixture's poster subset leaves most images without a vector, and a list
    # with fewer scorable candidates than 10 is padded)
    assert set(np.load(study / "data/results/cold_start/cold/title/test_topk.npy")[:, :10].ravel().tolist()) <= test_items


def check_saved_topk(results: Path, test: pd.Series) -> None:
    method_dirs = sorted(results.glob("*"))
    assert method_dirs, results
    for method_dir in method_dirs:
        per_user = pd.read_parquet(method_dir / "test_per_user.parquet")
        topk = np.load(method_dir / "test_topk.npy")
        assert sorted(per_user["user_idx"]) == sorted(test.index), method_dir.name  # every test user, once
        per_user = per_user.set_index("user_idx")
        for row, user in enumerate(per_user.index):
            relevant = test[user]
            hits = [int(item) in relevant for item in topk[row, :10]]
            recall = sum(hits) / len(relevant)
            dcg = sum(1 / np.log2(rank + 2) for rank, hit in enumerate(hits) if hit)
            idcg = sum(1 / np.log2(rank + 2) for rank in range(min(10, len(relevant))))
            assert per_user.loc[user, "recall@10"] == pytest.approx(recall, abs=1e-6), method_dir.name
            assert per_user.loc[user, "ndcg@10"] == pytest.approx(dcg / idcg, abs=1e-6), method_dir.name


def test_reports_show_prose_tables_and_figures_without_code_warnings_or_machine_paths(study: Path) -> None:
    for html in sorted((study / "reports").glob("*.html")):
        text = html.read_text()
        assert "Traceback" not in text and "IProgress" not in text, html.name
        assert str(study) not in text and "site-packages" not in text and "/root/" not in text, html.name
        assert "<img" in text or "<table" in text, html.name
    findings = json.loads((study / "metrics" / "report.json").read_text())["findings"]
    assert {"description_vs_image", "description_vs_title"} <= set(findings)
    assert all(-1 <= f["difference"] <= 1 and f["ci_low"] <= f["difference"] <= f["ci_high"] for f in findings.values())


def test_second_repro_runs_only_the_data_check_and_a_param_invalidates_only_its_readers(study: Path) -> None:
    out = _run(["dvc", "repro"], study)
    assert re.findall(r"Running stage '([^']+)'", out) == ["fetch"], out  # always_changed, cheap, same manifest
    params = yaml.safe_load((study / "params.yaml").read_text())
    params["profile"]["half_life_grid"] = [7]
    (study / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(_run(["dvc", "status", "--json"], study).splitlines()[-1])
    changed = {name.split("@")[0] for name in status}
    assert "prepare" not in changed and "ground" not in changed and "embed" not in changed
    assert "match" in changed
    _run(["git", "checkout", "params.yaml"], study)


@pytest.mark.parametrize("module", ["vlm4rec/metrics.py", "vlm4rec/encoders.py", "vlm4rec/tables.py"])
def test_touching_a_module_invalidates_exactly_the_stages_that_import_it(study: Path, module: str) -> None:
    """dvc status after an edit of one module lists exactly the stages whose code closure (the import
    analysis of tests/test_stage_deps.py) contains it, besides the always-changed fetch stage."""
    importers = {name for name, stage in dvc_stages(study).items() if module in stage_code_files(stage, study)}
    listed = _run(["dvc", "stage", "list", "--name-only"], study).split()
    expected = {name for name in listed if name.split("@")[0] in importers} | {"fetch"}
    path = study / module
    original = path.read_text()
    path.write_text(original + "\n# touched\n")
    try:
        status = json.loads(_run(["dvc", "status", "--json"], study).splitlines()[-1])
    finally:
        path.write_text(original)
    assert set(status) == expected
