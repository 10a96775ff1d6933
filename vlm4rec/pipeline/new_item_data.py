"""The new-item protocol's data, shared by the cold_start stage and the benchmarks that rerun its cells: the
prepared interactions re-split by ``params.yaml: cold_start`` and chance on each setting. A shared helper of
the stages, not a stage."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from vlm4rec.cold_start import CANDIDATE_SETS, NewItemData, new_item_counts
from vlm4rec.config import ColdStartParams, EvalParams
from vlm4rec.data import load_prepared
from vlm4rec.distributed.matching import ranker
from vlm4rec.errors import StudyError
from vlm4rec.evaluation import ChanceReference
from vlm4rec.pipeline.outputs import PREPARED_DIR
from vlm4rec.splits import assign_new_item_split, new_items


def new_item_split(inter: pd.DataFrame, cold_start: ColdStartParams) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """``inter`` labelled by the protocol ``cold_start`` describes (new items' rows ``val`` / ``test``, the main
    split's test rows on warm items ``warm_test``), with its validation and test new items; a share that
    leaves no new item on a side is a :class:`StudyError` naming the keys."""
    try:
        val_items, test_items = new_items(inter, cold_share=cold_start.cold_share, val_share=cold_start.val_share,
                                          variant=cold_start.variant, seed=cold_start.seed)
    except ValueError as err:
        raise StudyError(f"cold_start.cold_share / cold_start.val_share: {err}") from None
    labels = assign_new_item_split(inter, val_items, test_items, warm_test=main_test(inter))
    return inter.assign(split=labels), val_items, test_items


def new_item_data(cold_start: ColdStartParams, evaluation: EvalParams
                  ) -> tuple[NewItemData, dict[str, int | float]]:
    """The prepared interactions re-split by ``cold_start`` (selection ranks the validation new items among
    themselves) and the protocol's counts."""
    prepared = load_prepared(PREPARED_DIR)
    inter, val_items, test_items = new_item_split(prepared.interactions, cold_start)
    data = NewItemData.from_new_item_split(inter, prepared.n_users, prepared.n_items, val_items, test_items, "cold",
                                           rank=ranker(None, evaluation.device, evaluation.block_size))
    return data, new_item_counts(inter, val_items, test_items)


def main_test(inter: pd.DataFrame) -> np.ndarray:
    """Which interactions the main split tests on (each user's latest positives): on the warm items they are
    the warm and hybrid settings' warm test, held out of the new-item protocol's training."""
    if "split" not in inter:
        raise StudyError("the prepared interactions have no split column: run the prepare stage again")
    return (inter["split"] == "test").to_numpy()


def chance_references(data: NewItemData, ks: Sequence[int]) -> dict[str, ChanceReference]:
    """Per setting, chance over the same candidates and targets as the methods; on validation, the selection's
    split (the validation new items ranked among themselves), where the methods' validation values come from
    too."""
    return {name: ChanceReference.of(data.validation(), data.with_candidates(name).test(), ks)
            for name in CANDIDATE_SETS}
