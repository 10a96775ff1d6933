"""The ground stage's own rule (vlm4rec/pipeline/ground.py): a run that described too few images fails
with the counts and the most frequent failure kinds; finished work stays in the cache."""
from __future__ import annotations

import pandas as pd
import pytest

from vlm4rec.errors import StudyError
from vlm4rec.grounding import GroundingResult
from vlm4rec.pipeline.ground import check_success_rate


def result(ok: int, failed_by_kind: dict[str, int], no_image: int = 0) -> GroundingResult:
    failed = sum(failed_by_kind.values())
    return GroundingResult(pd.DataFrame(), {"items": ok + failed + no_image, "ok": ok, "failed": failed,
                                            "no_image": no_image, "failed_by_kind": failed_by_kind})


def test_enough_descriptions_pass_and_items_without_an_image_do_not_count() -> None:
    check_success_rate(result(90, {"truncated": 10}, no_image=500), "image_only", 0.9)
    check_success_rate(result(0, {}, no_image=5), "image_only", 0.9)  # nothing to describe


def test_too_few_descriptions_stop_the_stage_naming_counts_and_failure_kinds() -> None:
    with pytest.raises(StudyError) as caught:
        check_success_rate(result(312, {"retries_exhausted": 3500, "not_an_image": 60, "truncated": 1,
                                        "empty": 1}), "image_only", 0.9)
    message = str(caught.value)
    assert message.startswith("only 312 of 3,874 items with an image were described under prompt arm image_only "
                              "(8.1% < ground.min_success_rate 0.9)")
    assert "retries_exhausted (3,500), not_an_image (60)" in message and "rerun describes only what is missing" in message
