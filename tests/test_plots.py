"""Figures: each draws what its table holds (bar lengths, CI whiskers, grid layout, placeholders)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from vlm4rec import plots  # noqa: E402


def test_metric_bars_draw_means_sorted_with_their_intervals() -> None:
    table = pd.DataFrame({"method": ["a", "b", "a"], "metric": ["ndcg@10", "ndcg@10", "recall@10"],
                          "mean": [0.3, 0.1, 0.9], "ci_low": [0.25, 0.05, 0.8], "ci_high": [0.4, 0.2, 1.0]})
    fig = plots.metric_bars(table, "ndcg@10")
    bars = fig.axes[0].patches
    assert [round(b.get_width(), 6) for b in bars] == [0.1, 0.3]  # ascending, only the asked metric
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["b", "a"]


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
