"""Report stage: everything read back from the stage outputs, nothing recomputed but statistics.

The report opens with findings generated from the numbers: each of the study's questions answered with
the paired difference, its 95% CI and the Holm-corrected paired-bootstrap p-value (users and both arms'
seeds resampled; Holm across the findings), plus the caveats that apply. The same findings go to
``metrics/report.json`` so that ``dvc exp show`` compares them across experiments.
"""
from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from vlm4rec.config import GraphModel
from vlm4rec.data import PreparedData, load_prepared
from vlm4rec.evaluation import MethodResult, load_result
from vlm4rec.pipeline.outputs import GROUNDING_DIR, METRICS_DIR, PREPARED_DIR, RESULTS_DIR, write_json
from vlm4rec.pipeline.tables import format_p, method_family, per_user_long, seed_of
from vlm4rec.slices import (HISTORY_BINS, history_lengths, item_popularity_groups, per_user_recall_on,
                            slices_for_methods)
from vlm4rec.stats import holm_where_tested, paired_tests

RESULT_STAGES = ("match", "fusion", "graph")
SIGNIFICANCE = 0.05
MODEL_NAMES: dict[GraphModel, str] = {"lightgcn": "LightGCN", "vbpr": "VBPR", "freedom": "FREEDOM", "smore": "SMORE"}


def load_all_results(graph_cells: Collection[str], stages: tuple[str, ...] = RESULT_STAGES) -> dict[str, MethodResult]:
    """Every method evaluated by the given stages, by name: each result folder under ``data/results/<stage>``
    (a graph cell's seeds one level further down), graph results only for the cells in ``graph_cells``
    (params ``graph.cells``): a folder left by a cell no longer in params is stale and stays out of the
    tables and the Holm families."""
    return {path.parent.name: load_result(path.parent) for stage in stages
            for path in sorted((RESULTS_DIR / stage).rglob("chosen.json"))
            if stage != "graph" or method_family(path.parent.name) in graph_cells}


def families(results: dict[str, MethodResult]) -> dict[str, list[str]]:
    """Result names grouped by method family (seeds of one method together), in result order."""
    grouped: dict[str, list[str]] = {}
    for name in results:
        grouped.setdefault(method_family(name), []).append(name)
    return grouped


def validation_score(results: dict[str, MethodResult], family: str, metric: str) -> float:
    """A family's validation ``metric`` (its selection run: the first seed's for seeded families)."""
    return results[families(results)[family][0]].val_summary()[metric]


def best_by_validation(results: dict[str, MethodResult], candidates: list[str], metric: str) -> str:
    """The family among ``candidates`` with the best validation metric (never chosen on test)."""
    present = [c for c in candidates if c in families(results)]
    if not present:
        raise ValueError(f"none of {candidates} has results")
    return max(present, key=lambda c: validation_score(results, c, metric))


@dataclass
class Finding:
    """One of the study's questions, answered by a paired comparison on test (:func:`vlm4rec.stats.paired_tests`).

    ``seeds``: (method's, against's) training seeds; ``p``: the paired-bootstrap p (NaN when untested);
    ``verdict_blocked_by``: why no verdict is given ("one seed"), empty otherwise."""

    id: str
    question: str
    method: str
    against: str
    metric: str
    users: str
    n_users: int
    seeds: tuple[int, int]
    difference: float
    ci_low: float
    ci_high: float
    p: float
    verdict_blocked_by: str = ""
    p_holm: float = float("nan")

    @property
    def answer(self) -> str:
        if self.verdict_blocked_by:
            verdict = f"{self.verdict_blocked_by}: no verdict"
        elif self.p_holm < SIGNIFICANCE and (self.ci_low > 0 or self.ci_high < 0):
            verdict = "yes" if self.difference > 0 else "no, it is worse"
        else:
            verdict = "no clear difference"
        test = "" if self.verdict_blocked_by else f", Holm-corrected paired-bootstrap p = {format_p(self.p_holm)}"
        return (f"{verdict}: {self.method} - {self.against} = {self.difference:+.4f} {self.metric} "
                f"[95% CI {self.ci_low:+.4f}, {self.ci_high:+.4f}]{test}, {self.n_users:,} users ({self.users}), "
                f"{self.seeds[0]} vs {self.seeds[1]} seed(s)")


