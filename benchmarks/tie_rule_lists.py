"""Which test top-50 lists of the match stage's profile methods and EASE^R the tie rules change (issue 23, item 3).

    python benchmarks/tie_rule_lists.py STUDY_DIR > benchmarks/results_tie_rule_lists.json

STUDY_DIR is a checkout where `dvc repro` ran with the engine before the rule (commit 96d5f3c: ties by index
after a float32 BLAS product, whose last bits depend on the thread count; EASE^R inverted on every BLAS
thread): its saved lists
(data/results/match/<rep>/test_topk.npy) are compared with this engine's on the same prepared data, embeddings
and chosen configurations, ranked with one and with two BLAS threads. Prints, per representation, how many
users' lists differ (top-50 and top-10), whether one and two threads agree, and NDCG@10 / Recall@20 before
and after."""
import json, sys
from pathlib import Path
import numpy as np
from threadpoolctl import threadpool_limits
from vlm4rec.baselines import EASE
from vlm4rec.data import load_prepared
from vlm4rec.evaluation import EvalData, load_result
from vlm4rec.matching import ProfileRecommender, recommend
from vlm4rec.representations import load_vectors
from vlm4rec.metrics import ranking_metrics

base = Path(sys.argv[1])
data = load_prepared(base / "data" / "prepared")
split = EvalData.from_prepared(data).test()
out = {}
for rep in ["title", "title_meta", "description_image_only", "title_description_image_title", "image", "ease"]:
    old = load_result(base / "data" / "results" / "match" / rep)
    config = json.loads((base / "data" / "results" / "match" / rep / "chosen.json").read_text())["config"]
    model = (EASE(**config) if rep == "ease" else
             ProfileRecommender(load_vectors(base / "data" / "embeddings", rep), name=rep, **config)).fit(split.history)
    lists = {}
    for threads in (1, 2):
        with threadpool_limits(threads):
            lists[threads] = recommend(model, split.users, split.exclude, 50)
    assert np.array_equal(old.test_per_user["user_idx"].to_numpy(), split.users)
    new = lists[2]
    differ50 = int((old.test_topk[:, :50] != new).any(axis=1).sum())
    differ10 = int((old.test_topk[:, :10] != new[:, :10]).any(axis=1).sum())
    old_m = ranking_metrics(old.test_topk, split.targets, split.users, [10, 20]).mean(numeric_only=True)
    new_m = ranking_metrics(new, split.targets, split.users, [10, 20]).mean(numeric_only=True)
    out[rep] = {"users": len(split.users), "lists_differ_top50": differ50, "lists_differ_top10": differ10,
                "one_vs_two_threads_identical": bool(np.array_equal(lists[1], lists[2])),
                "ndcg@10_old": round(float(old_m["ndcg@10"]), 6), "ndcg@10_new": round(float(new_m["ndcg@10"]), 6),
                "recall@20_old": round(float(old_m["recall@20"]), 6), "recall@20_new": round(float(new_m["recall@20"]), 6)}
print(json.dumps(out, indent=1))
