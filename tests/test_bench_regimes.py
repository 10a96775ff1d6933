"""benchmarks/bench_regimes.py on tiny data: a check per validation, the JSON rewritten after each."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from multimodal_helpers import attribute_data
from torch_threads import single_thread  # noqa: F401  (autouse fixture)

from vlm4rec.data import save_prepared
from vlm4rec.representations import from_features

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_regimes  # noqa: E402


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
    fast = bench_regimes.model_options(bench_regimes.yaml.safe_load(Path(params).read_text())["graph"],
                                       "lightgcn", "fast", {})
    assert fast["eval_every"] == 4 and "lr" not in fast and fast["l2"] == 0.0001