def _compare(fid: str, question: str, per_user: pd.DataFrame, method: str, against: str, metric: str,
             users: str, evaluation: dict[str, Any]) -> Finding | None:
    """Paired comparison of two families in a per-user table (columns method, seed, user_idx, metric);
    None when the slice holds no user of both."""
    pair = per_user[per_user["method"].isin([method, against])]
    if set(pair["method"]) != {method, against}:
        return None
    row = paired_tests(pair, against, metric, evaluation["bootstrap_resamples"], evaluation["seed"]).iloc[0]
    return Finding(fid, question, method, against, metric, users, int(row["n_users"]),
                   (int(row["n_seeds"]), int(row["n_seeds_reference"])), float(row["mean_diff"]),
                   float(row["diff_ci_low"]), float(row["diff_ci_high"]), float(row["p"]),
                   str(row["verdict_blocked_by"]))


def holm_across(found: Sequence[Finding]) -> None:
    """Set each finding's ``p_holm``: Holm across the findings that were tested (a one-seed comparison has
    no p and is not in the family)."""
    for finding, p in zip(found, holm_where_tested([f.p for f in found])):
        finding.p_holm = float(p)


def restricted_per_user(results: dict[str, MethodResult], names: list[str], prepared: PreparedData,
                        items: np.ndarray | None = None, users: np.ndarray | None = None,
                        k: int = 20) -> pd.DataFrame:
    """Per-user recall@k of the named families over a slice: only the test items in ``items`` (users
    with at least one such item), or only the users in ``users`` (no rows when the slice is empty)."""
    frames = []
    for family in names:
        for name in families(results)[family]:
            r = results[name]
            ranked_users = r.test_per_user["user_idx"].to_numpy()
            if items is not None:
                table = per_user_recall_on(r.test_topk, ranked_users, prepared.interactions, items, k)
            else:
                table = r.test_per_user[r.test_per_user["user_idx"].isin(users)][["user_idx", f"recall@{k}"]]
            frames.append(table.assign(method=family, seed=seed_of(name)))
    return pd.concat(frames, ignore_index=True).astype({"seed": "float64"})


def graph_pairs(cells: dict[str, Any], description: str, title: str, image: str) -> dict[str, tuple[str, str]]:
    """Per multimodal model: its (description + image, title + image) cells, where both exist."""
    by_modalities = {(cell["model"], tuple(cell["modalities"])): name for name, cell in cells.items()}
    pairs = {}
    for model in dict.fromkeys(cell["model"] for cell in cells.values()):
        with_description = by_modalities.get((model, (description, image)))
        with_title = by_modalities.get((model, (title, image)))
        if with_description and with_title:
            pairs[model] = (with_description, with_title)
    return pairs


