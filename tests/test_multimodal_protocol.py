"""The multimodal models in the study's protocol: a planted image attribute reaches cold items only through
an informative modality, and selection / refit never hand a model data it must not see."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from multimodal_helpers import TINY, attribute_data, shuffled_rows
from study_params import section
from torch_threads import single_thread  # noqa: F401  (autouse fixture)

from vlm4rec.evaluation import EvalData
from vlm4rec.multimodal import MODELS, new_item_options


FAST = TINY | {"batch_size": 128, "lr": 0.05, "epochs": 15}


@pytest.fixture(scope="module")
def attribute():
    data = attribute_data(cold_per_class=10)
    return data, EvalData.from_prepared(data.prepared)


def cold_auc(model, data, eval_data: EvalData) -> float:
    """Mean over users of the share of (cold test item of the user, cold item of another class) pairs the
    model orders correctly (ties count half): 0.5 is chance."""
    users = eval_data.test_users
    scores = model.score_block(users)
    aucs = []
    for row, user in enumerate(users):
        targets = eval_data.test_targets[user].toarray().ravel() > 0
        positive = scores[row, targets & data.cold]
        negative = scores[row, data.cold & (data.item_class != data.user_class[user])]
        diff = positive[:, None] - negative[None, :]
        aucs.append(((diff > 0) + 0.5 * (diff == 0)).mean())
    return float(np.mean(aucs))


def test_an_informative_image_reaches_cold_items_and_a_shuffled_one_does_not(attribute):
    data, eval_data = attribute
    history = eval_data.trainval_history
    assert not history.matrix[:, data.cold].nnz  # cold items: never seen in training
    lightgcn = cold_auc(MODELS["lightgcn"](**FAST).fit(history), data, eval_data)
    assert abs(lightgcn - 0.5) < 0.15
    noise = {"text": np.random.default_rng(5).normal(size=data.image.shape).astype(np.float32)}
    for name in ("vbpr", "freedom", "smore"):
        extra = noise if name == "smore" else {}  # SMORE takes an image and a text modality: the text is noise
        informative = cold_auc(MODELS[name]({"image": data.image} | extra, **FAST).fit(history), data, eval_data)
        shuffled = cold_auc(MODELS[name]({"image": shuffled_rows(data.image)} | extra, **FAST).fit(history),
                            data, eval_data)
        assert informative > lightgcn + 0.25, (name, informative, lightgcn)
        assert shuffled < lightgcn + 0.1, (name, shuffled, lightgcn)


def pairs(matrix: sp.spmatrix) -> set[tuple[int, int]]:
    return set(zip(*(a.tolist() for a in sp.csr_matrix(matrix).nonzero())))


def split_pairs(data, splits: tuple[str, ...]) -> set[tuple[int, int]]:
    inter = data.prepared.interactions
    part = inter[inter["split"].isin(splits)]
    return set(zip(part["user_idx"].tolist(), part["item_idx"].tolist()))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_selection_and_refits_see_only_their_own_histories(attribute, name, monkeypatch):
    """Through select_and_test_seeds: every matrix a model is built from or draws negatives against is the
    train history while selecting (early-stopped on validation) and train + validation when refitted for
    the chosen number of epochs (no monitor); no test pair ever reaches a model or its monitor."""
    import vlm4rec.evaluation as evaluation
    import vlm4rec.multimodal.bpr as training
    from vlm4rec.multimodal import candidates

    data, eval_data = attribute
    events: list[tuple[str, set]] = []
    cls = MODELS[name]

    def spy(label, original, position):
        """Record the pairs of the matrix (or History) passed as positional argument ``position``."""
        def wrapper(*args, **kwargs):
            matrix = args[position]
            events.append((label, pairs(getattr(matrix, "matrix", matrix))))
            return original(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(training.BPRRecommender, "fit", spy("fit", training.BPRRecommender.fit, 1))
    monkeypatch.setattr(training.BPRRecommender, "fit_monitored",
                        spy("fit_monitored", training.BPRRecommender.fit_monitored, 1))
    monkeypatch.setattr(cls, "build", spy("build", cls.build, 1))
    monkeypatch.setattr(training, "sample_negatives", spy("negatives", training.sample_negatives, 0))
    monitored = []
    original_monitor = evaluation.validation_monitor
    monkeypatch.setattr(evaluation, "validation_monitor",
                        lambda split, *a: monitored.append(split) or original_monitor(split, *a))

    modalities = {} if name == "lightgcn" else {"image": data.image, "text": shuffled_rows(data.image)}
    results = evaluation.select_and_test_seeds(
        name, lambda seed: candidates(name, modalities, {"lr": [0.02, 0.05]}, FAST | {"eval_every": 5}, seed),
        eval_data, seeds=(0, 1), ks=(10,))

    train, trainval = split_pairs(data, ("train",)), split_pairs(data, ("train", "val"))
    fits = [(label, seen) for label, seen in events if label in ("fit", "fit_monitored")]
    assert [label for label, _ in fits] == ["fit_monitored"] * 2 + ["fit"] * 2
    assert all(seen == train for _, seen in fits[:2]) and all(seen == trainval for _, seen in fits[2:])
    inner = [(label, seen) for label, seen in events if label in ("build", "negatives")]
    first_refit = next(i for i, (_, seen) in enumerate(inner) if seen == trainval)
    assert {label for label, _ in inner[:first_refit]} == {"build", "negatives"}
    assert all(seen == train for _, seen in inner[:first_refit])
    assert all(seen == trainval for _, seen in inner[first_refit:])
    test = split_pairs(data, ("test",))
    assert not any(seen & test for _, seen in events)
    assert len(monitored) == 2 and all(pairs(split.targets) == split_pairs(data, ("val",)) for split in monitored)
    chosen_epochs = results[evaluation.MethodKey(name, 0)].config["epochs"]
    assert all(result.config["epochs"] == chosen_epochs for result in results.values())


@pytest.mark.parametrize("name", ["freedom", "smore"])
def test_inductive_content_graphs_carry_an_informative_image_to_new_items(attribute, name):
    """The strictly inductive new-item form (graphs of the warm items, new items inserted at scoring) still
    reaches the cold items through an informative image, and not through a shuffled one."""
    data, eval_data = attribute
    history = eval_data.trainval_history
    options = FAST | {"unseen_items": "content", "content_graph": "inductive"}
    extra = {"text": np.random.default_rng(5).normal(size=data.image.shape).astype(np.float32)} \
        if name == "smore" else {}
    informative = cold_auc(MODELS[name]({"image": data.image} | extra, **options).fit(history), data, eval_data)
    shuffled = cold_auc(MODELS[name]({"image": shuffled_rows(data.image)} | extra, **options).fit(history),
                        data, eval_data)
    assert informative > shuffled + 0.25, (name, informative, shuffled)


@pytest.mark.parametrize("content_graph", ["transductive", "inductive"])
def test_new_item_options_score_from_content_and_give_the_graph_form_to_the_models_with_content_graphs(
        content_graph) -> None:
    graph = section("graph")
    for model in ("vbpr", "freedom", "smore"):
        options = new_item_options(graph, model, content_graph)
        assert options["unseen_items"] == "content"
        assert options.get("content_graph") == (None if model == "vbpr" else content_graph)
