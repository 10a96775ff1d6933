from vlm4rec.config import load_params
from vlm4rec.multimodal import regime_options
from vlm4rec.pipeline.graph import training_schedule

from study_params import REPO


def test_a_cells_schedule_is_the_regimes_options_over_its_models_defaults() -> None:
    graph = load_params(REPO / "params.yaml").graph
    fast = {model: training_schedule(model, regime_options(graph, model))
            for model in ("lightgcn", "vbpr", "freedom", "smore")}
    assert fast["lightgcn"] == {"lr": 0.05, "lr_decay": 1.0, "lr_decay_step": 50.0, "epochs": 60, "eval_every": 4,
                                "patience": 2, "batch_size": 32768}
    assert fast["vbpr"]["lr"] == 0.01  # the regime sets no lr: VBPR's own default
    assert (fast["freedom"]["lr"], fast["freedom"]["epochs"], fast["freedom"]["patience"]) == (0.0125, 100, 10)
    assert fast["smore"]["lr_decay"] == 0.96
    paper = training_schedule("lightgcn", regime_options(graph.model_copy(update={"regime": "paper"}), "lightgcn"))
    assert (paper["lr"], paper["epochs"], paper["batch_size"]) == (0.001, 1000, 2048)