def findings(results: dict[str, MethodResult], evaluation: dict[str, Any], report: dict[str, Any],
             representations: list[str], prepared: PreparedData,
             graph_cells: dict[str, Any] | None = None) -> list[Finding]:
    """The study's questions, each a paired test on test users; Holm across all of them.

    Which fusion and which single representation are compared is decided on validation; inside each
    multimodal recommender the description + image cell is compared with the title + image cell."""
    cfg = report["findings"]
    metric, description, title, image = cfg["metric"], cfg["description"], cfg["title"], cfg["image"]
    per_user = per_user_long(results)
    out: list[Finding | None] = [
        _compare("description_vs_image", "Do grounded descriptions beat raw visual features?", per_user,
                 description, image, metric, "all test users", evaluation),
        _compare("description_vs_title", "Do grounded descriptions beat the title?", per_user,
                 description, title, metric, "all test users", evaluation)]
    fusions = [f for f in families(results) if f.startswith("fusion_")]
    singles = [r for r in representations if r in families(results)]
    if fusions and singles:
        best_fusion = best_by_validation(results, fusions, evaluation["select_metric"])
        best_single = best_by_validation(results, singles, evaluation["select_metric"])
        out.append(_compare("fusion_vs_best_single", "Does the best content fusion beat the best single "
                            "representation (both chosen on validation)?", per_user, best_fusion, best_single,
                            metric, "all test users", evaluation))
    for model, (with_description, with_title) in graph_pairs(graph_cells or {}, description, title, image).items():
        if {with_description, with_title} <= set(families(results)):
            out.append(_compare(f"{model}_description_vs_title", f"Does the grounded description help "
                                f"{MODEL_NAMES.get(model, model)} "
                                "(description + image against title + image)?", per_user, with_description,
                                with_title, metric, "all test users", evaluation))
    hybrid = f"hybrid_{description}_ease"
    if hybrid in families(results) and "ease" in families(results):
        out.append(_compare("hybrid_vs_ease", "Do grounded descriptions add to collaborative filtering "
                            f"({hybrid} against EASE^R)?", per_user, hybrid, "ease", metric, "all test users",
                            evaluation))
    k = cfg["slice_k"]
    cold = np.flatnonzero(item_popularity_groups(prepared.interactions, prepared.n_items).to_numpy() == "cold")
    lengths = history_lengths(prepared.interactions)
    short_users = lengths.index[lengths <= cfg["short_history"]].to_numpy()
    for against in (title, image):
        cold_table = restricted_per_user(results, [description, against], prepared, items=cold, k=k)
        out.append(_compare(f"description_vs_{against}_cold_items",
                            f"Do descriptions beat {against} on cold test items?", cold_table, description,
                            against, f"recall@{k}", "users with a cold test item; recall over those items", evaluation))
        short_table = restricted_per_user(results, [description, against], prepared, users=short_users, k=k)
        out.append(_compare(f"description_vs_{against}_short_histories",
                            f"Do descriptions beat {against} for users with short histories?", short_table,
                            description, against, f"recall@{k}",
                            f"users with at most {cfg['short_history']} history items", evaluation))
    answered = [finding for finding in out if finding is not None]
    holm_across(answered)
    return answered


def graph_table(results: dict[str, MethodResult], evaluation: dict[str, Any], report: dict[str, Any],
                graph_cells: dict[str, Any], prepared: PreparedData) -> pd.DataFrame:
    """Does the grounded description help a multimodal recommender? Per model: the paired difference
    (description + image minus title + image) on the headline metric and on recall over cold test items,
    each with its 95% CI over users and both cells' seeds and the paired-bootstrap p (Holm across the
    models), and the two cells' wall time (all seeds)."""
    cfg = report["findings"]
    pairs = graph_pairs(graph_cells, cfg["description"], cfg["title"], cfg["image"])
    pairs = {m: p for m, p in pairs.items() if set(p) <= set(families(results))}
    if not pairs:
        return pd.DataFrame()
    per_user = per_user_long(results)
    cold = np.flatnonzero(item_popularity_groups(prepared.interactions, prepared.n_items).to_numpy() == "cold")
    rows = []
    for model, (with_description, with_title) in pairs.items():
        overall = _compare(model, "", per_user, with_description, with_title, cfg["metric"], "", evaluation)
        cold_users = restricted_per_user(results, [with_description, with_title], prepared, items=cold, k=cfg["slice_k"])
        on_cold = _compare(model, "", cold_users, with_description, with_title, f"recall@{cfg['slice_k']}", "",
                           evaluation)
        seconds = [json.loads((METRICS_DIR / "graph" / f"{cell}.json").read_text())["cost"]["wall_s"]
                   for cell in (with_description, with_title)]
        rows.append({"model": MODEL_NAMES.get(model, model), "cells": f"{with_description} vs {with_title}",
                     "overall": overall,
                     "cold": on_cold, "wall_s (both cells)": round(sum(seconds), 1)})
    for column in ("overall", "cold"):
        holm_across([row[column] for row in rows if row[column] is not None])
    return pd.DataFrame([{"model": r["model"], "cells": r["cells"],
                          **_summary(r["overall"], cfg["metric"]), **_summary(r["cold"], "cold-item recall"),
                          "wall_s (both cells)": r["wall_s (both cells)"]} for r in rows]).set_index("model")


