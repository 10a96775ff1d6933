"""Figures of the study (seaborn / matplotlib), each a function of stage outputs returning a Figure."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from vlm4rec.data import PreparedData

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


def metric_bars(table: pd.DataFrame, metric: str) -> plt.Figure:
    """Bars of one metric per method with their 95% CI (table: method, metric, mean, ci_low, ci_high,
    as :func:`vlm4rec.stats.results_table` returns it)."""
    rows = table[table["metric"] == metric].sort_values("mean")
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
    ax.barh(rows["method"], rows["mean"],
            xerr=[rows["mean"] - rows["ci_low"], rows["ci_high"] - rows["mean"]],
            color=sns.color_palette("deep", len(rows)), capsize=3)
    ax.set(xlabel=f"{metric} (test, 95% bootstrap CI)", ylabel="")
    fig.tight_layout()
    return fig


def metric_at_k_curves(curves: pd.DataFrame, metric: str = "recall") -> plt.Figure:
    """``metric``@K against K per method (curves: method, k, <metric>)."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    sns.lineplot(data=curves, x="k", y=metric, hue="method", marker="o", ax=ax)
    ax.set(xscale="log", xticks=sorted(curves["k"].unique()), xlabel="K", ylabel=f"{metric}@K (test)")
    ax.get_xaxis().set_major_formatter(plt.ScalarFormatter())
    ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize="small")
    fig.tight_layout()
    return fig


def slice_plot(slices: pd.DataFrame, value: str, slice_col: str = "slice") -> plt.Figure:
    """Grouped bars of ``value`` per slice and method (slices: method, slice, value, ...)."""
    fig, ax = plt.subplots(figsize=(9, 3.8))
    sns.barplot(data=slices, x=slice_col, y=value, hue="method", ax=ax)
    ax.set(xlabel="", ylabel=value)
    ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize="small")
    fig.tight_layout()
    return fig


def image_grid(paths: Sequence[str | None], captions: Sequence[str], ncols: int = 6,
               cell_inches: float = 2.0, row_titles: Sequence[str] | None = None) -> plt.Figure:
    """Posters (or a grey placeholder where an item has no image) with wrapped captions."""
    from textwrap import fill

    from vlm4rec.images import ImageLoadError, load_image

    nrows = max(1, int(np.ceil(len(paths) / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * cell_inches, nrows * cell_inches * 1.9),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, path, caption in zip(axes.flat, paths, captions):
        try:
            ax.imshow(load_image(path) if path else np.full((3, 2, 3), 200, dtype=np.uint8))
        except ImageLoadError:
            ax.imshow(np.full((3, 2, 3), 200, dtype=np.uint8))
        ax.set_title(fill(caption, 28), fontsize=7, loc="left")
    if row_titles is not None:
        for row, title in zip(axes[:, 0], row_titles):
            row.text(-0.1, 0.5, title, transform=row.transAxes, rotation=90, va="center", ha="right",
                     fontsize=9)
    fig.tight_layout()
    return fig
