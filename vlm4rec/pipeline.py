"""The thin layer the stage notebooks call: parameters in, files out, costs recorded.

Every function here reads the parameter dicts a stage declares (see :mod:`vlm4rec.stage`) and the data
files earlier stages wrote, calls the tested modules, and writes data files and metrics JSON. Notebooks
show what these functions return; nothing a later stage reads is produced inside a notebook.
"""
from __future__ import annotations

import json
import resource
import time
from contextlib import contextmanager
from pathlib import Path
from itertools import product
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import torch

from vlm4rec.baselines import EASE, ItemKNNCF, MostPop
from vlm4rec.data import PreparedData, RawDataset, dataset_counts, load_prepared, prepare, save_prepared
from vlm4rec.encoders import (EfficientNetLite0Features, ImageEncoder, OpenClipImageEncoder,
                              encode_image_paths, load_text_encoder)
from vlm4rec.evaluation import Candidate, EvalData, MethodResult, load_result, select_and_test
from vlm4rec.fusion import FusionResult, fit_fusion_seeds, weighted_concat
from vlm4rec.matching import ProfileRecommender, ScoreMix
from vlm4rec.grounding import DescriptionCache, Grounder, build_grounder, ground_items, mentions_title
from vlm4rec.representations import Representation, from_features, from_texts, item_texts
from vlm4rec.splits import SplitConfig
from vlm4rec.stats import paired_tests, results_table

PREPARED_DIR = Path("data/prepared")
GROUNDING_DIR = Path("data/grounding")
EMBEDDINGS_DIR = Path("data/embeddings")
RESULTS_DIR = Path("data/results")
ABLATIONS_DIR = Path("data/ablations")
METRICS_DIR = Path("metrics")
PLOTS_DIR = Path("plots")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def timed(costs: dict[str, Any], name: str) -> Iterator[None]:
    """Record the wall time of a block under ``costs[name + "_s"]``."""
    start = time.perf_counter()
    yield
    costs[f"{name}_s"] = round(time.perf_counter() - start, 3)


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    """Write a metrics / summary JSON (sorted keys, numpy scalars converted)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=_to_builtin) + "\n")


def _to_builtin(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")


# --- prepare -------------------------------------------------------------------------------------

def load_raw(data_params: dict[str, Any]) -> RawDataset:
    """The source named by ``data.source``, read with that source's own keys."""
    from vlm4rec.datasets import load_source

    source = data_params["source"]
    keys = {k: v for k, v in (data_params.get(source) or {}).items() if v is not None}
    return load_source(source, **keys)


def sample_users(raw: RawDataset, n_users: int | None, seed: int) -> RawDataset:
    """A seeded sample of ``n_users`` source users (all when None), for smoke runs and tests."""
    if n_users is None:
        return raw
    users = np.sort(raw.interactions["user_id"].astype(str).unique())
    if n_users >= len(users):
        return raw
    keep = set(np.random.default_rng(seed).choice(users, size=n_users, replace=False))
    inter = raw.interactions[raw.interactions["user_id"].astype(str).isin(keep)]
    return RawDataset(name=raw.name, interactions=inter, items=raw.items, features=raw.features,
                      counts=raw.counts | {"sampled_users": n_users})


def prepare_stage(data: dict[str, Any], split: dict[str, Any]) -> tuple[PreparedData, dict[str, Any]]:
    """Read the source, make implicit positives, filter users, split, write Parquet and metrics."""
    costs: dict[str, Any] = {}
    with timed(costs, "wall"):
        raw = sample_users(load_raw(data), data.get("user_sample"), data.get("seed", 0))
        prepared = prepare(raw, data.get("min_rating"), data["min_positives"], SplitConfig(**split))
        save_prepared(prepared, PREPARED_DIR)
    metrics = {"dataset": data["source"], "counts": dataset_counts(prepared),
               "source_counts": raw.counts, "dropped_in_preparation": prepared.dropped, "cost": costs | {"peak_rss_mb": round(peak_rss_mb(), 1)}}
    write_json(METRICS_DIR / "prepare.json", metrics)
    return prepared, metrics


def load_prepared_data() -> PreparedData:
    """The prepare stage's output."""
    return load_prepared(PREPARED_DIR)



# --- ground --------------------------------------------------------------------------------------

