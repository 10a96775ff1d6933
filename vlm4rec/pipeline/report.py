"""Report stage: everything read back from the stage outputs, nothing recomputed but statistics.

The report opens with findings generated from the numbers (:mod:`vlm4rec.findings`): each of the study's
questions answered with the paired difference, its unadjusted 95% CI (and what it resamples) and its
paired-bootstrap p-value; the confirmatory family (docs/protocol.md, "Statistics") is Holm-corrected as one
family, every other p is exploratory and unadjusted; plus the caveats that apply. The same findings go to
``metrics/report.json`` so that ``dvc exp show`` compares them across experiments. This module loads the
stage outputs, writes the report stage's metrics and formats what the notebook shows. Every table is ordered
by validation (or by family), never by test, and holds a chance row where it ranks methods.
"""
from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vlm4rec.config import EvalParams, FindingsParams, GraphCellParams, GraphParams, MatchParams, ReportParams
from vlm4rec.data import PreparedData, load_prepared
from vlm4rec.evaluation import ChanceReference, MethodKey, MethodResult, load_result
from vlm4rec.findings import Finding, families, findings, graph_comparisons, new_item_findings_of, p_floor_note
from vlm4rec.methods import CATALOGUE, fusion_method
from vlm4rec.metrics import CHANCE
from vlm4rec.pipeline.outputs import GROUNDING_DIR, METRICS_DIR, PREPARED_DIR, write_json
from vlm4rec.pipeline.stage_metrics import (AblationCellMetrics, EmbedMetrics, FusionMetrics, GraphCellMetrics,
                                            GroundMetrics, MatchMetrics, NewItemMetrics, PrepareMetrics,
                                            RobustnessMetrics)
from vlm4rec.pipeline.study_files import StudyFiles
from vlm4rec.stats import format_p
from vlm4rec.tables import family_test_summaries
from vlm4rec.stage_outputs import read_output


def load_all_results(study: StudyFiles) -> dict[MethodKey, MethodResult]:
    """Every method of the study params.yaml describes, by key, from exactly its result folders (a folder
    params.yaml does not name stays out of the tables and the Holm families: :meth:`StudyFiles.ignored`); a
    named result or cell metrics file that is missing stops the report, naming it and its stage."""
    study.check_present()
    return {result.key: result for result in map(load_result, study.results)}


def graph_table(results: dict[MethodKey, MethodResult], evaluation: EvalParams, params: FindingsParams,
                graph_cells: dict[str, GraphCellParams], prepared: PreparedData,
                found: Sequence[Finding]) -> pd.DataFrame:
    """Does the grounded description help a multimodal recommender? Per model
    (:func:`vlm4rec.findings.graph_comparisons`): the paired difference (description + image minus title +
    image) on the headline metric (the confirmatory finding of ``found``: its unadjusted CI and its Holm p
    over the confirmatory family, the same numbers as the findings) and on recall over cold test items
    (exploratory, unadjusted), each with its 95% CI over users and both cells' seeds, and the two cells' wall
    time (all seeds, from ``metrics/graph/<cell>.json``)."""
    compared = graph_comparisons(results, evaluation, params, graph_cells, prepared, found)
    if not compared:
        return pd.DataFrame()
    rows = []
    for c in compared:
        seconds = [GraphCellMetrics.load(GraphCellMetrics.path(cell)).cost.wall_s for cell in c.cells]
        rows.append({"model": CATALOGUE[c.model].display, "cells": " vs ".join(c.cells),
                     **_summary(c.overall, params.metric), **_summary(c.cold, "cold-item recall"),
                     "wall_s (both cells)": round(sum(seconds), 1)})
    return pd.DataFrame(rows).set_index("model")


def finding_p(finding: Finding) -> str:
    """A finding's p as tables print it: "not tested: <why>", the unadjusted p of an exploratory finding
    ("(exploratory, unadjusted)"), or a confirmatory finding's Holm p with its family size; a bound at the
    bootstrap's floor."""
    if finding.verdict_blocked_by:
        return f"not tested: {finding.verdict_blocked_by}"
    if not finding.confirmatory:
        return f"{format_p(finding.p, finding.p_at_floor)} (exploratory, unadjusted)"
    return f"{format_p(finding.p_holm, finding.p_at_floor)} (Holm over m = {finding.family_size})"


def _summary(finding: Finding | None, label: str) -> dict[str, str]:
    if finding is None:
        return {f"{label}: difference [unadjusted 95% CI]": "no users", f"{label}: p": ""}
    return {"seeds": f"{finding.seeds[0]} vs {finding.seeds[1]}",
            f"{label}: difference [unadjusted 95% CI]":
                f"{finding.difference:+.4f} [{finding.ci_low:+.4f}, {finding.ci_high:+.4f}]",
            f"{label}: p": finding_p(finding)}


