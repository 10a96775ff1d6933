"""ground_items with a counting fake grounder: deduplication, cache reuse, per-image failures, counts."""
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vlm4rec.errors import StudyError
from vlm4rec.grounding.base import Grounder, GroundingStopped
from vlm4rec.grounding.cache import DescriptionCache
from vlm4rec.grounding.prompts import IMAGE_ONLY, IMAGE_TITLE
from vlm4rec.grounding.runner import TABLE_COLUMNS, Describer, LocalDescriber, add_counts, ground_items


class CountingGrounder(Grounder):
    """Describes an image by its mean red value; raises for images whose red value is ``fail_red``."""

    grounder_id = "fake"
    description_of_method = "fake (test double)"

    def __init__(self, batch_size=2, fail_red=None, version=1, stop_red=None):
        self.batch_size, self.fail_red, self.version, self.stop_red = batch_size, fail_red, version, stop_red
        self.calls: list[int] = []

    @property
    def model_id(self):
        return "fake-model@1"

    def settings(self):
        return {"version": self.version}

    def usage(self):
        return {"calls": len(self.calls), "images": {"seen": sum(self.calls)}}

    def describe(self, images, prompts):
        self.calls.append(len(images))
        reds = [int(np.asarray(image)[..., 0].mean()) for image in images]
        if self.fail_red in reds:
            raise RuntimeError(f"cannot describe red={self.fail_red}")
        if self.stop_red in reds:
            raise GroundingStopped("server unreachable at http://gone: connection refused")
        return [f"red {red} for {prompt}" for red, prompt in zip(reds, prompts)]