def _summary(finding: Finding | None, label: str) -> dict[str, str]:
    if finding is None:
        return {f"{label}: difference [95% CI]": "no users", f"{label}: p (Holm across models)": ""}
    p = f"{finding.verdict_blocked_by}: no verdict" if finding.verdict_blocked_by else format_p(finding.p_holm)
    return {"seeds": f"{finding.seeds[0]} vs {finding.seeds[1]}",
            f"{label}: difference [95% CI]":
                f"{finding.difference:+.4f} [{finding.ci_low:+.4f}, {finding.ci_high:+.4f}]",
            f"{label}: p (Holm across models)": p}


def graph_training_curves(results: dict[str, MethodResult]) -> pd.DataFrame:
    """Validation metric per evaluated epoch of every graph cell's selection run (chosen configuration)."""
    rows = [{"cell": method_family(name), "epoch": epoch, "validation": value}
            for name, r in results.items() if r.training is not None for epoch, value in r.training["curve"]]
    return pd.DataFrame(rows, columns=["cell", "epoch", "validation"]).drop_duplicates()  # seeds share selection


def runs_at_epoch_cap(results: dict[str, MethodResult], fusion_training: dict[str, Any]) -> list[str]:
    """The monitored training runs that ended at their epoch cap instead of by early stopping (their
    validation curve may still have been improving): graph cells by name, learned fusions by kind, seed and
    configuration (``fusion_training``: the ``training`` entry of ``metrics/fusion.json``)."""
    graph = sorted({method_family(name) for name, r in results.items()
                    if r.training is not None and not r.training["stopped_early"]})
    fusion = sorted(f"fusion_{run['kind']} seed {run['seed']} {json.dumps(run['config'], sort_keys=True)}"
                    for run in fusion_training.values() if not run["stopped_early"])
    return graph + fusion


GRAPH_TUNING_RECORD = "benchmarks/README.md, 'Validation curves on ML-1M and the cost of a study cell'"


def graph_tuning_note(graph_cells: Collection[str]) -> str | None:
    """Where the graph cells' hyperparameters were chosen: cells whose grid (``metrics/graph/<cell>.json``)
    held one configuration ran defaults tuned outside this pipeline, on ML-1M validation, as recorded in
    :data:`GRAPH_TUNING_RECORD`; None when every cell searched a grid here."""
    fixed = {}
    for cell in graph_cells:
        path = METRICS_DIR / "graph" / f"{cell}.json"
        if path.exists():
            metrics = json.loads(path.read_text())
            if metrics["training"]["grid_size"] == 1:
                fixed[cell] = metrics["scale"]
    if not fixed:
        return None
    scales = ", ".join(sorted(set(fixed.values())))
    return (f"{len(fixed)} graph cell(s) trained one configuration each (graph.scale: {scales}), so this run's "
            "validation chose only their epoch: their learning rate and L2 are defaults tuned outside the "
            f"pipeline by single validation runs on ML-1M ({GRAPH_TUNING_RECORD}). graph.scale: full searches "
            f"its grids on validation inside the pipeline. Cells: {', '.join(sorted(fixed))}.")


def p_floor_note(found: Sequence[Finding], n_resamples: int) -> str | None:
    """A caveat when the bootstrap is too coarse for Holm: no p can fall below 2 / (n_resamples + 1), so with
    m tested findings the smallest Holm-corrected p is at least m times that; None when that is below
    :data:`SIGNIFICANCE`."""
    tested = sum(not np.isnan(f.p) for f in found)
    floor = 2 / (n_resamples + 1)
    if tested * floor < SIGNIFICANCE:
        return None
    return (f"With eval.bootstrap_resamples = {n_resamples:,} no p-value falls below {floor:.4f}, so none of the "
            f"{tested} tested findings can reach Holm-corrected p < {SIGNIFICANCE}: raise it for verdicts.")


