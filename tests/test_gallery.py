"""The recommendation gallery's rows."""
from __future__ import annotations

from dataclasses import replace

from vlm4rec.gallery import user_gallery

from test_pipeline_report import setup  # noqa: F401 (the fixture used here)


def test_galleries_show_a_seeded_familys_first_seed(setup) -> None:
    results, data = setup
    data = replace(data, items=data.items.assign(title=[f"t{i}" for i in range(len(data.items))], image_path=None))
    rows = user_gallery(results, ["fusion_gating", "title", "absent"], data, n_users=1, k=3)
    assert [title for title, _, _ in rows[1:]] == ["fusion_gating@seed0 top-3", "title top-3"]