def graph_training_curves(results: dict[MethodKey, MethodResult]) -> pd.DataFrame:
    """Validation metric per evaluated epoch of every graph cell's selection run (chosen configuration)."""
    rows = [{"cell": key.family, "epoch": epoch, "validation": value}
            for key, r in results.items() if r.training is not None for epoch, value in r.training["curve"]]
    return pd.DataFrame(rows, columns=["cell", "epoch", "validation"]).drop_duplicates()  # seeds share selection


def runs_at_epoch_cap(results: dict[MethodKey, MethodResult], fusion_training: dict[str, Any]) -> list[str]:
    """The monitored training runs that ended at their epoch cap instead of by early stopping (their
    validation curve may still have been improving): graph cells by name, learned fusions by kind, seed and
    configuration (``fusion_training``: the ``training`` entry of ``metrics/fusion.json``)."""
    graph = sorted({key.family for key, r in results.items()
                    if r.training is not None and not r.training["stopped_early"]})
    fusion = sorted(f"{fusion_method(run['kind'])} seed {run['seed']} {json.dumps(run['config'], sort_keys=True)}"
                    for run in fusion_training.values() if not run["stopped_early"])
    return graph + fusion


GRAPH_TUNING_RECORD = "benchmarks/README.md, 'Validation curves on ML-1M and the cost of a study cell'"


def run_graph_cells(graph_cells: Collection[str]) -> dict[str, GraphCellMetrics]:
    """The metrics (``metrics/graph/<cell>.json``) of the cells of ``graph_cells`` that have run."""
    return {cell: GraphCellMetrics.load(GraphCellMetrics.path(cell)) for cell in graph_cells
            if GraphCellMetrics.path(cell).exists()}


def graph_tuning_note(graph_cells: Collection[str]) -> str | None:
    """Where the graph cells' hyperparameters were chosen: cells whose grid (``metrics/graph/<cell>.json``)
    held one configuration ran defaults tuned outside this pipeline, on ML-1M validation, as recorded in
    :data:`GRAPH_TUNING_RECORD`; None when every cell searched a grid here."""
    fixed = {cell: metrics.scale for cell, metrics in run_graph_cells(graph_cells).items()
             if metrics.training.grid_size == 1}
    if not fixed:
        return None
    scales = ", ".join(sorted(set(fixed.values())))
    return (f"{len(fixed)} graph cell(s) trained one configuration each (graph.scale: {scales}), so this run's "
            "validation chose only their epoch: their learning rate and L2 are defaults tuned outside the "
            f"pipeline by single validation runs on ML-1M ({GRAPH_TUNING_RECORD}). graph.scale: full searches "
            f"its grids on validation inside the pipeline. Cells: {', '.join(sorted(fixed))}.")


def schedule_text(schedule: dict[str, Any]) -> str:
    """One model's optimiser schedule in words (``metrics/graph/<cell>.json`` ``schedule``)."""
    decay = (f" x {schedule['lr_decay']:g} per {schedule['lr_decay_step']:g} epochs"
             if schedule.get("lr_decay", 1.0) != 1.0 else "")
    return (f"Adam lr {schedule['lr']:g}{decay}, at most {schedule['epochs']} epochs, a validation check every "
            f"{schedule['eval_every']}, stop after {schedule['patience']} checks without gain")


def graph_schedule_note(graph_cells: Collection[str]) -> str | None:
    """The schedule each graph model's cells trained with and the selection protocol, from the cells'
    metrics: where the models' schedules differ, a model-vs-model difference is partly one of optimisation,
    and the reader must see that beside the numbers. None when no cell has run."""
    by_model = {metrics.model: (schedule_text(metrics.schedule), metrics.selection)
                for metrics in run_graph_cells(graph_cells).values()}
    if not by_model:
        return None
    schedules = "; ".join(f"{model}: {text}" for model, (text, _) in sorted(by_model.items()))
    protocols = sorted({selection for _, selection in by_model.values()})
    shared = ("The graph models share one schedule" if len({text for text, _ in by_model.values()}) == 1 else
              "The graph models do not share one schedule, so a difference between two models is partly one of "
              "optimisation, not of content alone")
    return (f"{shared} (graph.training.<regime> and its models entries): {schedules}. Tested after "
            f"graph.selection: {', '.join(protocols)} (docs/protocol.md, section 6).")