def caveats(grounding: dict[str, Any], split: str, robustness: pd.DataFrame | None,
            capped_runs: Sequence[str] = (), cold_start: dict[str, int] | None = None,
            more: Sequence[str | None] = ()) -> list[str]:
    """What a reader must keep in mind when reading the findings, from the stage outputs
    (``capped_runs``: :func:`runs_at_epoch_cap`; ``cold_start``: the robustness stage's ``test_users``
    counts; ``more``: further notes such as :func:`graph_tuning_note` and :func:`p_floor_note`, None
    ones skipped)."""
    notes = [f"Every description comes from: {grounding['grounder']['description_of_method']}."]
    if grounding["grounder"]["backend"] == "tagger":
        notes.append("The default grounder is a classifier-based tagger, not a vision-language model: the "
                     "findings on descriptions are about its descriptions and do not measure an LVLM.")
    for arm, counts in grounding["arms"].items():
        notes.append(f"Prompt arm {arm}: {counts['ok']:,} of {counts['items']:,} items described; "
                     f"{counts['title_mention_rate']:.1%} of the descriptions name their item's title.")
    if split == "source":
        notes.append("The split is the source's own (split.protocol was not applied).")
    elif split != "global_time":
        notes.append(f"The split is {split}: one user's training data can postdate another user's test data. "
                     "The robustness table re-evaluates the main methods under a global time cut, which shows "
                     "how much each method's score depends on that.")
    if robustness is not None and len(robustness) > 1:
        tau = robustness[["study_split", "global_time"]].corr(method="kendall").iloc[0, 1]
        notes.append(f"Kendall's tau between the two protocols' orderings of {len(robustness)} methods "
                     f"(global time cut: users with a history only): {tau:.2f}.")
    if cold_start is not None and cold_start["cold_start"]:
        notes.append(f"Under the global time cut {cold_start['cold_start']:,} of {cold_start['all']:,} test users "
                     f"({cold_start['cold_start'] / cold_start['all']:.0%}) have no history; the robustness "
                     "comparison leaves them out and the cold-start table shows what each method returns them.")
    notes += [note for note in more if note]
    if capped_runs:
        notes.append(f"{len(capped_runs)} training run(s) reached their epoch cap before early stopping ended "
                     "them, so their validation curve may not have flattened (raise fusion.epochs or "
                     f"graph.training.<regime>.epochs): {'; '.join(capped_runs)}.")
    return notes


def load_robustness() -> dict[str, Any] | None:
    """``metrics/robustness.json`` (None when the robustness stage has not run)."""
    path = METRICS_DIR / "robustness.json"
    return json.loads(path.read_text()) if path.exists() else None


def robustness_table(metric: str, robustness: dict[str, Any] | None) -> pd.DataFrame | None:
    """Test ``metric`` of each method under the study's split (all test users) and under the robustness
    protocol on its test users with a non-empty history, with their ranks, sorted by the study split's
    validation selection metric (None when the robustness stage has not run). The users without history
    are in :func:`cold_start_table`."""
    if robustness is None:
        return None
    main = json.loads((METRICS_DIR / "match.json").read_text())["methods"]
    rows = [{"method": m, **{f"validation {k}": v for k, v in main[m]["validation"].items()},
             "study_split": main[m]["test"][metric], robustness["protocol"]: e["test_with_history"][metric]}
            for m, e in robustness["methods"].items() if m in main]
    table = pd.DataFrame(rows).set_index("method")
    table = table.sort_values(table.columns[0], ascending=False, kind="stable")
    for column in ("study_split", robustness["protocol"]):
        table[f"rank ({column})"] = table[column].rank(ascending=False, method="min").astype(int)
    return table


