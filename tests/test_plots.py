"""Figures: each draws what its table holds (bar lengths, CI whiskers, grid layout, placeholders)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from vlm4rec import plots  # noqa: E402
from vlm4rec.metrics import CHANCE  # noqa: E402


def test_metric_bars_follow_the_given_order_and_draw_chance_as_a_line() -> None:
    """The bars run top to bottom in the order given (the main table's validation order), not by test value;
    chance is a dashed vertical line at its mean."""
    table = pd.DataFrame({"method": ["a", "b", "a", CHANCE], "metric": ["ndcg@10", "ndcg@10", "recall@10", "ndcg@10"],
                          "mean": [0.3, 0.1, 0.9, 0.02], "ci_low": [0.25, 0.05, 0.8, 0.02],
                          "ci_high": [0.4, 0.2, 1.0, 0.02]})
    fig = plots.metric_bars(table, "ndcg@10", order=["b", CHANCE, "a"])  # b first although a is better on test
    bars = fig.axes[0].patches
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["a", "b"]  # matplotlib lists the bottom bar first: b is on top
    assert [round(b.get_width(), 6) for b in bars] == [0.3, 0.1]  # only the asked metric
    assert [line.get_xdata()[0] for line in fig.axes[0].get_lines() if line.get_linestyle() == "--"] == [0.02]


def test_metric_at_k_curves_have_one_line_per_method() -> None:
    curves = pd.DataFrame({"method": ["a"] * 3 + ["b"] * 3, "k": [5, 10, 20] * 2,
                           "recall": [0.1, 0.2, 0.3, 0.0, 0.1, 0.15]})
    fig = plots.metric_at_k_curves(curves)
    assert len(fig.axes[0].get_lines()) >= 2
    assert sorted(t.get_text() for t in fig.axes[0].get_legend().get_texts()) == ["a", "b"]


def test_image_grid_lays_out_rows_and_uses_a_placeholder_for_missing_or_broken_images(tmp_path) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(np.full((30, 20, 3), 255, dtype=np.uint8)).save(good)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    fig = plots.image_grid([str(good), None, str(broken), float("nan")], ["one", "two\nlines", "three", "four"],
                           ncols=3)
    assert len(fig.axes) == 6  # two rows of three, the last two cells empty
    shapes = [ax.get_images()[0].get_array().shape for ax in fig.axes[:4]]
    assert shapes == [(30, 20, 3), (3, 2, 3), (3, 2, 3), (3, 2, 3)]
    assert fig.axes[1].get_title(loc="left") == "two\nlines"


def test_metric_at_k_curves_put_each_group_in_its_own_panel() -> None:
    curves = pd.DataFrame({"method": ["a"] * 2 + ["b"] * 2 + ["c"] * 2, "k": [5, 10] * 3,
                           "recall": [0.1, 0.2, 0.0, 0.1, 0.3, 0.4], "group": ["x"] * 4 + ["y"] * 2})
    fig = plots.metric_at_k_curves(curves, group="group")
    assert [ax.get_title() for ax in fig.axes] == ["x", "y"]
    assert [sorted(t.get_text() for t in ax.get_legend().get_texts()) for ax in fig.axes] == [["a", "b"], ["c"]]


def test_chance_is_a_dashed_line_in_every_panel_or_its_own() -> None:
    methods = pd.DataFrame({"method": ["a"] * 2 + ["c"] * 2, "k": [5, 10] * 2, "recall": [0.1, 0.2, 0.3, 0.4],
                            "group": ["x"] * 2 + ["y"] * 2})
    shared = pd.DataFrame({"method": CHANCE, "k": [5, 10], "recall": [0.01, 0.02], "group": "chance"})
    fig = plots.metric_at_k_curves(pd.concat([methods, shared]), group="group")
    assert [ax.get_title() for ax in fig.axes] == ["x", "y"]  # no panel of its own
    dashed = [[tuple(line.get_ydata()) for line in ax.get_lines() if line.get_linestyle() == "--"] for ax in fig.axes]
    assert dashed == [[(0.01, 0.02)], [(0.01, 0.02)]]
    own = pd.DataFrame({"method": CHANCE, "k": [5, 10, 5, 10], "recall": [0.01, 0.02, 0.5, 0.6],
                        "group": ["x", "x", "y", "y"]})  # e.g. one chance per candidate set
    fig = plots.metric_at_k_curves(pd.concat([methods, own]), group="group")
    dashed = [[tuple(line.get_ydata()) for line in ax.get_lines() if line.get_linestyle() == "--"] for ax in fig.axes]
    assert dashed == [[(0.01, 0.02)], [(0.5, 0.6)]]


def test_image_grid_title_sits_above_the_first_row_of_captions(tmp_path) -> None:
    fig = plots.image_grid([None, None], ["a caption\non two lines", "b"], ncols=2, title="user 7")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    title_box = fig._suptitle.get_window_extent(renderer)
    caption_box = fig.axes[0].title.get_window_extent(renderer)
    assert title_box.y0 >= caption_box.y1  # no overlap


def test_slice_plot_leaves_out_empty_slices() -> None:
    slices = pd.DataFrame({"method": ["a", "a"], "slice": ["0", "1-10"], "value": [np.nan, 0.2], "n": [0, 5],
                           "metric": ["recall@20"] * 2})
    fig = plots.slice_plot(slices)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1-10"]