#: The regime gaps the report states (``benchmarks/regime_gaps.py`` writes it from the raw regime runs)
REGIME_GAP_RECORD = Path("benchmarks/regime_gaps.json")
#: The study's rule (docs/protocol.md, section 6): a fast regime more than this far below its paper regime
#: (settled validation level, mean over seeds) puts a caveat on the model's findings
REGIME_GAP_LIMIT = 0.02


def load_record(path: Path) -> dict[str, Any] | None:
    """A measured record of benchmarks/ the report restates (None when there is none)."""
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def regime_gap_note(record: dict[str, Any] | None, models: Collection[str]) -> str | None:
    """Per graph model of the study, how far its fast regime's settled validation level is from its paper
    regime's (means over the seeds of ``record``, runs with the study's options only) and which models'
    findings carry a caveat: a fast regime more than :data:`REGIME_GAP_LIMIT` below, or no measured gap.
    None when the study has no graph model."""
    if not models:
        return None
    measured, unmeasured, beyond = [], [], []
    for model in sorted(models):
        display = CATALOGUE[model].display
        runs = (record or {}).get("models", {}).get(model, {})
        fast, paper = runs.get("fast", []), runs.get("paper", [])
        if not fast or not paper:
            unmeasured.append(display)
            continue
        gap = np.mean([r["settled"] for r in fast]) / np.mean([r["settled"] for r in paper]) - 1
        measured.append(f"{display} {gap:+.1%} ({len(fast)} vs {len(paper)} seed(s))")
        if gap < -REGIME_GAP_LIMIT:
            beyond.append(display)
    parts = []
    if measured:
        parts.append("Regime gaps (the study's fast regime against the references' paper regime, settled "
                     f"validation NDCG@10, means over seeds; {REGIME_GAP_RECORD}): {'; '.join(measured)}.")
    if beyond:
        parts.append(f"More than the study's {REGIME_GAP_LIMIT:.0%} below the paper regime: {', '.join(beyond)}; "
                     "their findings carry this caveat (the fast regime may under-train them).")
    if unmeasured:
        parts.append(f"Regime gap not measured with the study's options: {', '.join(unmeasured)}; their findings "
                     "carry that caveat.")
    return " ".join(parts)


#: The graph cells under one common schedule beside the default's (``benchmarks/compare_schedules.py``)
COMMON_SCHEDULE_RECORD = Path("benchmarks/results_common_schedule.json")


def _differences(rows: Sequence[dict[str, Any]]) -> str:
    return "; ".join(f"{d['method']} - {d['against']} {d['difference']:+.4f} [{d['ci_low']:+.4f}, "
                     f"{d['ci_high']:+.4f}]" for d in rows)


def common_schedule_note(record: dict[str, Any] | None, current: dict[str, float]) -> str | None:
    """What the graph comparisons become when every model trains with one common schedule, from ``record``
    (:data:`COMMON_SCHEDULE_RECORD`), restated only where its default side is this run's (every cell's test
    NDCG@10 equal to ``current``'s, :func:`~vlm4rec.tables.family_test_summaries`); None without a record."""
    if record is None:
        return None
    default = {row["cell"]: row["test_mean"] for row in record["default"]["cells"]}
    if any(cell not in current or abs(current[cell] - mean) > 1e-9 for cell, mean in default.items()):
        return (f"{COMMON_SCHEDULE_RECORD} was measured beside other graph results than this run's, so its "
                "comparison under one common schedule is not restated here.")
    common = record["common"]
    moved = "; ".join(f"{row['cell']} {default[row['cell']]:.4f} -> {row['test_mean']:.4f}"
                      for row in common["cells"] if row["cell"] in default)
    return (f"With one common schedule for every graph model ({schedule_text(common['cells'][0]['schedule'])}; "
            f"{COMMON_SCHEDULE_RECORD}, measured beside this run's results; outside the default budget), test "
            f"NDCG@10 per cell, default -> common: {moved}. Under it, description + image minus title + image: "
            f"{_differences(common['within_model'])}; between the title + image cells: "
            f"{_differences(common['between_models'])} (unadjusted 95% CIs over users and seeds).")


def caveats(grounding: GroundMetrics, split: str, robustness: pd.DataFrame | None,
            capped_runs: Sequence[str] = (), cold_start: dict[str, int] | None = None,
            more: Sequence[str | None] = ()) -> list[str]:
    """What a reader must keep in mind when reading the findings, from the stage outputs
    (``capped_runs``: :func:`runs_at_epoch_cap`; ``cold_start``: the robustness stage's ``test_users``
    counts; ``more``: further notes such as :func:`graph_tuning_note` and
    :func:`vlm4rec.findings.p_floor_note`, None ones skipped)."""
    notes = [f"Every description comes from: {grounding.grounder.description_of_method}."]
    if grounding.grounder.backend == "tagger":
        notes.append("The default grounder is a classifier-based tagger, not a vision-language model: the "
                     "findings on descriptions are about its descriptions and do not measure an LVLM.")
    for arm, counts in grounding.arms.items():
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


