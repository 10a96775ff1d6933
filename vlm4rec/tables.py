"""Tables and metrics JSON built from :class:`~vlm4rec.evaluation.MethodResult` objects: the main table
with seed-aware 95% CIs, the paired tests, metric@K curves and the per-method entries of a stage's
metrics file. Results are keyed by :class:`~vlm4rec.evaluation.MethodKey`: a seeded method's seeds enter every
table as one family; the metrics JSON is keyed by the key's name. Given a
:class:`~vlm4rec.evaluation.ChanceReference`, every table has a :data:`CHANCE` row: the expected value of a
uniformly random ranking over the same candidates, per user, so it enters CIs and paired tests like a method."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy.stats import t as stats_t

from vlm4rec.config import EvalParams
from vlm4rec.evaluation import ChanceReference, MethodKey, MethodResult, per_user_long
from vlm4rec.methods import Kind, family_of
from vlm4rec.metrics import CHANCE
from vlm4rec.stats import format_p, paired_tests, results_table

MAIN_TABLE_METRICS = ("recall@10", "ndcg@10", "hit_rate@10", "recall@20", "ndcg@20", "hit_rate@20")


#: The panel of each method kind (:mod:`vlm4rec.methods`) in figures that put each kind in its own panel.
KIND_GROUPS: dict[Kind, str] = {"baseline": "collaborative baselines",
                                "profile": "profile matching (one representation)",
                                "fusion": "content fusions and hybrids", "hybrid": "content fusions and hybrids",
                                "graph_model": "multimodal recommenders", "cold_start_model": "cold-start recommenders"}


def method_group(family: str, representations: Sequence[str]) -> str:
    """Which kind of method a family is (its catalogue kind; a family the catalogue cannot name from
    ``representations`` is a graph cell), for figures that put each kind in its own panel (chance is its own
    kind, which figures draw in every panel)."""
    if family == CHANCE:
        return CHANCE
    found = family_of(family, representations)
    return KIND_GROUPS[found.kind if found is not None else "graph_model"]


def per_user_with_chance(results: dict[MethodKey, MethodResult], chance: ChanceReference | None) -> pd.DataFrame:
    """:func:`~vlm4rec.evaluation.per_user_long` of ``results`` with chance's per-user test values as the
    unseeded method :data:`CHANCE` (when given)."""
    long = per_user_long(results)
    if chance is None:
        return long
    return pd.concat([long, chance.test_per_user.assign(method=CHANCE, seed=float("nan"))], ignore_index=True)


def validation_scores(results: dict[MethodKey, MethodResult], chance: ChanceReference | None = None) -> pd.Series:
    """Per method family, the validation selection metric of its chosen configuration (a seeded family's
    selection run, which every seed's result carries), and chance's on the same validation split, named
    ``validation <metric>``."""
    first = {}
    for key, r in results.items():
        first.setdefault(key.family, r)
    metrics = {r.select_metric for r in first.values()}
    if len(metrics) != 1:
        raise ValueError(f"the methods were selected on different metrics {sorted(metrics)}")
    metric = metrics.pop()
    scores = {f: r.val_summary()[metric] for f, r in first.items()}
    if chance is not None:
        scores[CHANCE] = chance.val_summary()[metric]
    return pd.Series(scores, name=f"validation {metric}")


def main_table(results: dict[MethodKey, MethodResult], evaluation: EvalParams,
               metrics: Sequence[str] = MAIN_TABLE_METRICS,
               chance: ChanceReference | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(long table with mean and 95% CI per method family x metric, wide 'mean [low, high]' display
    table with the validation selection metric first, sorted by it: never by test; ``chance``: a
    :data:`CHANCE` row, ordered by its validation value too). Seeded families' CIs resample users and seeds
    (column ``resampling``)."""
    long = results_table(per_user_with_chance(results, chance), list(metrics), evaluation.bootstrap_resamples,
                         seed=evaluation.seed)
    long["value"] = [f"{m:.4f} [{lo:.4f}, {hi:.4f}]" for m, lo, hi in
                     zip(long["mean"], long["ci_low"], long["ci_high"])]
    wide = long.pivot(index="method", columns="metric", values="value")[list(metrics)]
    seeds = long.groupby("method")["n_seeds"].first()
    wide.insert(0, "seeds", seeds.reindex(wide.index))
    validation = validation_scores(results, chance)
    wide.insert(1, validation.name, validation.reindex(wide.index).round(4))
    wide.insert(2, "resampling", ["users x seeds (seed deviation inflated)" if n > 1 else "users"
                                  for n in wide["seeds"]])
    return long, wide.sort_values(validation.name, ascending=False, kind="stable")


P_COLUMN = "p (paired bootstrap; exploratory, unadjusted)"


def paired_test_table(results: dict[MethodKey, MethodResult], references: Sequence[str], metrics: Sequence[str],
                      evaluation: EvalParams,
                      chance: ChanceReference | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(long paired-test table, compact display table).

    Every method family against each reference on each metric (:func:`vlm4rec.stats.paired_tests`: one
    paired bootstrap over users and both arms' seeds gives the CI of the mean difference and its p; with
    ``chance``, :data:`CHANCE` is a method here and may be a reference). These comparisons are exploratory:
    the display gives the unadjusted p (a bound at the bootstrap's floor), never a Holm p, which belongs to the
    confirmatory family of :mod:`vlm4rec.findings` only. The display has one row per method and metric and,
    per reference, the difference with its unadjusted 95% CI and the p, or why it was not tested.
    """
    per_user = per_user_with_chance(results, chance)
    present = set(per_user["method"])
    long = pd.concat([paired_tests(per_user, ref, metric, evaluation.bootstrap_resamples, evaluation.seed)
                      for ref in references if ref in present for metric in metrics], ignore_index=True)
    if long.empty:
        return long, pd.DataFrame()
    long["difference"] = [f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]" for d, lo, hi in
                          zip(long["mean_diff"], long["diff_ci_low"], long["diff_ci_high"])]
    long[P_COLUMN] = [format_p(p, at_floor) if blocked == "" else f"not tested: {blocked}"
                      for p, at_floor, blocked in zip(long["p"], long["p_at_floor"], long["verdict_blocked_by"])]
    wide = long.pivot_table(index=["metric", "method"], columns="reference",
                            values=["difference", P_COLUMN], aggfunc="first")
    wide = wide.swaplevel(axis=1).sort_index(axis=1, level=0)
    return long, wide


def metric_curves(results: dict[MethodKey, MethodResult], metric: str = "recall",
                  chance: ChanceReference | None = None) -> pd.DataFrame:
    """``metric``@K per method family and K, seeded families averaged over seeds, and :data:`CHANCE`'s when
    given (plot data)."""
    summaries = [(key.family, result.test_summary()) for key, result in results.items()]
    summaries += [(CHANCE, chance.test_summary())] if chance is not None else []
    return summary_curves(summaries, metric)


def summary_curves(summaries: Sequence[tuple[str, dict[str, float]]], metric: str) -> pd.DataFrame:
    """``metric``@K per method family and K from (family, test summary) pairs, a family's summaries (its
    seeds) averaged, in their first appearance's order."""
    rows = [{"method": family, "k": int(name.split("@")[1]), metric: value}
            for family, summary in summaries for name, value in summary.items() if name.startswith(f"{metric}@")]
    frame = pd.DataFrame(rows, columns=["method", "k", metric])
    return frame.groupby(["method", "k"], as_index=False, sort=False)[metric].mean()


def test_metrics_json(results: dict[MethodKey, MethodResult]) -> dict[str, Any]:
    """Per method: test macro metrics, the chosen configuration's validation selection metric, catalogue
    coverage and the chosen configuration (for ``dvc metrics show``), keyed by the method's name."""
    entries = {}
    for key, r in results.items():
        validation = r.val_summary()
        entries[key.name] = {"test": r.test_summary(), "validation": {r.select_metric: validation[r.select_metric]},
                           "coverage": r.coverage, "chosen": r.config}
    return entries


def family_test_summaries(results: dict[MethodKey, MethodResult]) -> dict[str, dict[str, float]]:
    """Each method family's test macro metrics (:func:`~vlm4rec.metrics.summarize`), averaged over its seeds."""
    by_family: dict[str, list[dict[str, float]]] = {}
    for key, result in results.items():
        by_family.setdefault(key.family, []).append(result.test_summary())
    return {family: {metric: float(np.mean([summary[metric] for summary in summaries])) for metric in summaries[0]}
            for family, summaries in by_family.items()}


def timing_json(results: dict[MethodKey, MethodResult]) -> dict[str, dict[str, float]]:
    """Per method name: selection, fit and scoring seconds and users/s (the ``cost`` part of a stage's
    metrics)."""
    return {key.name: {what: round(float(value), 3) for what, value in r.timing.items()}
            for key, r in results.items()}


def seed_spread(results: dict[MethodKey, MethodResult], metric: str) -> pd.DataFrame:
    """Per seeded family: each seed's test ``metric`` (column ``per seed``), their number, mean, standard
    deviation, and the 95% t interval of the mean over seeds (t with seeds - 1 degrees of freedom: the honest
    width for three seeds, which ignores the user sample; the main table's interval adds it)."""
    rows = [{"method": key.family, metric: r.test_summary()[metric]}
            for key, r in results.items() if key.seed is not None]
    frame = pd.DataFrame(rows, columns=["method", metric])
    spread = frame.groupby("method", sort=False)[metric].agg(n_seeds="size", mean="mean", std="std")
    spread.insert(0, "per seed", frame.groupby("method", sort=False)[metric].agg(
        lambda v: ", ".join(f"{x:.4f}" for x in v)))
    half = [stats_t.ppf(0.975, n - 1) * s / np.sqrt(n) if n > 1 else np.nan
            for n, s in zip(spread["n_seeds"], spread["std"])]
    spread["t95_low"], spread["t95_high"] = spread["mean"] - half, spread["mean"] + half
    return spread


def ablation_view(cells: pd.DataFrame, chance: ChanceReference, select_metric: str, top: int = 20) -> pd.DataFrame:
    """The ablation grid's ``top`` configurations by validation (:func:`vlm4rec.pipeline.ablate.ablation_table`,
    already in that order) and a chance row at its validation place: the grid ranks the study split's
    candidates, so chance is the study split's."""
    validation, test = chance.val_summary(), chance.test_summary()
    row = pd.DataFrame([{"representation": CHANCE, "selected": False, f"val_{select_metric}": validation[select_metric],
                         **{f"test_{k}": v for k, v in test.items() if k != "n_users"}}])
    shown = pd.concat([cells.head(top), row], ignore_index=True)
    return shown.sort_values(f"val_{select_metric}", ascending=False, kind="stable").reset_index(drop=True)