def grounder_from_params(ground: dict[str, Any]) -> Grounder:
    """The grounder ``ground.backend`` built with its own keys (``ground.<backend>``)."""
    backend = ground["backend"]
    options = {k: v for k, v in (ground.get(backend) or {}).items() if v is not None}
    return build_grounder(backend, **options)


def ground_stage(ground: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Describe every item image under each prompt arm through the cache; one long table out."""
    costs: dict[str, Any] = {}
    items = load_prepared_data().items
    grounder = grounder_from_params(ground)
    tables, arms = [], {}
    with timed(costs, "wall"), DescriptionCache(ground["cache"]) as cache:
        for arm in ground["prompt_arms"]:
            result = ground_items(items, grounder, cache, arm)
            table = result.table.assign(arm=arm)
            table["mentions_title"] = [
                bool(d) and mentions_title(d, t) for d, t in zip(table["description"].fillna(""), items["title"])]
            tables.append(table)
            arms[arm] = result.counts | {"title_mention_rate": float(table.loc[table["status"] == "ok",
                                                                                "mentions_title"].mean())}
    descriptions = pd.concat(tables, ignore_index=True).merge(
        items[["item_idx", "title", "image_path"]], on="item_idx")
    GROUNDING_DIR.mkdir(parents=True, exist_ok=True)
    descriptions.to_parquet(GROUNDING_DIR / "descriptions.parquet", index=False)
    metrics = {"grounder": {"backend": ground["backend"], "model": grounder.model_id,
                            "description_of_method": grounder.description_of_method},
               "arms": arms, "cost": costs | {"peak_rss_mb": round(peak_rss_mb(), 1)}}
    write_json(METRICS_DIR / "ground.json", metrics)
    return descriptions, metrics


def load_descriptions() -> pd.DataFrame:
    """The ground stage's long table (item_idx, arm, status, description, ...)."""
    return pd.read_parquet(GROUNDING_DIR / "descriptions.parquet")


def grounding_gallery(descriptions: pd.DataFrame, n_items: int = 12, seed: int = 0) -> pd.DataFrame:
    """A seeded sample of described items with one caption holding every arm's description."""
    ok = descriptions[descriptions["status"] == "ok"]
    chosen = np.random.default_rng(seed).permutation(np.sort(ok["item_idx"].unique()))[:n_items]
    rows = []
    for item in chosen:
        part = ok[ok["item_idx"] == item]
        caption = part["title"].iloc[0] + "\n" + "\n".join(
            f"[{arm}] {text}" for arm, text in zip(part["arm"], part["description"]))
        rows.append({"item_idx": item, "image_path": part["image_path"].iloc[0], "caption": caption})
    return pd.DataFrame(rows)


def description_diagnostics(descriptions: pd.DataFrame, top: int = 30) -> dict[str, pd.DataFrame]:
    """Per arm: length statistics, vocabulary size, title-mention (leakage) rate; most frequent words."""
    ok = descriptions[descriptions["status"] == "ok"].copy()
    ok["words"] = ok["description"].str.lower().str.findall(r"[a-z][a-z'-]+")
    ok["n_words"] = ok["words"].str.len()
    summary = ok.groupby("arm").agg(items=("item_idx", "size"), mean_words=("n_words", "mean"),
                                    median_words=("n_words", "median"), max_words=("n_words", "max"),
                                    vocabulary=("words", lambda w: len(set().union(*w))))
    leakage = descriptions.groupby("arm").agg(
        described=("status", lambda s: int((s == "ok").sum())),
        naming_title=("mentions_title", "sum"))
    leakage["title_mention_rate"] = leakage["naming_title"] / leakage["described"].clip(lower=1)
    words = ok.explode("words").groupby(["arm", "words"]).size().rename("count").reset_index()
    top_words = (words.sort_values(["arm", "count"], ascending=[True, False]).groupby("arm").head(top)
                 .rename(columns={"words": "word"}).reset_index(drop=True))
    return {"summary": summary, "leakage": leakage, "top_words": top_words}


# --- embed ---------------------------------------------------------------------------------------

def description_series(descriptions: pd.DataFrame, arm: str) -> pd.Series:
    """Successful descriptions of one arm, indexed by item_idx (what representations expect)."""
    ok = descriptions[(descriptions["arm"] == arm) & (descriptions["status"] == "ok")]
    return ok.set_index("item_idx")["description"]


def image_encoder_from_params(embed: dict[str, Any]) -> ImageEncoder:
    """``embed.image_encoder``: offline EfficientNet-Lite0, or open_clip with a local weights file."""
    if embed["image_encoder"] == "efficientnet_lite0":
        return EfficientNetLite0Features()
    if embed["image_encoder"] == "open_clip":
        clip = embed["open_clip"]
        if not clip.get("pretrained"):
            raise ValueError("embed.open_clip.pretrained must name a weights file (or a tag when online)")
        return OpenClipImageEncoder(clip["model_name"], clip["pretrained"])
    raise ValueError(f"unknown embed.image_encoder {embed['image_encoder']!r}")


def text_representations(items: pd.DataFrame, descriptions: pd.DataFrame, arms: list[str],
                         encoder_spec: str, batch_size: int, grounder: str) -> list[Representation]:
    """title, title_meta and, per prompt arm, description_<arm> and title_description_<arm>."""
    encoder = load_text_encoder(encoder_spec)
    label = f"sentence encoder {encoder_spec}"
    jobs: list[tuple[str, str, pd.Series | None, str]] = [
        ("title", "title", None, "title"), ("title_meta", "title_meta", None, "title + genres/metadata")]
    for arm in arms:
        series = description_series(descriptions, arm)
        jobs += [(f"description_{arm}", "description", series, f"{grounder} descriptions, prompt arm {arm}"),
                 (f"title_description_{arm}", "title_description", series,
                  f"title + {grounder} descriptions, prompt arm {arm}")]
    return [from_texts(name, item_texts(items, kind, series), encoder, f"{label} on {what}", batch_size)
            for name, kind, series, what in jobs]


def embed_stage(embed: dict[str, Any], ground: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Encode every representation the study compares and save them aligned to the item table."""
    costs: dict[str, Any] = {}
    data = load_prepared_data()
    descriptions = load_descriptions()
    grounder = json.loads((METRICS_DIR / "ground.json").read_text())["grounder"]["description_of_method"]
    with timed(costs, "wall"):
        with timed(costs, "text"):
            reps = text_representations(data.items, descriptions, ground["prompt_arms"],
                                        embed["text_encoder"], embed["text_batch_size"], grounder)
        encoder = image_encoder_from_params(embed)
        features = encode_image_paths(data.items["image_path"].tolist(), encoder, embed["image_batch_size"])
        costs["image_s"] = round(features.seconds, 3)
        reps.append(from_features("image", features.vectors, f"image features: {features.encoder}"))
        reps += [from_features(name, array, f"precomputed {name} shipped with the dataset")
                 for name, array in data.features.items()]
        for rep in reps:
            rep.save(EMBEDDINGS_DIR)
    n_texts = sum(r.n_items for r in reps if r.name not in data.features and r.name != "image")
    costs |= {"text_items_per_s": round(n_texts / max(costs["text_s"], 1e-9), 1),
              "images_per_s": round(features.images_per_s, 1), "peak_rss_mb": round(peak_rss_mb(), 1)}
    summary = pd.DataFrame([{"name": r.name, "dim": r.dim, "coverage": r.coverage, "fallback": r.n_fallback,
                             "missing": r.n_missing, "source": r.source} for r in reps]).set_index("name")
    metrics = {"representations": summary.drop(columns="source").to_dict(orient="index"),
               "image_failures": features.failures.to_dict(orient="records"), "cost": costs}
    write_json(METRICS_DIR / "embed.json", metrics)
    return summary, metrics

# --- match ---------------------------------------------------------------------------------------

def baseline_candidates(method: str, baselines: dict[str, Any]) -> list[Candidate]:
    """The validation grid of a classic baseline, from ``params.yaml: baselines.<method>``."""
    if method == "mostpop":
        return [Candidate({}, MostPop)]
    if method == "itemknn_cf":
        grid = baselines["itemknn_cf"]
        return [Candidate({"k_neighbours": k, "shrinkage": s},
                          lambda k=k, s=s: ItemKNNCF(k_neighbours=k, shrinkage=s))
                for k, s in product(grid["k_neighbours"], grid["shrinkage"])]
    if method == "ease":
        return [Candidate({"l2": l2}, lambda l2=l2: EASE(l2=l2)) for l2 in baselines["ease"]["l2"]]
    raise ValueError(f"unknown baseline {method!r}; known: mostpop, itemknn_cf, ease")


def profile_candidates(vectors: np.ndarray, profile: dict[str, Any], name: str) -> list[Candidate]:
    """The validation grid of profile matching: one aggregation, its own knob tried on validation
    (recency half-life, knn_sum neighbourhood; the uniform mean has none)."""
    aggregation, cap = profile["aggregation"], profile.get("history_cap")

    def build(**knobs: Any) -> Callable[[], ProfileRecommender]:
        return lambda: ProfileRecommender(vectors, aggregation=aggregation, history_cap=cap, name=name,
                                          **knobs)

    base = {"aggregation": aggregation, "history_cap": cap}
    if aggregation == "recency":
        return [Candidate(base | {"half_life": h}, build(half_life=h)) for h in profile["half_life_grid"]]
    if aggregation == "knn_sum":
        return [Candidate(base | {"knn_k": k}, build(knn_k=k)) for k in profile["knn_k_grid"]]
    return [Candidate(base, build())]


def load_representation_vectors(name: str) -> np.ndarray:
    """Item vectors of a representation written by the embed stage (zero row = no vector)."""
    return Representation.load(EMBEDDINGS_DIR, name).vectors


def run_methods(methods: dict[str, list[Candidate]], data: EvalData, eval_params: dict[str, Any],
                out_dir: Path) -> dict[str, MethodResult]:
    """Select each method on validation and test it once; results saved under ``out_dir/<method>``."""
    results = {}
    for method, candidates in methods.items():
        results[method] = select_and_test(method, candidates, data, eval_params["ks"],
                                          eval_params["select_metric"], out_dir / method)
    return results


def test_metrics_json(results: dict[str, MethodResult]) -> dict[str, Any]:
    """Test macro metrics, coverage and timing per method, for ``dvc metrics show``."""
    return {method: {"test": r.test_summary(), "coverage": r.coverage, "chosen": r.config,
                     "users_per_s": r.timing.get("users_per_s")} for method, r in results.items()}


def metric_curves(results: dict[str, MethodResult], metric: str = "recall") -> pd.DataFrame:
    """``metric``@K per method and K (long format; plot data)."""
    rows = []
    for method, result in results.items():
        summary = result.test_summary()
        rows += [{"method": method, "k": int(key.split("@")[1]), metric: value}
                 for key, value in summary.items() if key.startswith(f"{metric}@")]
    return pd.DataFrame(rows)


def per_user_long(results: dict[str, MethodResult]) -> pd.DataFrame:
    """All methods' per-user test metrics stacked, with a ``method`` column (input of stats)."""
    return pd.concat([r.test_per_user.assign(method=m) for m, r in results.items()], ignore_index=True)


def match_stage(eval: dict[str, Any], match: dict[str, Any], profile: dict[str, Any],
                baselines: dict[str, Any]) -> tuple[dict[str, MethodResult], dict[str, Any]]:
    """Classic baselines and profile matching over every representation, on the same users and items."""
    costs: dict[str, Any] = {}
    with timed(costs, "wall"):
        data = EvalData.from_prepared(load_prepared_data())
        methods = {m: baseline_candidates(m, baselines) for m in baselines["methods"]}
        methods |= {rep: profile_candidates(load_representation_vectors(rep), profile, rep)
                    for rep in match["representations"]}
        results = run_methods(methods, data, eval, RESULTS_DIR / "match")
    metrics = {"methods": test_metrics_json(results),
               "cost": costs | {"peak_rss_mb": round(peak_rss_mb(), 1)}}
    write_json(METRICS_DIR / "match.json", metrics)
    PLOTS_DIR.mkdir(exist_ok=True)
    metric_curves(results, "recall").to_csv(PLOTS_DIR / "match_recall_at_k.csv", index=False)
    metric_curves(results, "ndcg").to_csv(PLOTS_DIR / "match_ndcg_at_k.csv", index=False)
    return results, metrics


def summary_table(results: dict[str, MethodResult], eval: dict[str, Any],
                  metrics: tuple[str, ...] = ("recall@10", "ndcg@10", "hit_rate@10", "recall@20",
                                              "ndcg@20", "hit_rate@20")) -> pd.DataFrame:
    """Wide table: method x metric 'mean [low, high]' with 95% bootstrap CIs over users."""
    long = results_table(per_user_long(results), list(metrics), eval["bootstrap_resamples"],
                         seed=eval["seed"])
    long["value"] = [f"{m:.4f} [{lo:.4f}, {hi:.4f}]" for m, lo, hi in
                     zip(long["mean"], long["ci_low"], long["ci_high"])]
    return long.pivot(index="method", columns="metric", values="value")[list(metrics)]


# --- fusion and hybrids --------------------------------------------------------------------------

def simplex_grid(names: list[str], step: float) -> list[dict[str, float]]:
    """Every weight vector over ``names`` with entries in multiples of ``step`` summing to one."""
    n_steps = round(1 / step)
    if not np.isclose(n_steps * step, 1.0):
        raise ValueError(f"concat_grid_step must divide 1, got {step}")
    return [{n: c / n_steps for n, c in zip(names, counts)}
            for counts in product(range(n_steps + 1), repeat=len(names)) if sum(counts) == n_steps]


def concat_candidates(modalities: dict[str, np.ndarray], step: float) -> list[Candidate]:
    """Weighted concat (= late score fusion) over the weight simplex, each with the mean profile."""
    return [Candidate({"weights": w}, lambda w=w: ProfileRecommender(weighted_concat(modalities, w),
                                                                      name="fusion_concat"))
            for w in simplex_grid(list(modalities), step)]


def hybrid_candidates(vectors: np.ndarray, l2: float, alphas: list[float], name: str) -> list[Candidate]:
    """Content profile score mixed with EASE^R (its L2 as chosen on validation by the match stage)."""
    return [Candidate({"alpha": a, "ease_l2": l2},
                      lambda a=a: ScoreMix(ProfileRecommender(vectors, name=name), EASE(l2=l2), alpha=a,
                                           name=f"hybrid_{name}_ease"))
            for a in alphas]


def seed_method(kind: str, seed: int) -> str:
    """Result name of one seed of a learned fusion (the report groups them by the part before '@')."""
    return f"fusion_{kind}@seed{seed}"


def fusion_stage(eval: dict[str, Any], fusion: dict[str, Any]) -> tuple[dict[str, MethodResult], dict[str, Any]]:
    """Weighted concat, learned fusions over seeds, and content + EASE^R hybrids; same users and items."""
    costs: dict[str, Any] = {}
    data = EvalData.from_prepared(load_prepared_data())
    modalities = {name: load_representation_vectors(name) for name in fusion["modalities"]}
    out = RESULTS_DIR / "fusion"
    training: dict[str, Any] = {}
    with timed(costs, "wall"):
        methods: dict[str, list[Candidate]] = {
            "fusion_concat": concat_candidates(modalities, fusion["concat_grid_step"])}
        train_options = {k: fusion[k] for k in ("epochs", "patience", "batch_size", "lr", "negatives")}
        for kind in fusion["learned"]:
            runs = fit_fusion_seeds(kind, modalities, data.train_history, data.train_history,
                                    data.val_targets, seeds=fusion["seeds"], dim=fusion["dim"], **train_options)
            for run in runs:
                name = seed_method(kind, run.seed)
                methods[name] = [Candidate({"kind": kind, "seed": run.seed, "best_epoch": run.best_epoch},
                                           lambda v=run.vectors, n=name: ProfileRecommender(v, name=n))]
                training[name] = {"best_epoch": run.best_epoch, "train_s": round(run.train_s, 2),
                                  "val_loss_curve": run.val_loss_curve,
                                  "modality_weights": modality_weight_summary(run, modalities)}
        l2 = json.loads((RESULTS_DIR / "match" / "ease" / "chosen.json").read_text())["config"]["l2"]
        for rep in fusion["hybrid_representations"]:
            methods[f"hybrid_{rep}_ease"] = hybrid_candidates(load_representation_vectors(rep), l2,
                                                              fusion["hybrid_alpha_grid"], rep)
        results = run_methods(methods, data, eval, out)
    metrics = {"methods": test_metrics_json(results), "training": training,
               "cost": costs | {"peak_rss_mb": round(peak_rss_mb(), 1)}}
    write_json(METRICS_DIR / "fusion.json", metrics)
    curves = [{"method": m, "epoch": e, "val_loss": v} for m, t in training.items()
              for e, v in enumerate(t["val_loss_curve"])]
    PLOTS_DIR.mkdir(exist_ok=True)
    pd.DataFrame(curves, columns=["method", "epoch", "val_loss"]).to_csv(
        PLOTS_DIR / "fusion_val_loss.csv", index=False)
    return results, metrics


def modality_weight_summary(run: FusionResult, modalities: dict[str, np.ndarray]) -> dict[str, float] | None:
    """Mean weight a trained attention / gating fusion puts on each modality (None for spectral)."""
    if not hasattr(run.model, "modality_weights"):
        return None
    with torch.no_grad():
        weights = run.model.modality_weights({n: torch.as_tensor(x) for n, x in modalities.items()})
    return {name: float(w) for name, w in zip(run.model.names, weights.mean(dim=0).tolist())}


# --- ablation grid -------------------------------------------------------------------------------

def cell_name(cell: dict[str, Any]) -> str:
    """Directory / metrics name of one grid cell, e.g. ``description-image_only-mean-all``."""
    return "-".join(str(cell[k]) for k in ("representation", "arm", "aggregation", "cap") if k in cell)


def cell_representation(cell: dict[str, Any]) -> str:
    """The embedding a cell matches with: ``<representation>_<arm>`` for grounded representations."""
    return f"{cell['representation']}_{cell['arm']}" if "arm" in cell else cell["representation"]


def run_grid_cell(stage: str, params: dict[str, Any], cell: dict[str, Any]) -> MethodResult:
    """One ablation cell: its aggregation's knob chosen on validation, test read once."""
    name = cell_name(cell)
    profile = params["profile"] | {"aggregation": cell["aggregation"],
                                   "history_cap": None if cell["cap"] == "all" else int(cell["cap"])}
    rep = cell_representation(cell)
    data = EvalData.from_prepared(load_prepared_data())
    start = time.perf_counter()
    result = select_and_test(name, profile_candidates(load_representation_vectors(rep), profile, rep), data,
                             params["eval"]["ks"], params["eval"]["select_metric"], ABLATIONS_DIR / name)
    write_json(METRICS_DIR / "ablations" / f"{name}.json",
               {"cell": cell, "representation": rep, "chosen": result.config, "test": result.test_summary(),
                "cost": {"wall_s": round(time.perf_counter() - start, 3),
                         "peak_rss_mb": round(peak_rss_mb(), 1)}})
    return result


def ablation_table() -> pd.DataFrame:
    """Every finished cell's chosen configuration and test metrics (one row per cell)."""
    rows = []
    for path in sorted((METRICS_DIR / "ablations").glob("*.json")):
        cell = json.loads(path.read_text())
        rows.append({**cell["cell"], "arm": cell["cell"].get("arm", "-"), "representation_file": cell["representation"],
                     "chosen": json.dumps(cell["chosen"]), **cell["test"], "wall_s": cell["cost"]["wall_s"]})
    return pd.DataFrame(rows)


# --- report --------------------------------------------------------------------------------------

def load_all_results() -> dict[str, MethodResult]:
    """Every method evaluated by the match and fusion stages, by name."""
    return {path.name: load_result(path) for stage in ("match", "fusion")
            for path in sorted((RESULTS_DIR / stage).glob("*")) if path.is_dir()}


def method_family(method: str) -> str:
    """``fusion_attention@seed1`` -> ``fusion_attention``; other names are their own family."""
    return method.split("@")[0]


def collapse_seeds(per_user: pd.DataFrame) -> pd.DataFrame:
    """Per-user metrics of seeded methods averaged over their seeds (one row per family and user)."""
    metric_cols = [c for c in per_user.columns if "@" in c]
    families = per_user.assign(method=per_user["method"].map(method_family))
    return families.groupby(["method", "user_idx"], sort=False)[metric_cols].mean().reset_index()


def seed_spread(results: dict[str, MethodResult], metric: str) -> pd.DataFrame:
    """Mean and standard deviation over seeds of a seeded method's test ``metric``."""
    rows = [{"method": method_family(m), "seed": m.split("@")[1], metric: r.test_summary()[metric]}
            for m, r in results.items() if "@" in m]
    if not rows:
        return pd.DataFrame(columns=["n_seeds", "mean", "std"])
    frame = pd.DataFrame(rows)
    return frame.groupby("method")[metric].agg(n_seeds="size", mean="mean", std="std")


def main_table(results: dict[str, MethodResult], eval: dict[str, Any],
               metrics: tuple[str, ...] = ("recall@10", "ndcg@10", "hit_rate@10", "recall@20", "ndcg@20",
                                           "hit_rate@20")) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(long table with mean and 95% CI per method x metric, wide 'mean [low, high]' display table).

    Seeded methods enter with their per-user metrics averaged over seeds."""
    per_user = collapse_seeds(per_user_long(results))
    long = results_table(per_user, list(metrics), eval["bootstrap_resamples"], seed=eval["seed"])
    long["value"] = [f"{m:.4f} [{lo:.4f}, {hi:.4f}]" for m, lo, hi in
                     zip(long["mean"], long["ci_low"], long["ci_high"])]
    wide = long.pivot(index="method", columns="metric", values="value")[list(metrics)]
    order = long[long["metric"] == metrics[1]].sort_values("mean", ascending=False)["method"]
    return long, wide.loc[order]


def paired_test_table(results: dict[str, MethodResult], references: list[str], metric: str) -> pd.DataFrame:
    """Paired Wilcoxon and t-tests of every method against each reference (Holm within a reference)."""
    per_user = collapse_seeds(per_user_long(results))
    tables = [paired_tests(per_user, ref, metric) for ref in references if ref in set(per_user["method"])]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def cost_table() -> pd.DataFrame:
    """Wall time, throughput and peak memory per stage, from the stages' metrics JSON."""
    rows = {}
    for name in ("prepare", "ground", "embed", "match", "fusion"):
        path = METRICS_DIR / f"{name}.json"
        if path.exists():
            rows[name] = json.loads(path.read_text())["cost"]
    cells = [json.loads(p.read_text())["cost"] for p in sorted((METRICS_DIR / "ablations").glob("*.json"))]
    if cells:
        rows["ablation grid (all cells)"] = {"wall_s": sum(c["wall_s"] for c in cells),
                                            "peak_rss_mb": max(c["peak_rss_mb"] for c in cells)}
    grounding = json.loads((METRICS_DIR / "ground.json").read_text())["arms"] if (METRICS_DIR / "ground.json").exists() else {}
    for arm, counts in grounding.items():
        rows[f"ground: {arm}"] = {k: counts.get(k) for k in ("wall_s", "images_per_s", "items_per_s")}
    return pd.DataFrame(rows).T


def user_gallery(results: dict[str, MethodResult], methods: list[str], n_users: int = 3, history: int = 6,
                 k: int = 5, seed: int = 0) -> list[tuple[str, list[str | None], list[str]]]:
    """For a seeded sample of test users: their latest history posters, then each method's top-k.

    Returns (row title, image paths, captions) rows for :func:`vlm4rec.plots.image_grid`."""
    data = load_prepared_data()
    items = data.items.set_index("item_idx")
    inter = data.interactions
    test = inter[inter["split"] == "test"].groupby("user_idx")["item_idx"].apply(set)
    users = np.random.default_rng(seed).permutation(np.sort(test.index.to_numpy()))[:n_users]
    rows = []
    for user in users:
        seen = inter[(inter["user_idx"] == user) & inter["split"].isin(["train", "val"])]
        latest = seen.sort_values("timestamp")["item_idx"].to_numpy()[-history:][::-1]
        rows.append((f"user {user}: latest history", [items.at[i, "image_path"] for i in latest],
                     [items.at[i, "title"] for i in latest]))
        for method in methods:
            result = results[method]
            row = int(np.flatnonzero(result.test_per_user["user_idx"].to_numpy() == user)[0])
            top = result.test_topk[row, :k]
            rows.append((f"{method} top-{k}", [items.at[i, "image_path"] for i in top],
                         [("HIT  " if i in test[user] else "") + items.at[i, "title"] for i in top]))
    return rows