def load_robustness() -> RobustnessMetrics | None:
    """``metrics/robustness.json`` (None when the robustness stage has not run)."""
    return RobustnessMetrics.load(RobustnessMetrics.path()) if RobustnessMetrics.path().exists() else None


def robustness_table(metric: str, robustness: RobustnessMetrics | None,
                     chance: ChanceReference | None = None) -> pd.DataFrame | None:
    """Test ``metric`` of each method under the study's split (all test users) and under the robustness
    protocol on its test users with a non-empty history, with their ranks, sorted by the study split's
    validation selection metric (None when the robustness stage has not run); with ``chance`` (the study
    split's), a chance row, whose robustness value the robustness stage wrote. The users without history
    are in :func:`cold_start_table`."""
    if robustness is None:
        return None
    main = MatchMetrics.load(MatchMetrics.path()).methods
    rows = [{"method": m, **{f"validation {k}": v for k, v in main[m].validation.items()},
             "study_split": main[m].test[metric], robustness.protocol: e.test_with_history[metric]}
            for m, e in robustness.methods.items() if m in main]
    if chance is not None:
        selected = next(iter(main.values())).validation
        rows.append({"method": CHANCE, **{f"validation {k}": chance.val_summary()[k] for k in selected},
                     "study_split": chance.test_summary()[metric],
                     robustness.protocol: robustness.chance.test_with_history[metric]})
    table = pd.DataFrame(rows).set_index("method")
    table = table.sort_values(table.columns[0], ascending=False, kind="stable")
    for column in ("study_split", robustness.protocol):
        table[f"rank ({column})"] = table[column].rank(ascending=False, method="min").astype(int)
    return table


