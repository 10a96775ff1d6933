"""DescriptionCache: keys, round trips, and a grounding process killed with SIGKILL then resumed."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vlm4rec.grounding.cache import CacheEntry, DescriptionCache, cache_key

FIELDS = dict(image_sha256="ab" * 32, grounder_id="tagger", model_id="m@1", prompt="Describe.",
              settings={"a": 1, "b": [1, 2]})


def entry(key, status="ok", **overrides):
    values = {**FIELDS, **overrides}
    text = {"description": "a poster"} if status == "ok" else {"error_kind": "truncated", "error": "ends early"}
    return CacheEntry(key=key, status=status, **values, **text)


def test_key_depends_on_every_field_and_not_on_settings_order():
    base = cache_key(**FIELDS)
    assert cache_key(**{**FIELDS, "settings": {"b": [1, 2], "a": 1}}) == base
    for name, other in [("image_sha256", "cd" * 32), ("grounder_id", "hf"), ("model_id", "m@2"),
                        ("prompt", "Describe!"), ("settings", {"a": 2, "b": [1, 2]})]:
        assert cache_key(**{**FIELDS, name: other}) != base, name
    assert len(base) == 64


def test_round_trip_and_upsert(tmp_path):
    path = tmp_path / "sub" / "cache.sqlite"
    with DescriptionCache(path) as cache:
        cache.put_many([entry("k1"), entry("k2", status="failed")])
        found = cache.get_many(["k1", "k2", "absent", "k1"])
        assert set(found) == {"k1", "k2"} and found["k1"] == entry("k1") and found["k2"] == entry("k2", "failed")
        cache.put_many([entry("k2")])  # a retried failure becomes a description
        assert cache.get_many(["k2"])["k2"].status == "ok" and len(cache) == 2
        assert cache.get_many([f"k{i}" for i in range(2000)]).keys() == {"k1", "k2"}  # > SQLite's 999 params
    with DescriptionCache(path) as reopened:
        assert reopened.get_many(["k1"])["k1"].description == "a poster"
    row = sqlite3.connect(path).execute("SELECT settings, created_at <= updated_at FROM descriptions "
                                        "WHERE key='k2'").fetchone()
    assert json.loads(row[0]) == FIELDS["settings"] and row[1] == 1
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_entry_validation():
    with pytest.raises(ValueError, match="status must be"):
        CacheEntry(key="k", status="cached", **FIELDS)
    with pytest.raises(ValueError, match="needs a description"):
        CacheEntry(key="k", status="ok", **FIELDS)


# A grounding process whose grounder is slow and logs every image it starts to describe.
WORKER = textwrap.dedent("""
    import sys, time, json
    from pathlib import Path
    import numpy as np, pandas as pd
    from PIL import Image
    from vlm4rec.grounding.base import Grounder
    from vlm4rec.grounding.cache import DescriptionCache
    from vlm4rec.grounding.runner import ground_items

    root = Path(sys.argv[1])

    class SlowGrounder(Grounder):
        grounder_id, description_of_method, batch_size = "slow", "slow test double", 2
        model_id = "slow@1"
        def settings(self):
            return {}
        def describe(self, images, prompts):
            reds = [int(np.asarray(im)[0, 0, 0]) for im in images]
            with open(root / "calls.log", "a") as log:
                log.write(json.dumps(reds) + "\\n")
            time.sleep(0.15)
            return [f"red {r}" for r in reds]

    paths = sorted(root.glob("img_*.png"))
    items = pd.DataFrame({"item_idx": range(len(paths)), "item_id": [p.stem for p in paths],
                          "title": "", "image_path": [str(p) for p in paths], "has_image": True})
    with DescriptionCache(root / "cache.sqlite") as cache:
        result = ground_items(items, SlowGrounder(), cache, "image_only", progress=False)
    (root / "result.json").write_text(json.dumps(result.counts))