def cold_start_table(metric: str, robustness: dict[str, Any] | None) -> pd.DataFrame | None:
    """Per method, under the robustness protocol: its test ``metric`` on the test users without history and
    what its lists are for them (one tied list in item-index order, one list for all, or distinct lists)."""
    if robustness is None:
        return None
    rows = {m: {f"test {metric}": e["cold_start"]["test"].get(metric, np.nan), "lists": e["cold_start"]["lists"]}
            for m, e in robustness["methods"].items()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("method")


def load_new_items() -> dict[str, Any]:
    """``metrics/cold_start.json``: the strict new-item protocol's counts, test metrics and findings."""
    return json.loads((METRICS_DIR / "cold_start.json").read_text())


def new_item_table(metrics: Sequence[str], new_items: dict[str, Any]) -> pd.DataFrame:
    """Per method family, each test metric on the new items ranked among all items and among the new items
    (a seeded family: the mean over its seeds, with their number), then the methods with no signal for a new
    item, shown as such."""
    values: dict[str, dict[str, list[float]]] = {}
    for candidates, methods in new_items["methods"].items():
        for name, entry in methods.items():
            for metric in metrics:
                values.setdefault(method_family(name), {}).setdefault(f"{metric} (among {candidates})", []).append(
                    entry["test"][metric])
    table = pd.DataFrame({family: {column: float(np.mean(v)) for column, v in columns.items()}
                          for family, columns in values.items()}).T
    table.insert(0, "seeds", [len(next(iter(values[f].values()))) for f in table.index])
    table["note"] = [new_items["hybrids"] if f.startswith("hybrid_") else "" for f in table.index]
    table = table.sort_values(table.columns[1], ascending=False, kind="stable")
    absent = pd.DataFrame({"note": list(new_items["no_signal"].values())}, index=list(new_items["no_signal"]))
    return pd.concat([table, absent]).rename_axis("method")


def new_item_findings(new_items: dict[str, Any]) -> pd.DataFrame:
    """"Does the grounded description beat X on new items?": per candidate set and X, the paired difference
    with its 95% CI and the Holm-corrected p (or why there is no verdict)."""
    rows = [{"candidates": candidates, "description": r["method"], "against": r["reference"], "metric": r["metric"],
             "difference": f"{r['mean_diff']:+.4f} [{r['diff_ci_low']:+.4f}, {r['diff_ci_high']:+.4f}]",
             "p (Holm)": (f"{r['verdict_blocked_by']}: no verdict" if r["verdict_blocked_by"]
                          else format_p(r["p_holm"]))}
            for candidates, found in new_items["findings"].items() for r in found]
    return pd.DataFrame(rows)


def new_item_curves(new_items: dict[str, Any], metric: str = "recall") -> pd.DataFrame:
    """``metric``@K per method family (seeds averaged) on the new items, one ``group`` per candidate set
    (plot data for :func:`vlm4rec.plots.metric_at_k_curves`)."""
    rows = [{"group": f"among {candidates} items", "method": method_family(name), "k": int(key.split("@")[1]),
             metric: value}
            for candidates, methods in new_items["methods"].items() for name, entry in methods.items()
            for key, value in entry["test"].items() if key.startswith(f"{metric}@")]
    frame = pd.DataFrame(rows, columns=["group", "method", "k", metric])
    return frame.groupby(["group", "method", "k"], as_index=False, sort=False)[metric].mean()


def write_report_metrics(found: list[Finding], notes: list[str]) -> dict[str, Any]:
    """``metrics/report.json``: every finding's numbers (keyed by id, for ``dvc exp show``; an untested
    p is null, not NaN, which JSON lacks) and the caveats."""
    def number(value: Any) -> Any:
        return None if isinstance(value, float) and np.isnan(value) else value

    payload = {"findings": {f.id: {k: number(v) for k, v in asdict(f).items() if k != "id"} | {"answer": f.answer}
                            for f in found},
               "caveats": notes}
    write_json(METRICS_DIR / "report.json", payload)
    return payload


def coverage_columns(results: dict[str, MethodResult]) -> pd.DataFrame:
    """Per method family: the item coverage of its representation (embed stage; NaN for methods that use
    no single representation) and its catalogue coverage@10 (mean over seeds)."""
    embedded = json.loads((METRICS_DIR / "embed.json").read_text())["representations"]
    catalogue = pd.Series({m: r.coverage["coverage@10"] for m, r in results.items()})
    catalogue = catalogue.groupby(catalogue.index.map(method_family)).mean()
    items = pd.Series({m: embedded[m]["coverage"] if m in embedded else np.nan for m in catalogue.index})
    return pd.DataFrame({"item_coverage": items, "catalogue_coverage@10": catalogue})


def chosen_configurations(results: dict[str, MethodResult]) -> pd.Series:
    """Per method family, its chosen configuration as compact JSON (a hybrid's content weight alpha, a
    fusion's weights...; the first seed's for seeded families)."""
    return pd.Series({family: json.dumps(results[names[0]].config, sort_keys=True)
                      for family, names in families(results).items()}, name="chosen")


def cost_table() -> pd.DataFrame:
    """Wall time, throughput and peak memory per stage (and per grounding arm), from the metrics JSON
    the stages wrote (all declared dependencies of the report stage)."""
    stages = {name: json.loads((METRICS_DIR / f"{name}.json").read_text())
              for name in ("prepare", "ground", "embed", "match", "robustness", "fusion")}
    rows = {name: {k: v for k, v in metrics["cost"].items() if not isinstance(v, dict)}
            for name, metrics in stages.items()}
    for arm, counts in stages["ground"]["arms"].items():
        rows[f"ground: {arm}"] = {k: counts[k] for k in ("wall_s", "described", "from_cache", "images_per_s")}
    cells = [json.loads(p.read_text())["cost"] for p in sorted((METRICS_DIR / "ablations").glob("*.json"))]
    if cells:
        rows[f"ablation grid ({len(cells)} cells, compute only)"] = {
            "wall_s": sum(c["wall_s"] for c in cells), "peak_rss_mb": max(c["peak_rss_mb"] for c in cells)}
    return pd.DataFrame(rows).T


def load_descriptions() -> pd.DataFrame:
    """The ground stage's long table (item_idx, arm, status, description, ...)."""
    return pd.read_parquet(GROUNDING_DIR / "descriptions.parquet")


def load_prepared_data() -> PreparedData:
    return load_prepared(PREPARED_DIR)


def family_slices(results: dict[str, MethodResult], wanted: Sequence[str], prepared: PreparedData, k: int,
                  metrics: Sequence[str], bins: Sequence[float] = HISTORY_BINS) -> pd.DataFrame:
    """:func:`vlm4rec.slices.slices_for_methods` for the method families in ``wanted`` that have results
    (a seeded family: the mean of its seeds' values, every seed holding the same users and test pairs)."""
    grouped = families(results)
    names = [name for family in wanted if family in grouped for name in grouped[family]]
    sliced = slices_for_methods({name: (results[name].test_topk, results[name].test_per_user["user_idx"].to_numpy(),
                                        results[name].test_per_user) for name in names},
                                prepared, k=k, metrics=metrics, bins=bins)
    sliced["method"] = sliced["method"].map(method_family)
    keys = ["method", "slice_kind", "slice", "metric", "n"]
    return sliced.groupby(keys, sort=False, as_index=False)["value"].mean()


def user_gallery(results: dict[str, MethodResult], methods: list[str], prepared: PreparedData, n_users: int = 3,
                 history: int = 6, k: int = 5, seed: int = 0) -> list[tuple[str, list[str | None], list[str]]]:
    """For a seeded sample of test users: their latest history posters, then each method family's top-k
    (a seeded family's first seed, named in the row title; families without results are skipped).

    Returns (row title, image paths, captions) rows for :func:`vlm4rec.plots.image_grid`."""
    items = prepared.items.set_index("item_idx")
    inter = prepared.interactions
    test = inter[inter["split"] == "test"].groupby("user_idx")["item_idx"].apply(set)
    users = np.random.default_rng(seed).permutation(np.sort(test.index.to_numpy()))[:n_users]
    rows = []
    for user in users:
        seen = inter[(inter["user_idx"] == user) & inter["split"].isin(["train", "val"])]
        latest = seen.sort_values("timestamp")["item_idx"].to_numpy()[-history:][::-1]
        rows.append((f"user {user}: latest history", [items.at[i, "image_path"] for i in latest],
                     [items.at[i, "title"] for i in latest]))
        for method in [m for m in methods if m in families(results)]:
            name = families(results)[method][0]
            result = results[name]
            row = int(np.flatnonzero(result.test_per_user["user_idx"].to_numpy() == user)[0])
            top = result.test_topk[row, :k]
            rows.append((f"{name} top-{k}", [items.at[i, "image_path"] for i in top],
                         [("HIT  " if i in test[user] else "") + items.at[i, "title"] for i in top]))
    return rows