def png(red: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (red, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def catalogue(tmp_path, reds, titles=None, has_image=None) -> pd.DataFrame:
    paths = []
    for i, red in enumerate(reds):
        path = tmp_path / f"{i}.png"
        path.write_bytes(png(red))
        paths.append(str(path))
    n = len(reds)
    return pd.DataFrame({"item_idx": np.arange(n), "item_id": [f"i{k}" for k in range(n)],
                         "title": titles or [f"Title {k} (2000)" for k in range(n)], "image_path": paths,
                         "has_image": has_image or [True] * n})


def test_first_run_describes_each_distinct_image_once(tmp_path):
    items = catalogue(tmp_path, [10, 20, 10, 30, 20], has_image=[True, True, True, True, False])
    grounder = CountingGrounder(batch_size=2)
    with DescriptionCache(tmp_path / "c.sqlite") as cache:
        result = ground_items(items, grounder, cache, IMAGE_ONLY, progress=False)
    table = result.table
    assert list(table.columns) == TABLE_COLUMNS
    assert table["status"].tolist() == ["ok", "ok", "ok", "ok", "no_image"]
    assert table["description"][0] == table["description"][2] and table["description"][0].startswith("red 10")
    assert pd.isna(table["description"][4]) and pd.isna(table["error"][0])
    assert sum(grounder.calls) == 3 and grounder.calls == [2, 1]  # reds 10, 20, 30 in batches of 2
    assert not table["from_cache"].any()
    c = result.counts
    assert (c["items"], c["ok"], c["failed"], c["no_image"], c["described"]) == (5, 4, 0, 1, 3)
    assert (c["unique_images"], c["duplicate_items"], c["from_cache"]) == (3, 1, 0)
    assert c["images_per_s"] > 0 and c["wall_s"] >= c["describe_s"]
    assert set(table["prompt_arm"]) == {IMAGE_ONLY} and set(table["model"]) == {"fake-model@1"}


def test_second_run_reads_everything_from_the_cache(tmp_path):
    items = catalogue(tmp_path, [10, 20, 30])
    with DescriptionCache(tmp_path / "c.sqlite") as cache:
        first = ground_items(items, CountingGrounder(), cache, IMAGE_ONLY, progress=False)
        again = CountingGrounder()
        second = ground_items(items, again, cache, IMAGE_ONLY, progress=False)
        changed = CountingGrounder(version=2)  # other settings: other keys, described anew
        ground_items(items, changed, cache, IMAGE_ONLY, progress=False)
        assert len(cache) == 6
    assert again.calls == [] and second.table["from_cache"].all()
    assert second.table["description"].tolist() == first.table["description"].tolist()
    assert (second.counts["from_cache"], second.counts["described"], second.counts["images_per_s"]) == (3, 0, None)
    assert sum(changed.calls) == 3


def test_title_arm_describes_same_bytes_once_per_title(tmp_path):
    items = catalogue(tmp_path, [10, 10, 10], titles=["A (1990)", "B (1991)", "A (1990)"])
    grounder = CountingGrounder(batch_size=8)
    with DescriptionCache(tmp_path / "c.sqlite") as cache:
        result = ground_items(items, grounder, cache, IMAGE_TITLE, progress=False)
    assert grounder.calls == [2]
    assert result.table["description"][0] == result.table["description"][2] != result.table["description"][1]
    # The fake repeats its prompt, so under the title arm every description names its own title...
    assert result.table["mentions_title"].all() and result.counts["title_mentions"] == 3


def test_title_mentions_are_counted_per_item(tmp_path):
    items = catalogue(tmp_path, [10, 20], titles=["Red (1990)", "Blue (1991)"])
    with DescriptionCache(tmp_path / "c.sqlite") as cache:
        result = ground_items(items, CountingGrounder(), cache, IMAGE_ONLY, progress=False)
    # ...and under image_only ("red 10 for Describe ...") only the film titled "Red" is named.
    assert result.table["mentions_title"].tolist() == [True, False] and result.counts["title_mentions"] == 1


def test_a_failing_image_is_recorded_and_its_batch_mates_survive(tmp_path):
    items = catalogue(tmp_path, [10, 66, 30])
    with DescriptionCache(tmp_path / "c.sqlite") as cache:
        result = ground_items(items, CountingGrounder(batch_size=3, fail_red=66), cache, IMAGE_ONLY, progress=False)
        assert result.table["status"].tolist() == ["ok", "failed", "ok"]
        assert result.table["error_kind"][1] == "RuntimeError"
        assert result.table["error"][1] == "cannot describe red=66"
        assert result.counts["failed_by_kind"] == {"RuntimeError": 1}

        kept = CountingGrounder(fail_red=66)
        again = ground_items(items, kept, cache, IMAGE_ONLY, progress=False, retry_failed=False)
        assert kept.calls == [] and again.table["from_cache"].all() and again.counts["failed"] == 1

        fixed = CountingGrounder()
        retried = ground_items(items, fixed, cache, IMAGE_ONLY, progress=False)
        assert fixed.calls == [1] and retried.table["status"].tolist() == ["ok", "ok", "ok"]
        assert retried.table["from_cache"].tolist() == [True, False, True]


def test_relative_paths_and_missing_columns(tmp_path):
    items = catalogue(tmp_path, [10])
    items["image_path"] = ["0.png"]
    with DescriptionCache(tmp_path / "c.sqlite") as cache:
        result = ground_items(items, CountingGrounder(), cache, IMAGE_ONLY, progress=False, image_root=tmp_path)
        assert result.table["status"].tolist() == ["ok"]
        with pytest.raises(ValueError, match=r"lacks columns \['has_image'\]"):
            ground_items(items.drop(columns="has_image"), CountingGrounder(), cache, IMAGE_ONLY, progress=False)


def test_a_stopped_grounder_ends_the_run_and_keeps_finished_batches(tmp_path):
    items = catalogue(tmp_path, [10, 20, 30, 40, 50], has_image=[True, True, True, True, False])
    with DescriptionCache(tmp_path / "c.sqlite") as cache:
        with pytest.raises(StudyError, match=r"^server unreachable at http://gone: connection refused; "
                                             r"2 of 4 described; rerun resumes from the cache$"):
            ground_items(items, CountingGrounder(batch_size=2, stop_red=30), cache, IMAGE_ONLY, progress=False)
        assert len(cache) == 2
        resumed = CountingGrounder(batch_size=2)
        result = ground_items(items, resumed, cache, IMAGE_ONLY, progress=False)
    assert resumed.calls == [2] and result.counts["from_cache"] == 2 and result.counts["ok"] == 4


class ReversedDescriber(LocalDescriber):
    """Finishes the batches last to first, as a distributed describer may."""

    def describe(self, batches):
        finished = list(super().describe(batches))
        return iter(finished[::-1])


def test_any_describer_gives_the_local_result_and_usage_is_counted_per_run(tmp_path):
    items = catalogue(tmp_path, [10, 20, 30, 10, 40])
    with DescriptionCache(tmp_path / "a.sqlite") as cache:
        local = ground_items(items, CountingGrounder(), cache, IMAGE_ONLY, progress=False)
    grounder = CountingGrounder()
    grounder.calls = [7]  # usage before the run does not count towards it
    describer = ReversedDescriber(grounder)
    assert isinstance(describer, Describer) and describer.identity.model_id == "fake-model@1"
    with DescriptionCache(tmp_path / "b.sqlite") as cache:
        reversed_run = ground_items(items, describer, cache, IMAGE_ONLY, progress=False)
    pd.testing.assert_frame_equal(reversed_run.table, local.table)
    assert local.counts["usage"] == reversed_run.counts["usage"] == {"calls": 2, "images": {"seen": 4}}


def test_add_counts_over_nested_dicts():
    assert add_counts({"a": 1, "s": {"x": 2}}, {"a": 2, "b": 1, "s": {"x": 1, "y": 3}}) == \
        {"a": 3, "b": 1, "s": {"x": 3, "y": 3}}
    assert add_counts({"a": 5, "s": {"x": 2}}, {"a": 2, "s": {"x": 2}}, sign=-1) == {"a": 3, "s": {"x": 0}}
