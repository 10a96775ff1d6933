"""The graph models' new-item forms fed the title + image beside the description + image, read against the
profiles, from the results of a cold_start run whose ``cold_start.graph_cells`` lists both cells of a model
(the default lists the description cells only: the title cells cost about a minute and a half more than the
stage's budget holds, benchmarks/README.md).

For each model with both ``<model>-description-image`` and ``<model>-title-image`` among the saved results, the
script prints, per new-item setting (the new items among themselves, ``cold``, and among all items, ``all``),
each cell's test metric (mean over seeds), the title and description profiles' and chance's, and the
description cell minus each of the others with the stage's two-way bootstrap CI and unadjusted p (users and
new items resampled, seeds as arms: :func:`vlm4rec.cold_start.new_item_findings`). Run in the study folder of
that run (it reads params.yaml, the prepared data and ``data/results/cold_start``):

  python benchmarks/new_item_title_cells.py --out benchmarks/results_new_item_title_cells.json
"""
from __future__ import annotations

import argparse
from typing import Any

from bench_regimes import measure_and_record  # the script's folder is on sys.path
from vlm4rec.cold_start import NEW_ITEM_SETS, NewItemData, new_item_findings, p_or_why_not
from vlm4rec.config import StudyParams, load_params
from vlm4rec.evaluation import ChanceReference, MethodKey, MethodResult, load_result
from vlm4rec.pipeline.new_item_data import chance_references, new_item_data
from vlm4rec.pipeline.outputs import RESULTS_DIR
from vlm4rec.tables import family_test_summaries

COMPARISON_KEYS = ("method", "reference", "mean_method", "mean_reference", "mean_diff", "diff_ci_low",
                   "diff_ci_high", "p", "p_at_floor", "verdict_blocked_by", "diff_ci_low_users", "diff_ci_high_users")


def saved_families(setting: str, families: set[str]) -> dict[MethodKey, MethodResult]:
    """The saved results of ``families`` (every seed) in ``setting``."""
    found = {}
    for folder in sorted((RESULTS_DIR / "cold_start" / setting).iterdir()):
        key = MethodKey.parse(folder.name)
        if key.family in families:
            found[key] = load_result(folder)
    return found


def compare_model(model: str, params: StudyParams, data: NewItemData, chance: dict[str, ChanceReference],
                  n_resamples: int) -> dict[str, Any]:
    """One model's two cells and the profiles they are read against, per new-item setting of ``data`` (the
    stage's split) with its ``chance``."""
    cold_start, evaluation, description = params.cold_start, params.eval, params.report.findings.description
    cells = {f"{model}-description-image", f"{model}-title-image"}
    out: dict[str, Any] = {"model": model, "metric": cold_start.metric, "variant": cold_start.variant,
                           "seeds": cold_start.seeds, "settings": {}}
    for setting in NEW_ITEM_SETS:
        results = saved_families(setting, cells | {"title", description})
        means = {family: summary[cold_start.metric] for family, summary in family_test_summaries(results).items()}
        found = new_item_findings(results, data.test_targets, f"{model}-description-image", cold_start.metric,
                                  chance[setting], n_resamples, evaluation.seed)
        out["settings"][setting] = {
            "means": means | {"chance": chance[setting].test_summary()[cold_start.metric]},
            "comparisons": [{key: row[key] for key in COMPARISON_KEYS} for row in found.to_dict("records")]}
    return out


def tested_p(row: dict[str, Any]) -> str:
    """``p <value>``, or why the comparison was not tested."""
    text = p_or_why_not(row)
    return text if row["verdict_blocked_by"] else f"p {text}"


def summary_lines(entry: dict[str, Any]) -> list[str]:
    """Per setting each family's mean over seeds, then each comparison with its two-way CI and p."""
    lines = []
    for setting, found in entry["settings"].items():
        means = ", ".join(f"{family} {value:.4f}" for family, value in sorted(found["means"].items(),
                                                                                key=lambda kv: -kv[1]))
        lines.append(f"{entry['model']:8s} {setting:4s} {entry['metric']}: {means}")
        for row in found["comparisons"]:
            lines.append(f"{entry['model']:8s} {setting:4s} {row['method']} - {row['reference']}: "
                         f"{row['mean_diff']:+.4f} (95% CI {row['diff_ci_low']:+.4f} .. {row['diff_ci_high']:+.4f}; "
                         f"{tested_p(row)})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vbpr", "freedom"])
    parser.add_argument("--out", default=None, help="JSON file for the numbers")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (the report's)")
    args = parser.parse_args()
    params = load_params()
    data, _ = new_item_data(params.cold_start, params.eval)
    chance = chance_references(data, params.eval.ks)
    measure_and_record(args.models, lambda model: compare_model(model, params, data, chance, args.resamples),
                       summary_lines, args.out, "models")


if __name__ == "__main__":
    main()
