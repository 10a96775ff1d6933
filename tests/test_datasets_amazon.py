"""Amazon Reviews 2023 adapter on small files written in the release's exact format."""
from __future__ import annotations

import gzip
import json
import random
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vlm4rec.data import DataFormatError, prepare
from vlm4rec.datasets.amazon import clean_text, k_core_filter, load_amazon2023
from vlm4rec.splits import SplitConfig

MS = 1000


def review(user: str, item: str, rating: float, seconds: int) -> dict:
    return {"rating": rating, "title": "t", "text": "x", "images": [], "asin": item + "-v",
            "parent_asin": item, "user_id": user, "timestamp": seconds * MS + 123,
            "helpful_vote": 0, "verified_purchase": True}


def meta(item: str, title: str, **extra) -> dict:
    record = {"main_category": "AMAZON FASHION", "title": title, "average_rating": 4.0,
              "rating_number": 3, "features": [], "description": [], "price": None, "images": [],
              "videos": [], "store": None, "categories": [], "details": {}, "parent_asin": item,
              "bought_together": None}
    record.update(extra)
    return record


def write_jsonl(path: Path, lines: list) -> Path:
    """Objects are JSON-encoded, strings are written as they are (to plant malformed lines)."""
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# k = 2 by hand: u4 has one item -> out; then C has one user (u3) -> out; then u3 has one item -> out.
# u5 reviewed D twice: one distinct pair, so u5 and D are out too. Left: u1, u2 x A, B.
KCORE_REVIEWS = [review("u1", "A", 5, 10), review("u1", "B", 4, 20), review("u2", "A", 3, 30),
                 review("u2", "B", 5, 40), review("u3", "A", 5, 50), review("u3", "C", 2, 60),
                 review("u4", "C", 5, 70), review("u5", "D", 5, 80), review("u5", "D", 4, 90),
                 review("u1", "A", 1, 95)]
KCORE_META = [
    meta("A", "Nike &amp; Co <b>Running</b>   Shoe", store="Nike",
         categories=["Clothing, Shoes & Jewelry", "Men"], features=["Rubber sole", "<i>Mesh</i>"],
         images=[{"thumb": "http://h/A_t.jpg", "large": "http://h/A_pt.jpg", "variant": "PT01",
                  "hi_res": None},
                 {"thumb": "http://h/A_main_t.jpg", "large": None, "variant": "MAIN",
                  "hi_res": "http://h/A_main_hi.jpg"}]),
    meta("C", "Hat"),
    meta("E", "unused item"),
    meta("A", "a repeated row"),
]


@pytest.fixture(params=[".jsonl", ".jsonl.gz"])
def kcore_files(request, tmp_path):
    suffix = request.param
    return (write_jsonl(tmp_path / f"Clothing{suffix}", KCORE_REVIEWS),
            write_jsonl(tmp_path / f"meta_Clothing{suffix}", KCORE_META))


def test_kcore_by_hand_and_counts(kcore_files, tmp_path):
    reviews, metas = kcore_files
    raw = load_amazon2023(reviews, metas, k_core=2)
    got = raw.interactions.sort_values(["user_id", "item_id"])
    assert list(zip(got["user_id"], got["item_id"])) == [("u1", "A"), ("u1", "B"), ("u2", "A"),
                                                          ("u2", "B")]
    # the repeated (u1, A) keeps its earliest review; milliseconds become seconds
    first = got[(got["user_id"] == "u1") & (got["item_id"] == "A")].iloc[0]
    assert (first["rating"], first["timestamp"]) == (5.0, 10)
    assert got["timestamp"].dtype == np.int64
    c = raw.counts
    assert (c["reviews_read"], c["duplicate_pairs_dropped"], c["k_core_removed"]) == (10, 2, 4)
    assert (c["users"], c["items"], c["interactions"]) == (2, 2, 4)
    assert (c["meta_rows_read"], c["meta_rows_unused"], c["meta_rows_duplicate"]) == (4, 2, 1)
    assert (c["items_missing_meta"], c["items_with_image_url"]) == (1, 1)
    assert raw.name == "amazon2023:Clothing"