def cold_start_table(metric: str, robustness: RobustnessMetrics | None) -> pd.DataFrame | None:
    """Per method, under the robustness protocol: its test ``metric`` on the test users without history and
    what its lists are for them (one tied list in item-index order, one list for all, or distinct lists)."""
    if robustness is None:
        return None
    rows = {m: {f"test {metric}": e.cold_start.test.get(metric, np.nan), "lists": e.cold_start.lists}
            for m, e in robustness.methods.items()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("method")


def load_new_items() -> NewItemMetrics:
    """``metrics/cold_start.json``: the strict new-item protocol's counts, test metrics and findings."""
    return NewItemMetrics.load(NewItemMetrics.path())


def write_report_metrics(found: list[Finding], notes: list[str], ignored: Sequence[str] = ()) -> dict[str, Any]:
    """``metrics/report.json``: every finding's numbers (keyed by id, for ``dvc exp show``; an untested
    p is null, not NaN, which JSON lacks), the caveats and the result folders and metrics files on disk that
    params.yaml does not name (ignored)."""
    def number(value: Any) -> Any:
        return None if isinstance(value, float) and np.isnan(value) else value

    payload = {"findings": {f.id: {k: number(v) for k, v in asdict(f).items() if k != "id"}
                            | {"confirmatory": f.confirmatory, "verdict": f.verdict, "answer": f.answer}
                            for f in found},
               "caveats": notes, "ignored": list(ignored)}
    write_json(METRICS_DIR / "report.json", payload)
    return payload


def write_findings(results: dict[MethodKey, MethodResult], prepared: PreparedData, evaluation: EvalParams,
                   match: MatchParams, graph: GraphParams, report: ReportParams,
                   ignored: Sequence[str] = (), chance: ChanceReference | None = None
                   ) -> tuple[list[Finding], list[str]]:
    """The report stage's output: the findings (:func:`vlm4rec.findings.findings`, with the new-item stage's
    confirmatory comparisons among the new items when it has run, and each representation against
    ``chance``) and the caveats that apply to them, from the stage outputs (one names the ``ignored`` files:
    :meth:`StudyFiles.ignored`), written to ``metrics/report.json``; returned for display."""
    new_items = (new_item_findings_of(load_new_items().findings["cold"], report.findings)
                 if NewItemMetrics.path().exists() else [])
    found = findings(results, evaluation, report.findings, match.representations, prepared, graph.cells,
                     chance, new_items)
    robustness_metrics = load_robustness()
    robustness = robustness_table(report.findings.metric, robustness_metrics)
    capped = runs_at_epoch_cap(results, FusionMetrics.load(FusionMetrics.path()).training)
    test_ndcg = {family: summary["ndcg@10"] for family, summary in family_test_summaries(results).items()}
    notes = caveats(GroundMetrics.load(GroundMetrics.path()), PrepareMetrics.load(PrepareMetrics.path()).split_protocol,
                    robustness, capped, robustness_metrics.test_users if robustness_metrics else None,
                    [graph_tuning_note(graph.cells), graph_schedule_note(graph.cells),
                     regime_gap_note(load_record(REGIME_GAP_RECORD), {cell.model for cell in graph.cells.values()}),
                     common_schedule_note(load_record(COMMON_SCHEDULE_RECORD), test_ndcg),
                     p_floor_note(found, evaluation.bootstrap_resamples),
                     ignored_note(ignored)])
    write_report_metrics(found, notes, ignored)
    return found, notes


def ignored_note(ignored: Sequence[str]) -> str | None:
    """The caveat that lists the outputs on disk the report did not read (None when there are none)."""
    if not ignored:
        return None
    return (f"{len(ignored)} result folder(s) or metrics file(s) on disk are not part of the study params.yaml "
            f"describes (left by an earlier run) and were ignored: {', '.join(ignored)}.")


def coverage_columns(results: dict[MethodKey, MethodResult]) -> pd.DataFrame:
    """Per method family: the item coverage of its representation (embed stage; NaN for methods that use
    no single representation) and its catalogue coverage@10 (mean over seeds)."""
    embedded = EmbedMetrics.load(EmbedMetrics.path()).representations
    catalogue = pd.Series([r.coverage["coverage@10"] for r in results.values()])
    catalogue = catalogue.groupby([key.family for key in results]).mean()
    items = pd.Series({m: embedded[m]["coverage"] if m in embedded else np.nan for m in catalogue.index})
    return pd.DataFrame({"item_coverage": items, "catalogue_coverage@10": catalogue})


def chosen_configurations(results: dict[MethodKey, MethodResult]) -> pd.Series:
    """Per method family, its chosen configuration as compact JSON (a hybrid's content weight alpha, a
    fusion's weights...; the first seed's for seeded families)."""
    return pd.Series({family: json.dumps(results[keys[0]].config, sort_keys=True)
                      for family, keys in families(results).items()}, name="chosen")


def cost_table(study: StudyFiles) -> pd.DataFrame:
    """Wall time, throughput and peak memory per stage (and per grounding arm), from the metrics JSON
    the stages wrote (all declared dependencies of the report stage; the ablation cells of ``study``)."""
    models = {"prepare": PrepareMetrics, "ground": GroundMetrics, "embed": EmbedMetrics, "match": MatchMetrics,
              "robustness": RobustnessMetrics, "fusion": FusionMetrics}
    stages = {name: model.load(model.path()) for name, model in models.items()}
    rows = {name: {k: v for k, v in metrics.cost.items() if not isinstance(v, dict)}
            for name, metrics in stages.items()}
    for arm, counts in stages["ground"].arms.items():
        rows[f"ground: {arm}"] = {k: counts[k] for k in ("wall_s", "described", "from_cache", "images_per_s")}
    cells = [AblationCellMetrics.load(AblationCellMetrics.path(p.stem)).cost for p in study.ablation_metrics]
    if cells:
        rows[f"ablation grid ({len(cells)} cells, compute only)"] = {
            "wall_s": sum(c["wall_s"] for c in cells), "peak_rss_mb": max(c["peak_rss_mb"] for c in cells)}
    return pd.DataFrame(rows).T


def load_descriptions() -> pd.DataFrame:
    """The ground stage's long table (item_idx, arm, status, description, ...)."""
    return read_output(GROUNDING_DIR / "descriptions.parquet", pd.read_parquet)


def load_prepared_data() -> PreparedData:
    return load_prepared(PREPARED_DIR)


def findings_markdown(found: Sequence[Finding]) -> str:
    """The findings as the report lists them: the confirmatory family first (Holm over it), then the
    exploratory findings (unadjusted), then the comparisons not tested, with the reason."""
    def items(selected: list[Finding]) -> str:
        return "\n".join(f"* **{f.question}** {f.answer}." for f in selected) or "* none"

    tested = [f for f in found if not f.verdict_blocked_by]
    sections = [("Confirmatory (Holm over this family only)", [f for f in tested if f.confirmatory]),
                ("Exploratory (unadjusted p and 95% CIs)", [f for f in tested if not f.confirmatory]),
                ("Not tested", [f for f in found if f.verdict_blocked_by])]
    return "\n\n".join(f"**{title}**\n\n{items(selected)}" for title, selected in sections)
