"""Figures of the study (seaborn / matplotlib), each a function of stage outputs returning a Figure."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from vlm4rec.data import PreparedData
from vlm4rec.metrics import CHANCE

sns.set_theme(style="whitegrid", context="notebook")


def split_overview(data: PreparedData) -> plt.Figure:
    """Interactions per split, and the distribution of users' train-history lengths."""
    inter = data.interactions
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.5))
    counts = inter["split"].value_counts().reindex(["train", "val", "test"])
    sns.barplot(x=counts.index, y=counts.to_numpy(), ax=left, color="C0")
    left.set(title="positives per split", xlabel="", ylabel="interactions")
    lengths = inter[inter["split"] == "train"].groupby("user_idx").size()
    sns.histplot(lengths, bins=50, log_scale=(True, False), ax=right, color="C1")
    right.set(title="train history length per user", xlabel="positives (log scale)", ylabel="users")
    fig.tight_layout()
    return fig


def description_lengths(descriptions: pd.DataFrame) -> plt.Figure:
    """Distribution of description length in words, per prompt arm (successful descriptions)."""
    ok = descriptions[descriptions["status"] == "ok"]
    words = ok.assign(words=ok["description"].str.split().str.len())
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.histplot(data=words, x="words", hue="arm", discrete=True, element="step", ax=ax)
    ax.set(xlabel="words per description", ylabel="items")
    fig.tight_layout()
    return fig


CHANCE_STYLE = {"color": "black", "linestyle": "--", "linewidth": 1.2}


def metric_bars(table: pd.DataFrame, metric: str, order: Sequence[str]) -> plt.Figure:
    """Bars of one metric per method with their 95% CI (table: method, metric, mean, ci_low, ci_high,
    as :func:`vlm4rec.stats.results_table` returns it), top to bottom in ``order`` (the main table's: by
    validation, never by test); a ``chance`` method is a dashed line, not a bar."""
    rows = table[table["metric"] == metric].set_index("method")
    bars = rows.loc[[m for m in order if m in rows.index and m != CHANCE]]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(bars) + 1.2))
    ax.barh(bars.index[::-1], bars["mean"][::-1],
            xerr=[(bars["mean"] - bars["ci_low"])[::-1], (bars["ci_high"] - bars["mean"])[::-1]],
            color=sns.color_palette("deep", len(bars)), capsize=3)
    if CHANCE in rows.index:
        ax.axvline(rows.loc[CHANCE, "mean"], label="chance (random ranking)", **CHANCE_STYLE)
        ax.legend(loc="lower right", fontsize="small")
    ax.set(xlabel=f"{metric} (test, 95% bootstrap CI; ordered by validation)", ylabel="")
    fig.tight_layout()
    return fig


def metric_at_k_curves(curves: pd.DataFrame, metric: str = "recall", group: str | None = None) -> plt.Figure:
    """``metric``@K against K per method (curves: method, k, <metric>, and optionally a ``group`` column that
    puts each group of methods (baselines, single representations, fusions...) in its own panel, so that
    lines stay few enough per panel to tell apart); a ``chance`` method (of any group) is a dashed line in every
    panel; one legend per panel, below it."""
    is_chance = curves["method"] == CHANCE
    chance, curves = curves[is_chance], curves[~is_chance]
    groups = list(dict.fromkeys(curves[group])) if group else [None]
    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 5.2), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], groups):
        part = curves if name is None else curves[curves[group] == name]
        line = _chance_line(chance, metric, group, name, groups)
        if not line.empty:
            ax.plot(line.index, line.to_numpy(), label="chance (random ranking)", **CHANCE_STYLE)
        n_methods = part["method"].nunique()
        sns.lineplot(data=part, x="k", y=metric, hue="method", style="method", markers=True, dashes=False,
                     palette="tab20" if n_methods > 10 else "tab10", ax=ax)
        ax.set_xticks(sorted(curves["k"].unique()))
        ax.set(xlabel="K", ylabel=f"{metric}@K (test)", title=name or "")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize="small", frameon=False)
    fig.tight_layout()
    return fig


def _chance_line(chance: pd.DataFrame, metric: str, group: str | None, name: str | None,
                 groups: Sequence[str | None]) -> pd.Series:
    """Chance's ``metric`` by K for the panel ``name``: its own chance rows where the panel's group has some
    (e.g. one candidate set), else the rows of no panel's group (one chance shared by every panel)."""
    if group is not None and (chance[group] == name).any():
        rows = chance[chance[group] == name]
    else:
        rows = chance if group is None else chance[~chance[group].isin(groups)]
    return rows.groupby("k")[metric].first()


def slice_plot(slices: pd.DataFrame, value: str = "value", slice_col: str = "slice") -> plt.Figure:
    """Grouped bars of ``value`` per slice and method (slices: method, slice, value, and optionally the
    ``metric`` the values are, which labels the axis, and ``n``: slices without users or pairs are left
    out of the figure; the tables keep them)."""
    if "n" in slices:
        slices = slices[slices["n"] > 0]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    sns.barplot(data=slices, x=slice_col, y=value, hue="method", ax=ax)
    label = slices["metric"].iloc[0] if "metric" in slices and slices["metric"].nunique() == 1 else value
    ax.set(xlabel="", ylabel=label)
    ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize="small")
    fig.tight_layout()
    return fig


def image_grid(paths: Sequence[str | float | None], captions: Sequence[str], ncols: int = 6,
               cell_inches: float = 2.0, width_chars: int = 30, title: str | None = None) -> plt.Figure:
    """Posters (a grey placeholder where an item has no image: None or NaN path, or a broken file) with
    captions wrapped above each, and an optional figure ``title`` above everything.

    Each row is as tall as its image plus its longest wrapped caption, so captions never overlap posters;
    the title gets its own band, so it never overlaps the first captions.
    """
    from textwrap import fill

    from vlm4rec.images import ImageLoadError, load_image

    wrapped = ["\n".join(fill(part, width_chars) for part in caption.split("\n")) for caption in captions]
    nrows = max(1, int(np.ceil(len(paths) / ncols)))
    row_lines = [max([w.count("\n") + 1 for w in wrapped[r * ncols:(r + 1) * ncols]] or [1]) for r in range(nrows)]
    line_inches = 0.13
    heights = [cell_inches * 1.5 + line_inches * lines for lines in row_lines]
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * cell_inches, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax in axes.flat:
        ax.axis("off")
    placeholder = np.full((3, 2, 3), 200, dtype=np.uint8)
    for ax, path, caption in zip(axes.flat, paths, wrapped):
        try:
            ax.imshow(load_image(path) if isinstance(path, (str, Path)) and str(path) else placeholder)
        except ImageLoadError:
            ax.imshow(placeholder)
        ax.set_title(caption, fontsize=7, loc="left")
    title_inches = 0.35 if title else 0.0
    fig.set_figheight(sum(heights) + title_inches)
    fig.tight_layout(rect=(0, 0, 1, 1 - title_inches / (sum(heights) + title_inches)))
    if title:
        fig.suptitle(title, x=0.01, y=1 - 0.05 / (sum(heights) + title_inches), ha="left", va="top", fontsize=10)
    return fig
