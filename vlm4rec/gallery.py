"""The recommendation gallery: for a few test users, their latest history and each method's top-k, as rows of
posters with captions for :func:`vlm4rec.plots.image_grid` (the report and the new-item stage show it)."""
from __future__ import annotations

import numpy as np

from vlm4rec.data import PreparedData
from vlm4rec.evaluation import MethodKey, MethodResult
from vlm4rec.findings import families


def user_gallery(results: dict[MethodKey, MethodResult], methods: list[str], prepared: PreparedData, n_users: int = 3,
                 history: int = 6, k: int = 5, seed: int = 0) -> list[tuple[str, list[str | None], list[str]]]:
    """For a seeded sample of test users: their latest history posters, then each method family's top-k
    (a seeded family's first seed, named in the row title; families without results are skipped).

    Returns (row title, image paths, captions) rows for :func:`vlm4rec.plots.image_grid`."""
    items = prepared.items.set_index("item_idx")
    inter = prepared.interactions
    test = inter[inter["split"] == "test"].groupby("user_idx")["item_idx"].apply(set)
    users = np.random.default_rng(seed).permutation(np.sort(test.index.to_numpy()))[:n_users]
    rows = []
    for user in users:
        seen = inter[(inter["user_idx"] == user) & inter["split"].isin(["train", "val"])]
        latest = seen.sort_values("timestamp")["item_idx"].to_numpy()[-history:][::-1]
        rows.append((f"user {user}: latest history", [items.at[i, "image_path"] for i in latest],
                     [items.at[i, "title"] for i in latest]))
        for method in [m for m in methods if m in families(results)]:
            key = families(results)[method][0]
            result = results[key]
            row = int(np.flatnonzero(result.test_per_user["user_idx"].to_numpy() == user)[0])
            top = result.test_topk[row, :k]
            rows.append((f"{key.name} top-{k}", [items.at[i, "image_path"] for i in top],
                         [("HIT  " if i in test[user] else "") + items.at[i, "title"] for i in top]))
    return rows
