"""The graph cells under two training schedules: what the study says about the multimodal recommenders when
every model trains with one common schedule, beside what it says with the default's.

Inputs are two study directories whose graph stage ran on the same prepared data and embeddings: ``--default``
(the default ``params.yaml``) and ``--common`` (the same study with one schedule for every model, e.g.

    dvc exp run -S graph.training.fast.lr=0.0125 -S graph.training.fast.eval_every=2 \\
        -S graph.training.fast.patience=10 -S graph.training.fast.epochs=100 -S 'graph.training.fast.models={}'

or ``python -m vlm4rec.pipeline.graph CELL`` for each cell in a copy of the study with those values). For each
directory it prints and writes (``--out``, JSON):

- per cell: the schedule, the selection run's best epoch and epochs run, its validation NDCG@10, the test
  NDCG@10 over the seeds (mean and sd) and the cell's wall time;
- inside each model, the description + image cell minus the title + image cell (test NDCG@10, paired bootstrap
  over users and both cells' seeds, unadjusted 95% CI: the report's finding before Holm);
- between models, each title + image cell minus every other model's (and minus LightGCN), the same way.
"""
from __future__ import annotations

import argparse
import json
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from vlm4rec.config import EvalParams, load_params
from vlm4rec.evaluation import MethodKey, MethodResult, load_result, per_user_long
from vlm4rec.findings import compare
from vlm4rec.pipeline.stage_metrics import GraphCellMetrics

METRIC = "ndcg@10"


def cell_results(study: Path) -> dict[str, dict[MethodKey, MethodResult]]:
    """Every finished graph cell's per-seed results under ``study/data/results/graph``, by cell (a cell whose
    ``metrics/graph/<cell>.json`` is not written yet is still running and stays out)."""
    cells: dict[str, dict[MethodKey, MethodResult]] = {}
    for folder in sorted((study / "data/results/graph").glob("*/*@seed*")):
        if not (study / "metrics/graph" / f"{folder.parent.name}.json").exists():
            continue
        result = load_result(folder)
        cells.setdefault(folder.parent.name, {})[result.key] = result
    return cells


def cell_row(study: Path, cell: str, results: dict[MethodKey, MethodResult]) -> dict[str, Any]:
    """One cell's schedule, selection run and test numbers over its seeds."""
    metrics = GraphCellMetrics.load(study / "metrics/graph" / f"{cell}.json")
    test = np.array([r.test_per_user[METRIC].mean() for r in results.values()])
    first = next(iter(results.values()))
    return {"cell": cell, "model": metrics.model, "schedule": metrics.schedule,
            "best_epoch": metrics.training.best_epoch, "epochs_run": metrics.training.epochs_run,
            "stopped_early": metrics.training.stopped_early,
            "validation": float(first.val_per_user[METRIC].mean()),
            "test_mean": float(test.mean()), "test_sd": float(test.std(ddof=1)) if len(test) > 1 else 0.0,
            "seeds": len(test), "wall_s": metrics.cost.wall_s}


def difference(cells: dict[str, dict[MethodKey, MethodResult]], method: str, against: str,
               evaluation: EvalParams) -> dict[str, Any] | None:
    """``method`` minus ``against`` on test NDCG@10 over their shared users and both cells' seeds."""
    if method not in cells or against not in cells:
        return None
    found = compare(f"{method}_vs_{against}", "", per_user_long(cells[method] | cells[against]), method, against,
                    METRIC, "all test users", evaluation)
    assert found is not None
    return {"method": method, "against": against, "difference": found.difference, "ci_low": found.ci_low,
            "ci_high": found.ci_high, "p": found.p, "verdict": found.verdict}


def title_image_cells(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Per model, its title + image cell (LightGCN: its only cell)."""
    return {row["model"]: row["cell"] for row in rows
            if row["cell"].endswith("-title-image") or row["model"] == "lightgcn"}


def summarize(study: Path, evaluation: EvalParams) -> dict[str, Any]:
    """The cells, the within-model and the between-model differences of one study directory."""
    cells = cell_results(study)
    rows = [cell_row(study, cell, results) for cell, results in cells.items()]
    models = sorted({row["model"] for row in rows} - {"lightgcn"})
    within = [difference(cells, f"{m}-description-image", f"{m}-title-image", evaluation) for m in models]
    baseline = title_image_cells(rows)
    between = [difference(cells, baseline[a], baseline[b], evaluation)
               for a, b in combinations(sorted(baseline, key=lambda m: (m == "lightgcn", m)), 2)]
    return {"cells": rows, "within_model": [w for w in within if w], "between_models": [b for b in between if b]}


def print_summary(name: str, summary: dict[str, Any]) -> None:
    print(f"\n== {name}")
    print("cell | schedule (lr, check every, patience, max epochs) | best epoch / run | validation | "
          "test mean ± sd | wall s")
    for row in summary["cells"]:
        s = row["schedule"]
        print(f"{row['cell']} | {s['lr']:g}, {s['eval_every']}, {s['patience']}, {s['epochs']} | "
              f"{row['best_epoch']} / {row['epochs_run']}{'' if row['stopped_early'] else ' (cap)'} | "
              f"{row['validation']:.4f} | {row['test_mean']:.4f} ± {row['test_sd']:.4f} | {row['wall_s']:.0f}")
    for title, key in (("description + image minus title + image", "within_model"),
                       ("between models (title + image cells)", "between_models")):
        print(f"-- {title}")
        for d in summary[key]:
            print(f"{d['method']} - {d['against']}: {d['difference']:+.4f} "
                  f"[{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] {d['verdict']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--default", required=True, type=Path, help="study directory, default schedules")
    parser.add_argument("--common", required=True, type=Path, help="study directory, one common schedule")
    parser.add_argument("--out", type=Path, help="JSON file of both summaries")
    args = parser.parse_args()
    evaluation = load_params(args.default / "params.yaml").eval
    summaries = {name: summarize(study, evaluation) for name, study in
                 (("default", args.default), ("common", args.common))}
    for name, summary in summaries.items():
        print_summary(name, summary)
    if args.out:
        args.out.write_text(json.dumps(summaries, indent=1))


if __name__ == "__main__":
    main()
