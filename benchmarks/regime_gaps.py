"""The regime gap per graph model, from the raw runs of ``bench_regimes.py``: the record the report reads.

Reads every ``benchmarks/results_regime_*.json`` and keeps, per model, the runs of the study's own regimes:
a fast run whose options are exactly what ``params.yaml`` gives the model in the fast regime (its
``graph.default`` grid point included), and a paper run whose regime options are ``graph.training.paper``'s
and whose model options (every option of the model's configuration outside the regime's) equal the fast
run's: the same model in both, only the optimiser differs. Runs of other settings (the tuning variants, a
paper run with another ``projection_weight``) stay out and are listed. Per kept run: its seed, its best
validation NDCG@10 and its settled level (the mean of its last patience window plus the check before it).

  python benchmarks/regime_gaps.py [--params params.yaml] [--out benchmarks/regime_gaps.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from bench_regimes import METRIC, model_options
from vlm4rec.config import GraphParams, GraphTrainingParams, load_params
from vlm4rec.methods import CATALOGUE

HERE = Path(__file__).resolve().parent
REGIME_KEYS = set(GraphTrainingParams.model_fields) | {"device"}


def full_options(model: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` completed with the model configuration's defaults (device aside)."""
    config = CATALOGUE[model].config
    assert config is not None, f"{model} is not a trained model"
    return config(**{k: v for k, v in options.items() if k in config.model_fields}).model_dump()


def model_part(model: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options that describe the model rather than its optimiser."""
    return {k: v for k, v in full_options(model, options).items() if k not in REGIME_KEYS}


def regime_part(model: str, options: dict[str, Any]) -> dict[str, Any]:
    """The optimiser options of a run (its regime's)."""
    return {k: v for k, v in full_options(model, options).items() if k in REGIME_KEYS}


def summary(run: dict[str, Any], path: Path) -> dict[str, Any]:
    """A run's seed, best check and settled level (mean of the last patience + 1 checks)."""
    checks = [check[METRIC] for check in run["checks"]]
    window = run["options"]["patience"] + 1
    return {"file": path.name, "seed": run["seed"], "best": max(checks), "settled": float(np.mean(checks[-window:])),
            "best_epoch": run["best_epoch"], "epochs_run": run["epochs_run"], "stopped_early": run["stopped_early"]}


def is_study_run(graph: GraphParams, run: dict[str, Any], regime: str) -> bool:
    """Whether ``run`` trained in the study's ``regime`` (fast: every option the study's; paper: the
    regime's options the study's, the model options those of the study's fast run)."""
    model, options = run["model"], run["options"]
    fast = model_options(graph, model, "fast", {})
    if regime == "fast":
        return full_options(model, options) == full_options(model, fast)
    return (regime_part(model, options) == regime_part(model, model_options(graph, model, "paper", {}))
            and model_part(model, options) == model_part(model, fast))


def gaps(graph: GraphParams, paths: list[Path]) -> dict[str, Any]:
    """Per model: its study runs by regime, and the runs left out."""
    models: dict[str, dict[str, Any]] = {}
    left_out = []
    for path in paths:
        run = json.loads(path.read_text())
        if "best_epoch" not in run:  # still running
            left_out.append(f"{path.name} (unfinished)")
            continue
        regime = run["regime"]
        if not is_study_run(graph, run, regime):
            left_out.append(f"{path.name} (other settings)")
            continue
        entry = models.setdefault(run["model"], {"modalities": run["modalities"], "fast": [], "paper": []})
        entry[regime].append(summary(run, path))
    for entry in models.values():
        for regime in ("fast", "paper"):
            entry[regime].sort(key=lambda r: r["seed"])
    return {"metric": f"validation {METRIC}", "models": models, "left_out": sorted(left_out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default=str(HERE / "regime_gaps.json"))
    args = parser.parse_args()
    record = gaps(load_params(args.params).graph, sorted(HERE.glob("results_regime_*.json")))
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    for model, entry in record["models"].items():
        for regime in ("fast", "paper"):
            runs = entry[regime]
            print(f"{model} {regime}: {len(runs)} run(s), settled "
                  + ", ".join(f"{r['settled']:.4f} (seed {r['seed']})" for r in runs))
    print("left out:", ", ".join(record["left_out"]))


if __name__ == "__main__":
    main()