""")


def described_reds(root) -> list[list[int]]:
    log = root / "calls.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def committed(root) -> set[str]:
    """Descriptions committed so far (none while the worker is still creating the database)."""
    db = sqlite3.connect(root / "cache.sqlite")
    try:
        return {d for (d,) in db.execute("SELECT description FROM descriptions WHERE status='ok'")}
    except sqlite3.OperationalError:
        return set()
    finally:
        db.close()


def test_sigkilled_run_resumes_and_describes_each_image_once(tmp_path):
    from PIL import Image

    n_images = 12
    for red in range(n_images):
        Image.new("RGB", (4, 4), (red, 0, 0)).save(tmp_path / f"img_{red:02d}.png")
    (tmp_path / "worker.py").write_text(WORKER)
    command = [sys.executable, str(tmp_path / "worker.py"), str(tmp_path)]

    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # the checkout's package
    first = subprocess.Popen(command, env=env)
    deadline = time.time() + 60
    while time.time() < deadline and first.poll() is None:
        if (tmp_path / "cache.sqlite").exists() and len(committed(tmp_path)) >= 4:
            break
        time.sleep(0.02)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL
    saved = committed(tmp_path)
    batches_before_kill = described_reds(tmp_path)
    started_before_kill = [red for batch in batches_before_kill for red in batch]
    assert 4 <= len(saved) < n_images
    # Lost work is at most the one batch in flight (batch size 2).
    assert len(started_before_kill) - len(saved) <= 2

    subprocess.run(command, check=True, timeout=60, env=env)
    resumed = [red for batch in described_reds(tmp_path)[len(batches_before_kill):] for red in batch]
    assert not {f"red {red}" for red in resumed} & saved  # nothing committed was described again
    assert committed(tmp_path) == {f"red {red}" for red in range(n_images)}
    counts = json.loads((tmp_path / "result.json").read_text())
    assert (counts["ok"], counts["from_cache"], counts["described"]) == (n_images, len(saved), n_images - len(saved))

    calls_before = len(described_reds(tmp_path))
    subprocess.run(command, check=True, timeout=60, env=env)
    assert len(described_reds(tmp_path)) == calls_before  # a complete cache: no describe call at all
    assert json.loads((tmp_path / "result.json").read_text())["from_cache"] == n_images


def test_a_file_that_is_not_a_database_is_an_error_naming_it_and_what_to_do(tmp_path):
    from vlm4rec.errors import StudyError

    path = tmp_path / "cache.sqlite"
    path.write_bytes(b"these are not the bytes of an SQLite database\n" * 100)
    with pytest.raises(StudyError) as caught:
        DescriptionCache(path)
    assert str(caught.value) == (f"{path}: the description cache cannot be used (file is not a database); move it "
                                 f"aside (mv {path} {path}.broken) and rerun: the ground stage rebuilds the cache, "
                                 "describing its items again")


def test_a_truncated_cache_is_an_error_naming_it_and_what_to_do(tmp_path):
    from vlm4rec.errors import StudyError

    path = tmp_path / "cache.sqlite"
    with DescriptionCache(path) as cache:  # closing checkpoints the WAL into the file
        cache.put_many([entry(f"k{i}", prompt="Describe. " * 50) for i in range(300)])
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(StudyError, match=rf"{path}: the description cache cannot be used \(database disk image is "
                                         r"malformed\); move it aside"):
        with DescriptionCache(path) as cache:
            cache.get_many([f"k{i}" for i in range(300)])


def test_a_cache_that_cannot_be_written_is_an_error_naming_it_and_what_to_do(tmp_path, monkeypatch):
    """A read-only folder, as SQLite sees it (the tests may run as root, whom file modes do not stop)."""
    from vlm4rec.errors import StudyError
    from vlm4rec.grounding import cache as cache_module

    path = tmp_path / "cache.sqlite"
    with DescriptionCache(path) as cache:
        cache.put_many([entry("k1")])
    connect = sqlite3.connect
    monkeypatch.setattr(cache_module.sqlite3, "connect", lambda where: connect(f"file:{where}?mode=ro", uri=True))
    with pytest.raises(StudyError, match=rf"{path}: the description cache cannot be used \(attempt to write a "
                                         rf"readonly database\); make {tmp_path} and the file writable, or set "
                                         r"ground.cache to a writable path"):
        with DescriptionCache(path) as cache:
            cache.put_many([entry("k2")])
