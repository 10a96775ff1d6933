"""The regime gap: one graph model trained to convergence in one training regime on a prepared dataset.

One monitored fit (early stopping on validation NDCG@10, the selection run of a study cell) of ``--model``
with ``--modalities`` in ``--regime`` (``params.yaml: graph.training.<regime>``, with the model's own options
of ``graph.training.<regime>.models``; the fast regime also takes the model's ``graph.default`` grid point,
the paper regime each model's reference defaults), on the train history of ``--prepared``, checked on its
validation users. After every validation check it prints the epoch, the validation NDCG@10 and the wall
time since the start, and rewrites ``--out`` (JSON: the settings, every check so far, and at the end the best
epoch and whether it stopped early), so that the progress of a run of hours survives a kill. Run it once
per (model, regime); compare the best validation values.

  python benchmarks/bench_regimes.py --prepared data/prepared --embeddings data/embeddings \\
      --model freedom --modalities title image --regime paper --out benchmarks/regime_freedom_paper.json

``--epochs N`` caps the epochs (a smoke test); ``--set key=value`` (JSON values) overrides a model option.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from vlm4rec.config import GraphParams, load_params
from vlm4rec.data import load_prepared
from vlm4rec.distributed.matching import ranker
from vlm4rec.evaluation import DEFAULT_KS, EvalData, validation_monitor
from vlm4rec.matching import IterativeRecommender
from vlm4rec.multimodal import MODELS, candidates, regime_options
from vlm4rec.representations import load_vectors

METRIC = "ndcg@10"


def model_options(graph: GraphParams, model: str, regime: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The regime's training options for ``model``, the fast regime's grid point of ``model`` (first values
    of ``graph.default.grids``), then ``overrides``."""
    options = regime_options(graph.model_copy(update={"regime": regime}), model)
    if regime == "fast":
        options |= {key: values[0] for key, values in graph.default.grids[model].items()}
    return options | overrides


def write_atomically(path: Path, payload: dict[str, Any]) -> None:
    """Replace ``path`` by ``payload`` as JSON (a kill leaves the previous or the new file, never half)."""
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(json.dumps(payload, indent=1))
    os.replace(partial, path)


def measure_and_record(names: Sequence[str], measure: Callable[[str], dict[str, Any]],
                       summary_lines: Callable[[dict[str, Any]], list[str]], out: str | None, key: str) -> None:
    """Measure each of ``names``, print its summary lines and, with ``out``, rewrite it as ``{key: [entries]}``
    after each one, so that a killed run keeps what finished."""
    entries = []
    for name in names:
        entries.append(measure(name))
        for line in summary_lines(entries[-1]):
            print(line, flush=True)
        if out:
            write_atomically(Path(out), {key: entries})


def recording_monitor(monitor: Callable[[IterativeRecommender], float], eval_every: int, epochs: int,
                      payload: dict[str, Any], out: Path, started: float) -> Callable[[IterativeRecommender], float]:
    """``monitor`` that also records each check (epoch, value, wall seconds) in ``payload`` and rewrites
    ``out``. Check k (from 0) is at epoch min(k * eval_every, epochs): the training loop checks the initial
    state, every ``eval_every`` epochs and after the last epoch."""
    def check(model: IterativeRecommender) -> float:
        value = monitor(model)
        epoch = min(len(payload["checks"]) * eval_every, epochs)
        wall = time.perf_counter() - started
        payload["checks"].append({"epoch": epoch, METRIC: value, "wall_s": round(wall, 2)})
        print(f"epoch {epoch:5d}  val {METRIC} {value:.5f}  {wall:9.1f} s", flush=True)
        write_atomically(out, payload)
        return value
    return check


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", required=True, help="prepared dataset directory (data/prepared)")
    parser.add_argument("--embeddings", default="data/embeddings", help="representations directory")
    parser.add_argument("--model", required=True, choices=sorted(MODELS))
    parser.add_argument("--modalities", nargs="*", default=[], help="representation names (none for lightgcn)")
    parser.add_argument("--regime", required=True, choices=["fast", "paper"])
    parser.add_argument("--params", default="params.yaml", help="the study parameters (graph.training, grids)")
    parser.add_argument("--device", help="cpu | cuda | auto (default: params.yaml graph.device)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, help="cap on the epochs (default: the regime's)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON", help="model option overrides")
    parser.add_argument("--out", required=True, help="JSON file rewritten after every validation check")
    args = parser.parse_args(argv)

    graph = load_params(args.params).graph
    overrides = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.set)}
    if args.device:
        overrides["device"] = args.device
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    options = model_options(graph, args.model, args.regime, overrides)
    modalities = {name: load_vectors(Path(args.embeddings), name) for name in args.modalities}
    model = candidates(args.model, modalities, {}, options, args.seed)[0].build()
    data = EvalData.from_prepared(load_prepared(Path(args.prepared)), ranker(None, "cpu"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"model": args.model, "modalities": args.modalities, "regime": args.regime,
                               "seed": args.seed, "options": options, "checks": []}
    print(f"{args.model} {args.modalities} regime {args.regime}: {options}", flush=True)
    started = time.perf_counter()
    monitor = recording_monitor(validation_monitor(data.validation(), DEFAULT_KS, METRIC), model.eval_every,
                                model.epochs, payload, out, started)
    log = model.fit_monitored(data.train_history, monitor)
    best = max(payload["checks"], key=lambda check: check[METRIC])
    payload |= {"best_epoch": log.best_epoch, "best_" + METRIC: best[METRIC], "epochs_run": log.epochs_run,
                "stopped_early": log.stopped_early, "wall_s": round(time.perf_counter() - started, 2)}
    write_atomically(out, payload)
    print(f"best val {METRIC} {best[METRIC]:.5f} at epoch {log.best_epoch}; {log.epochs_run} epochs, "
          f"stopped early: {log.stopped_early}, {payload['wall_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
