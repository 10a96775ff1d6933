"""Study numbers that docs/protocol.md and README.md quote, against the metrics files of the last run: a quote
that no longer matches its metric fails here, so no number in the documents outlives the run it came from.
Where the run's metrics file is absent (a fresh clone before the first run), its quotes are only checked to
be in the document."""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

# (document, the quote as the document words it, metrics file, the number the quote states, from that file)
QUOTES: list[tuple[str, str, str, Callable[[dict[str, Any]], int | float]]] = [
    ("docs/protocol.md", "all 3,883 movies of `movies.dat`", "prepare", lambda m: m["counts"]["items"]),
    ("docs/protocol.md", "(3,533 on ML-1M)", "prepare",
     lambda m: m["counts"]["items"] - m["counts"]["items_without_positives"]),
    ("README.md", "all 3,883 movies of `movies.dat`", "prepare", lambda m: m["counts"]["items"]),
    ("README.md", "the posters (3,872 JPEGs", "prepare", lambda m: m["source_counts"]["posters_found"]),
    ("README.md", "the 11 movies without a poster", "prepare", lambda m: m["source_counts"]["posters_missing"]),
    ("docs/protocol.md", "176 validation new items", "cold_start", lambda m: m["counts"]["val_cold_items"]),
    ("docs/protocol.md", "(6,627 pairs)", "cold_start", lambda m: m["counts"]["val_pairs"]),
    ("docs/protocol.md", "177 test new items", "cold_start", lambda m: m["counts"]["test_cold_items"]),
    ("docs/protocol.md", "814 test pairs", "cold_start", lambda m: m["counts"]["test_pairs"]),
    ("docs/protocol.md", "495 test users", "cold_start", lambda m: m["counts"]["test_users"]),
    ("docs/protocol.md", "37.7 pairs per validation new item", "cold_start",
     lambda m: m["counts"]["val_pairs_per_item"]),
    ("docs/protocol.md", "4.6 per test new item", "cold_start", lambda m: m["counts"]["test_pairs_per_item"]),
    ("docs/protocol.md", "carry 43.1% of the test pairs", "cold_start",
     lambda m: round(100 * m["counts"]["test_pairs_on_top5_items"], 1)),
]


def quoted_number(quote: str) -> int | float:
    """The number a quote states (its first number, thousands separated by commas; a decimal point makes it
    a float)."""
    number = re.search(r"\d[\d,]*(?:\.\d+)?", quote).group().replace(",", "")
    return float(number) if "." in number else int(number)


@pytest.mark.parametrize("document, quote, metrics, value", QUOTES, ids=[q[1] for q in QUOTES])
def test_a_quoted_study_number_is_the_metric_of_the_last_run(document: str, quote: str, metrics: str,
                                                             value: Callable[[dict[str, Any]], int | float]) -> None:
    text = " ".join((REPO / document).read_text().split())
    assert quote in text, f"{document} no longer quotes {quote!r}: update QUOTES with the document"
    path = REPO / "metrics" / f"{metrics}.json"
    if not path.exists():
        pytest.skip(f"metrics/{metrics}.json not written yet (no run in this checkout)")
    assert quoted_number(quote) == value(json.loads(path.read_text())), \
        f"{document} quotes {quote!r}, metrics/{metrics}.json says otherwise: quote the run's number"
