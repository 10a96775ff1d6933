"""benchmarks/bench_regimes.py on tiny data: a check per validation, the JSON rewritten after each."""
from __future__ import annotations

import json
from pathlib import Path

import bench_regimes
from multimodal_helpers import attribute_data
from torch_threads import single_thread  # noqa: F401  (autouse fixture)

from vlm4rec.config import load_params
from vlm4rec.data import save_prepared
from vlm4rec.representations import from_features



def test_records_every_validation_check_and_the_outcome(tmp_path: Path, capsys) -> None:
    data = attribute_data()
    save_prepared(data.prepared, tmp_path / "prepared")
    from_features("image", data.image, "test").save(tmp_path / "embeddings")
    from_features("title", data.image[::-1].copy(), "test").save(tmp_path / "embeddings")
    out = tmp_path / "run.json"
    params = str(Path(__file__).resolve().parents[1] / "params.yaml")
    bench_regimes.main(["--prepared", str(tmp_path / "prepared"), "--embeddings", str(tmp_path / "embeddings"),
                        "--model", "freedom", "--modalities", "title", "image", "--regime", "paper",
                        "--params", params, "--epochs", "2", "--set", "batch_size=64", "--out", str(out)])
    run = json.loads(out.read_text())
    assert [check["epoch"] for check in run["checks"]] == [0, 1, 2]  # paper regime: a check every epoch
    assert run["options"]["lr"] == 0.001 and run["regime"] == "paper"
    assert run["options"]["batch_size"] == 64 and run["options"]["init"] == "reference"
    assert run["epochs_run"] == 2 and run["best_ndcg@10"] == max(c["ndcg@10"] for c in run["checks"])
    assert capsys.readouterr().out.count("  val ndcg@10") == 3
    fast = bench_regimes.model_options(load_params(params).graph, "lightgcn", "fast", {})
    assert fast["eval_every"] == 4 and "lr" not in fast and fast["l2"] == 0.0001


def test_a_models_options_replace_the_shared_ones_of_its_regime() -> None:
    graph = load_params(Path(__file__).resolve().parents[1] / "params.yaml").graph
    fast = graph.training.fast.model_copy(update={"eval_every": 4, "lr": None,
                                                  "models": {"freedom": {"lr": 0.01, "eval_every": 2}}})
    graph = graph.model_copy(update={"training": graph.training.model_copy(update={"fast": fast})})
    freedom = bench_regimes.model_options(graph, "freedom", "fast", {"lr": 0.02})
    assert freedom["eval_every"] == 2 and freedom["lr"] == 0.02  # the model's options, then the overrides
    assert freedom["projection_weight"] == graph.default.grids["freedom"]["projection_weight"][0]
    lightgcn = bench_regimes.model_options(graph, "lightgcn", "fast", {})
    assert lightgcn["eval_every"] == 4 and "lr" not in lightgcn and lightgcn["device"] == graph.device
    paper = bench_regimes.model_options(graph, "freedom", "paper", {})
    assert paper["eval_every"] == graph.training.paper.eval_every and paper["lr"] == graph.training.paper.lr
    assert "projection_weight" not in paper  # the paper regime takes no grid point
