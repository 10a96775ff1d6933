"""Report stage: everything read back from the stage outputs, nothing recomputed but statistics."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from vlm4rec.evaluation import MethodResult, load_result
from vlm4rec.pipeline.common import (METRICS_DIR, RESULTS_DIR, collapse_seeds, load_prepared_data,
                                     method_family, per_user_long)
from vlm4rec.stats import paired_tests


def load_all_results() -> dict[str, MethodResult]:
    """Every method evaluated by the match and fusion stages, by name."""
    return {path.name: load_result(path) for stage in ("match", "fusion")
            for path in sorted((RESULTS_DIR / stage).glob("*")) if path.is_dir()}


def paired_test_table(results: dict[str, MethodResult], references: list[str], metric: str) -> pd.DataFrame:
    """Paired Wilcoxon and t-tests of every method against each reference (Holm within a reference)."""
    per_user = collapse_seeds(per_user_long(results))
    tables = [paired_tests(per_user, ref, metric) for ref in references if ref in set(per_user["method"])]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def coverage_columns(results: dict[str, MethodResult]) -> pd.DataFrame:
    """Per method family: the item coverage of its representation (embed stage; NaN for methods that use
    no single representation) and its catalogue coverage@10 (mean over seeds)."""
    embedded = json.loads((METRICS_DIR / "embed.json").read_text())["representations"]
    catalogue = pd.Series({m: r.coverage["coverage@10"] for m, r in results.items()})
    catalogue = catalogue.groupby(catalogue.index.map(method_family)).mean()
    items = pd.Series({m: embedded[m]["coverage"] if m in embedded else np.nan for m in catalogue.index})
    return pd.DataFrame({"item_coverage": items, "catalogue_coverage@10": catalogue})


def cost_table() -> pd.DataFrame:
    """Wall time, throughput and peak memory per stage (and per grounding arm), from the metrics JSON
    the stages wrote (all declared dependencies of the report stage)."""
    stages = {name: json.loads((METRICS_DIR / f"{name}.json").read_text())
              for name in ("prepare", "ground", "embed", "match", "fusion")}
    rows = {name: metrics["cost"] for name, metrics in stages.items()}
    for arm, counts in stages["ground"]["arms"].items():
        rows[f"ground: {arm}"] = {k: counts[k] for k in ("wall_s", "described", "from_cache", "images_per_s")}
    cells = [json.loads(p.read_text())["cost"] for p in sorted((METRICS_DIR / "ablations").glob("*.json"))]
    if cells:
        rows[f"ablation grid ({len(cells)} cells, compute only)"] = {
            "wall_s": sum(c["wall_s"] for c in cells), "peak_rss_mb": max(c["peak_rss_mb"] for c in cells)}
    return pd.DataFrame(rows).T


def user_gallery(results: dict[str, MethodResult], methods: list[str], n_users: int = 3, history: int = 6,
                 k: int = 5, seed: int = 0) -> list[tuple[str, list[str | None], list[str]]]:
    """For a seeded sample of test users: their latest history posters, then each method's top-k.

    Returns (row title, image paths, captions) rows for :func:`vlm4rec.plots.image_grid`."""
    data = load_prepared_data()
    items = data.items.set_index("item_idx")
    inter = data.interactions
    test = inter[inter["split"] == "test"].groupby("user_idx")["item_idx"].apply(set)
    users = np.random.default_rng(seed).permutation(np.sort(test.index.to_numpy()))[:n_users]
    rows = []
    for user in users:
        seen = inter[(inter["user_idx"] == user) & inter["split"].isin(["train", "val"])]
        latest = seen.sort_values("timestamp")["item_idx"].to_numpy()[-history:][::-1]
        rows.append((f"user {user}: latest history", [items.at[i, "image_path"] for i in latest],
                     [items.at[i, "title"] for i in latest]))
        for method in methods:
            result = results[method]
            row = int(np.flatnonzero(result.test_per_user["user_idx"].to_numpy() == user)[0])
            top = result.test_topk[row, :k]
            rows.append((f"{method} top-{k}", [items.at[i, "image_path"] for i in top],
                         [("HIT  " if i in test[user] else "") + items.at[i, "title"] for i in top]))
    return rows