def test_item_fields_from_meta(kcore_files, tmp_path):
    reviews, metas = kcore_files
    images = tmp_path / "images"
    images.mkdir()
    (images / "B.jpg").write_bytes(b"any")
    raw = load_amazon2023(reviews, metas, images_dir=images, k_core=2)
    a, b = (raw.items.set_index("item_id").loc[i] for i in ("A", "B"))
    assert a["title"] == "Nike & Co Running Shoe"
    assert a["genres"] == "Clothing, Shoes & Jewelry|Men"
    assert a["meta_text"] == ("Categories: Clothing, Shoes & Jewelry > Men. Store: Nike. "
                              "Features: Rubber sole; Mesh.")
    assert a["image_url"] == "http://h/A_main_hi.jpg"  # MAIN variant, large missing -> hi_res
    assert (a["has_image"], a["image_path"]) == (False, None)
    # B has reviews but no metadata: kept, empty title, no URL
    assert (b["title"], b["meta_text"], b["image_url"]) == ("", "", None)
    assert (b["has_image"], b["image_path"]) == (True, str(images / "B.jpg"))
    assert raw.counts["items_with_image_file"] == 1


def test_an_item_id_naming_a_file_outside_the_images_folder_is_refused_by_default(tmp_path):
    """A parent_asin of ../secret/poster must not make the grounder describe a file outside images_dir."""
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "poster.jpg").write_bytes(b"private")
    images = tmp_path / "images"
    images.mkdir()
    (images / "A.jpg").write_bytes(b"any")
    reviews = write_jsonl(tmp_path / "Clothing.jsonl", [review("u1", "A", 5, 10), review("u1", "../secret/poster", 5, 20)])
    metas = write_jsonl(tmp_path / "meta_Clothing.jsonl", [meta("A", "Shoe")])
    raw = load_amazon2023(reviews, metas, images_dir=images, k_core=1)
    assert raw.items.set_index("item_id")["has_image"].to_dict() == {"A": True, "../secret/poster": False}
    assert raw.counts["images_outside_folder"] == 1
    recorded = load_amazon2023(reviews, metas, images_dir=images, k_core=1, images_outside_folder="record")
    assert recorded.items.set_index("item_id")["has_image"].to_dict() == {"A": True, "../secret/poster": True}


def test_kcore_matches_naive_one_node_at_a_time_removal():
    rng = random.Random(3)
    pairs = {(f"u{rng.randrange(30)}", f"i{rng.randrange(20)}") for _ in range(220)}
    frame = pd.DataFrame(sorted(pairs), columns=["user_id", "item_id"])
    for k in (2, 3, 5, 8):
        kept = set(pairs)
        changed = True
        while changed:
            changed = False
            for side in (0, 1):
                degree: dict[str, int] = {}
                for pair in kept:
                    degree[pair[side]] = degree.get(pair[side], 0) + 1
                low = next((node for node, d in degree.items() if d < k), None)
                if low is not None:
                    kept = {p for p in kept if p[side] != low}
                    changed = True
        got = k_core_filter(frame, k)
        assert set(zip(got["user_id"], got["item_id"])) == kept
    assert len(k_core_filter(frame, 1)) == len(frame)


@pytest.mark.parametrize("raw_title, clean", [
    ("Nike &amp; Co <b>Running</b> Shoe", "Nike & Co Running Shoe"),
    ("var aPageStart = (new Date()).getTime(); Cotton T-Shirt", "Cotton T-Shirt"),
    ("Cotton Socks P.when('A', 'ready').execute(function(A) { A.declarative('x'); });",
     "Cotton Socks"),
    ("<script type='text/javascript'>var x = 1;</script>Hat\n\n  Blue", "Hat Blue"),
    ("Tom&#39;s   &quot;Classic&quot;", "Tom's \"Classic\""),
    (None, ""),
])
def test_clean_text(raw_title, clean):
    assert clean_text(raw_title) == clean


def test_malformed_lines_error_with_line_or_skip_counted(tmp_path):
    lines = [review("u1", "A", 5, 1), "{not json", "[1, 2]",
             {**review("u2", "A", 5, 2), "rating": "five"},
             {k: v for k, v in review("u3", "A", 5, 3).items() if k != "user_id"},
             {**review("u4", "A", 5, 4), "timestamp": 1.5}, "", review("u5", "A", 4, 5)]
    reviews = write_jsonl(tmp_path / "R.jsonl.gz", lines)
    metas = write_jsonl(tmp_path / "meta_R.jsonl", [meta("A", "a"), "{broken", {"title": "no id"}])
    with pytest.raises(DataFormatError) as err:
        load_amazon2023(reviews, metas, k_core=1)
    assert (err.value.path, err.value.line) == (str(reviews), 2)
    raw = load_amazon2023(reviews, metas, k_core=1, on_bad_line="skip")
    assert raw.counts["reviews_bad_lines"] == 5
    assert raw.counts["reviews_blank_lines"] == 1
    assert raw.counts["meta_bad_lines"] == 2
    assert sorted(raw.interactions["user_id"]) == ["u1", "u5"]
    with pytest.raises(DataFormatError, match="missing 'parent_asin'"):
        load_amazon2023(write_jsonl(tmp_path / "ok.jsonl", [review("u1", "A", 5, 1)]),
                        write_jsonl(tmp_path / "meta_bad.jsonl", [{"title": "no id"}]), k_core=1)
    with pytest.raises(ValueError, match="on_bad_line"):
        load_amazon2023(reviews, metas, on_bad_line="ignore")


