"""The new-item tables, built once from the new-item metrics (:class:`NewItemMetrics`): the cold_start stage
writes its plot data with them and the report (and both notebooks) show them. A shared helper of the stages,
not a stage."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from vlm4rec.cold_start import CANDIDATE_SETS
from vlm4rec.evaluation import MethodKey
from vlm4rec.methods import is_kind
from vlm4rec.metrics import CHANCE
from vlm4rec.pipeline.stage_metrics import NewItemMetrics
from vlm4rec.tables import summary_curves


def new_item_table(metrics: Sequence[str], new_items: NewItemMetrics) -> pd.DataFrame:
    """Per method family and chance, each test metric in each setting of the metrics (a seeded family: the mean
    over its seeds, with their number; a family tested in some settings only, e.g. a warm reference, is blank
    in the others), ordered by the validation selection metric (every setting shares the selection on the
    validation new items; never by test), then the methods with no signal for a new item and no row, shown as
    such."""
    values: dict[str, dict[str, list[float]]] = {}
    validation: dict[str, float] = {}
    settings = sorted(new_items.methods, key=lambda name: CANDIDATE_SETS.index(name) if name in CANDIDATE_SETS
                      else len(CANDIDATE_SETS))  # the settings' own order (a file read back has them sorted)
    for candidates in settings:
        entries = [(MethodKey.parse(name).family, entry) for name, entry in new_items.methods[candidates].items()]
        for family, entry in entries + [(CHANCE, new_items.chance[candidates])]:
            columns = values.setdefault(family, {})
            validation[family] = next(iter(entry.validation.values()))
            for metric in metrics:
                columns.setdefault(f"{metric} ({candidates})", []).append(entry.test[metric])
    order = [f"{metric} ({candidates})" for candidates in settings for metric in metrics]
    table = pd.DataFrame({family: {column: float(np.mean(v)) for column, v in columns.items()}
                          for family, columns in values.items()}).T.reindex(columns=order)
    table.insert(0, "seeds", [len(next(iter(values[f].values()))) for f in table.index])  # a column: one set
    table.insert(1, "validation", pd.Series(validation).reindex(table.index).round(4))
    table["note"] = [new_items.hybrids if is_kind(f, "hybrid") else new_items.no_signal.get(f, "") for f in table.index]
    table = table.sort_values("validation", ascending=False, kind="stable")
    unscored = [f for f in new_items.no_signal if f not in table.index]
    absent = pd.DataFrame({"note": [new_items.no_signal[f] for f in unscored]}, index=unscored)
    return pd.concat([table, absent]).rename_axis("method")


def new_item_curves(new_items: NewItemMetrics) -> pd.DataFrame:
    """Recall@K and NDCG@K per method family (seeds averaged) and chance, per ``candidates`` set (plot data), in
    the order of the metrics' entries (the stage's results order; a file read back holds them sorted)."""
    frames = []
    for candidates, methods in new_items.methods.items():
        summaries = [(MethodKey.parse(name).family, entry.test) for name, entry in methods.items()]
        summaries.append((CHANCE, new_items.chance[candidates].test))
        frames.append(summary_curves(summaries, "recall").merge(summary_curves(summaries, "ndcg"), on=["method", "k"])
                      .assign(candidates=candidates))
    return pd.concat(frames, ignore_index=True)


def split_spread_table(metric: str, new_items: NewItemMetrics, setting: str = "cold") -> pd.DataFrame:
    """``metric`` in ``setting`` per family the random item split's replicas hold (``cold_start.replica_methods``
    and chance): its value on the stage's own split (a seeded family: the mean over its seeds, as on the
    replicas), then on each random split seed, their mean, standard deviation (n - 1) and range; ordered by the
    random splits' mean. Empty when no replica holds ``setting``."""
    rows: dict[str, dict[str, float]] = {}
    for split, replica in new_items.split_replicas.items():
        if setting not in replica["methods"]:
            continue
        values = replica["methods"][setting] | {CHANCE: replica["chance"][setting]}
        for family, summary in values.items():
            rows.setdefault(family, {})[split] = summary[metric]
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame.from_dict(rows, orient="index")
    by_family: dict[str, list[float]] = {}
    for name, entry in new_items.methods[setting].items():
        by_family.setdefault(MethodKey.parse(name).family, []).append(entry.test[metric])
    own = {family: float(np.mean(values)) for family, values in by_family.items()}
    own[CHANCE] = new_items.chance[setting].test[metric]
    replicas = table.to_numpy(dtype=float)
    table.insert(0, f"{metric} (stage split)", pd.Series(own).reindex(table.index))
    table["mean"] = replicas.mean(axis=1)
    table["sd"] = replicas.std(axis=1, ddof=1) if replicas.shape[1] > 1 else np.nan
    table["min"], table["max"] = replicas.min(axis=1), replicas.max(axis=1)
    return table.sort_values("mean", ascending=False, kind="stable").rename_axis("method")