def test_truncated_gzip_is_a_format_error(tmp_path):
    good = write_jsonl(tmp_path / "R.jsonl.gz", [review(f"u{i}", "A", 5, i) for i in range(500)])
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(DataFormatError, match="unreadable file"):
        load_amazon2023(cut, write_jsonl(tmp_path / "m.jsonl", [meta("A", "a")]), k_core=1)


def test_min_rating_applies_before_the_core(kcore_files):
    reviews, metas = kcore_files
    raw = load_amazon2023(reviews, metas, k_core=2, min_rating=4)
    # positives: u1 A(5,t10) B, u2 B, u3 A, u4 C, u5 D D -> 2-core: items need 2 users: A(u1,u3),
    # B(u1,u2); users need 2 items: only u1 -> A, B lose a user each -> nothing is left.
    assert raw.counts["reviews_below_min_rating"] == 3
    assert len(raw.interactions) == 0


def test_prepare_uses_the_adapter_output(tmp_path):
    rows = [review(f"u{u}", f"I{i}", 5 if (u + i) % 3 else 2, 100 * u + i)
            for u in range(6) for i in range(6)]
    reviews = write_jsonl(tmp_path / "Baby.jsonl", rows)
    metas = write_jsonl(tmp_path / "meta_Baby.jsonl", [meta(f"I{i}", f"Toy {i}") for i in range(6)])
    raw = load_amazon2023(reviews, metas, k_core=5)
    assert raw.counts["interactions"] == 36
    data = prepare(raw, min_rating=4, min_positives=3, split=SplitConfig("leave_last_out"))
    positives = sum(1 for u in range(6) for i in range(6) if (u + i) % 3)
    assert len(data.interactions) == positives
    assert data.n_users == 6 and data.n_items == 6
    assert data.items["title"].tolist() == [f"Toy {i}" for i in range(6)]
    per_user = data.interactions.groupby(["user_idx", "split"]).size().unstack()
    assert (per_user["test"] == 1).all() and (per_user["val"] == 1).all()
    last = data.interactions.sort_values("timestamp").groupby("user_idx").tail(1)
    assert (last["split"] == "test").all()


@pytest.fixture()
def image_server(tmp_path):
    """Serve ``tmp_path/served`` over HTTP on 127.0.0.1; yields (folder, base URL)."""
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_images_fetches_main_images_before_attaching(image_server, tmp_path):
    served, base = image_server
    Image.new("RGB", (4, 4), (200, 0, 0)).save(served / "A.png")
    rows = [review(u, i, 5, t) for t, (u, i) in enumerate([("u1", "A"), ("u1", "B"), ("u2", "A"),
                                                            ("u2", "C")])]
    metas = [meta("A", "a", images=[{"large": f"{base}/A.png", "variant": "MAIN"}]),
             meta("C", "c", images=[{"large": f"{base}/missing.png", "variant": "MAIN"}])]
    reviews = write_jsonl(tmp_path / "R.jsonl", rows)
    meta_file = write_jsonl(tmp_path / "meta_R.jsonl", metas)
    images = tmp_path / "images"
    raw = load_amazon2023(reviews, meta_file, images_dir=images, k_core=1, download_images=True)
    assert raw.items["has_image"].tolist() == [True, False, False]
    assert (raw.counts["images_downloaded"], raw.counts["images_failed_http_404"]) == (1, 1)
    failures = pd.read_csv(images / "download_failures.csv")
    assert failures.to_dict("records") == [{"item_id": "C", "url": f"{base}/missing.png",
                                            "reason": "http_404"}]
    with pytest.raises(ValueError, match="images_dir"):
        load_amazon2023(reviews, meta_file, k_core=1, download_images=True)
