"""MovieLens-1M adapter on fixture files in the official format, plus the real release when present."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vlm4rec.data import DataFormatError
from vlm4rec.datasets import SOURCES, load_source
from vlm4rec.datasets import movielens
from vlm4rec.datasets.movielens import decode_movies, load_movielens_1m, read_movies, year_of
from vlm4rec.errors import StudyError

REAL_ML1M = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-1m"

MOVIES = [
    "1::Toy Story (1995)::Animation|Children's|Comedy",
    "11::American President, The (1995)::Comedy|Drama|Romance",
    "73::Misérables, Les (1995)::Drama|Musical",
    "99::Untitled Project::Documentary",
]
RATINGS = [
    "1::1::5::978300760",
    "1::73::3::978302109",
    "2::11::4::978301968",
    "2::73::4::978300275",
    "3::99::1::978824291",
]


def write_ml1m(root: Path, movies: list[str] = MOVIES, ratings: list[str] = RATINGS,
               posters: tuple[str, ...] = ("1", "11", "99")) -> Path:
    """Official layout: latin-1 movies.dat, ratings.dat, posters/<MovieID>.jpg (73 has no poster)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "movies.dat").write_bytes(("\n".join(movies) + "\n").encode("latin-1"))
    (root / "ratings.dat").write_bytes(("\n".join(ratings) + "\n").encode("ascii"))
    (root / "posters").mkdir(exist_ok=True)
    for movie in posters:
        (root / "posters" / f"{movie}.jpg").write_bytes(b"\xff\xd8\xff\xd9")
    return root


def test_loads_items_with_official_titles_years_genres_and_posters(tmp_path):
    root = write_ml1m(tmp_path / "ml-1m")
    items = load_movielens_1m(root).items.set_index("item_id")
    assert list(items.index) == ["1", "11", "73", "99"]
    assert items.loc["11", "title"] == "American President, The (1995)"
    assert items.loc["73", "title"] == "Misérables, Les (1995)"
    assert items.loc["1", "year"] == 1995 and pd.isna(items.loc["99", "year"])
    assert items.loc["1", "genres"] == "Animation|Children's|Comedy"
    assert items.loc["1", "meta_text"] == "Animation, Children's, Comedy"
    assert items.loc["1", "image_path"] == str((root / "posters" / "1.jpg").resolve())
    assert Path(items.loc["1", "image_path"]).is_absolute()
    assert items.loc["73", "image_path"] is None
    assert list(items["has_image"]) == [True, True, False, True]
    assert items["image_url"].isna().all()


def test_loads_ratings_with_string_ids_and_counts_missing_posters(tmp_path):
    raw = load_movielens_1m(write_ml1m(tmp_path / "ml-1m"))
    inter = raw.interactions
    assert list(inter["user_id"]) == ["1", "1", "2", "2", "3"]
    assert list(inter["item_id"]) == ["1", "73", "11", "73", "99"]
    np.testing.assert_array_equal(inter["rating"], [5, 3, 4, 4, 1])
    assert inter["timestamp"].dtype == np.int64 and inter["timestamp"].iloc[4] == 978824291
    assert raw.name == "movielens_1m"
    assert raw.counts == {"movies": 4, "ratings": 5, "posters_found": 3, "posters_missing": 1,
                          "ratings_on_movies_without_poster": 2, "images_not_regular_file": 0,
                          "images_outside_folder": 0}


def test_posters_dir_can_live_elsewhere(tmp_path):
    root = write_ml1m(tmp_path / "ml-1m", posters=())
    elsewhere = tmp_path / "art"
    elsewhere.mkdir()
    (elsewhere / "73.jpg").write_bytes(b"\xff\xd8\xff\xd9")
    raw = load_movielens_1m(root, posters_dir=elsewhere)
    assert raw.items.set_index("item_id").loc["73", "image_path"] == str((elsewhere / "73.jpg").resolve())
    assert raw.counts["posters_found"] == 1


@pytest.mark.parametrize("folder", ["absent", "empty"])
def test_a_posters_folder_without_a_poster_stops_prepare(tmp_path, folder):
    """Else the study would run on titles only, with every image representation empty."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(StudyError, match=rf"the images folder {tmp_path / folder} holds no usable image for any of "
                                         r"the 4 items \(<item_id>.jpg"):
        load_movielens_1m(write_ml1m(tmp_path / "ml-1m"), posters_dir=tmp_path / folder)


@pytest.mark.parametrize("bad_line, reason", [
    ("2::11::4", "expected 4 '::'-separated fields, got 3"),
    ("2::11::4::978301968::x", "expected 4 '::'-separated fields, got 5"),
    ("", "expected 4 '::'-separated fields, got 1"),
    ("u2::11::4::978301968", "UserID 'u2' is not an integer"),
    ("2::11.0::4::978301968", "MovieID '11.0' is not an integer"),
    ("0::11::4::978301968", "UserID 0 is not a positive id"),
    ("2::11::6::978301968", "Rating 6 is outside 1..5"),
    ("2::11::0::978301968", "Rating 0 is outside 1..5"),
    ("2::11::4.5::978301968", "Rating '4.5' is not an integer"),
    ("2::11::4::2000-12-31", "Timestamp '2000-12-31' is not an integer"),
    ("2::11::4::-5", "Timestamp -5 is negative"),
])
def test_malformed_rating_line_names_file_and_line(tmp_path, bad_line, reason):
    ratings = RATINGS[:2] + [bad_line] + RATINGS[3:]
    root = write_ml1m(tmp_path / "ml-1m", ratings=ratings)
    with pytest.raises(DataFormatError) as error:
        load_movielens_1m(root)
    assert error.value.line == 3 and error.value.path.endswith("ratings.dat")
    assert error.value.reason == reason
    assert f"ratings.dat:3: {reason}" in str(error.value)


@pytest.mark.parametrize("bad_line, reason", [
    ("11::American President, The (1995)", "expected 3 '::'-separated fields, got 2"),
    ("eleven::American President, The (1995)::Comedy", "MovieID 'eleven' is not an integer"),
    ("1::Toy Story again (1995)::Comedy", "MovieID 1 already defined on line 1"),
])
def test_malformed_movie_line_names_file_and_line(tmp_path, bad_line, reason):
    movies = MOVIES[:1] + [bad_line] + MOVIES[2:]
    with pytest.raises(DataFormatError) as error:
        load_movielens_1m(write_ml1m(tmp_path / "ml-1m", movies=movies))
    assert (error.value.line, error.value.reason) == (2, reason)
    assert error.value.path.endswith("movies.dat")


def test_rating_of_an_unknown_movie_names_its_line(tmp_path):
    ratings = RATINGS + ["4::500::4::978300000"]
    with pytest.raises(DataFormatError, match=r"ratings.dat:6: MovieID 500 is not in movies.dat"):
        load_movielens_1m(write_ml1m(tmp_path / "ml-1m", ratings=ratings))


def test_missing_file_is_a_clear_error(tmp_path):
    root = write_ml1m(tmp_path / "ml-1m")
    (root / "ratings.dat").unlink()
    with pytest.raises(FileNotFoundError, match="ratings.dat"):
        load_movielens_1m(root)


def movies_bytes(lines: list[str], encoding: str, newline: str = "\n") -> bytes:
    return (newline.join(lines) + newline).encode(encoding)


def titles_read(tmp_path: Path, data: bytes) -> list[str]:
    root = write_ml1m(tmp_path / "ml-1m")
    (root / "movies.dat").write_bytes(data)
    return read_movies(root / "movies.dat")["title"].tolist()


def test_utf8_copy_reads_the_same_titles_as_the_latin1_original(tmp_path):
    expected = [line.split("::")[1] for line in MOVIES]
    assert titles_read(tmp_path, movies_bytes(MOVIES, "latin-1")) == expected
    assert titles_read(tmp_path, movies_bytes(MOVIES, "utf-8")) == expected
    assert titles_read(tmp_path, movies_bytes(MOVIES, "utf-8", newline="\r\n")) == expected


def test_utf8_byte_0x85_inside_a_title_is_not_a_line_break(tmp_path):
    movies = MOVIES + ["100::Ångström, The (1996)::Drama"]  # Å is C3 85 in UTF-8; U+0085 is NEL
    assert "\x85".encode("latin-1") in "Å".encode("utf-8")
    assert titles_read(tmp_path, movies_bytes(movies, "utf-8"))[-1] == "Ångström, The (1996)"


def test_cp1252_quotes_are_refused_at_their_line(tmp_path):
    movies = MOVIES[:2] + ["12::\u201cQuoted\u201d (1995)::Drama"] + MOVIES[2:]
    with pytest.raises(DataFormatError) as error:
        titles_read(tmp_path, movies_bytes(movies, "cp1252"))
    assert error.value.line == 3 and error.value.path.endswith("movies.dat")
    assert error.value.reason.startswith("control character U+0093 at column 5; the file is not UTF-8")


def test_control_character_in_a_utf8_file_is_refused(tmp_path):
    movies = MOVIES[:1] + ["2::Tab\tTitle (1995)::Drama"]
    with pytest.raises(DataFormatError, match=r"movies.dat:2: control character U\+0009 at column 7 "
                                              r"\(read as utf-8\)"):
        titles_read(tmp_path, movies_bytes(movies, "utf-8"))


def test_mixed_encodings_name_the_first_line_that_is_not_utf8(tmp_path):
    data = movies_bytes(MOVIES[:2], "utf-8") + movies_bytes(["5::Café (1995)::Drama"], "utf-8") \
        + movies_bytes(MOVIES[2:], "latin-1")
    with pytest.raises(DataFormatError) as error:
        titles_read(tmp_path, data)
    assert (error.value.line, error.value.reason) == (
        4, "not UTF-8 while line 3 is: the file mixes encodings; save it as UTF-8 (or restore the official "
           "latin-1 file)")


def test_the_official_file_is_latin1_whatever_it_would_decode_as(tmp_path, monkeypatch):
    data = movies_bytes(["1::Ã© (1995)::Drama"], "latin-1")  # C3 A9: valid UTF-8 for é
    monkeypatch.setitem(movielens.OFFICIAL_SHA256, "movies.dat", hashlib.sha256(data).hexdigest())
    assert decode_movies(data, Path("movies.dat")) == ("1::Ã© (1995)::Drama\n", "latin-1")
    assert titles_read(tmp_path, data) == ["Ã© (1995)"]


@pytest.mark.parametrize("name, reason", [("ratings.dat", "the file has no ratings (it is empty)"),
                                          ("movies.dat", "the file has no movies (it is empty)")])
def test_empty_file_says_so(tmp_path, name, reason):
    root = write_ml1m(tmp_path / "ml-1m")
    (root / name).write_bytes(b"")
    with pytest.raises(DataFormatError) as error:
        load_movielens_1m(root)
    assert (error.value.path, error.value.line, error.value.reason) == (str(root / name), None, reason)


def test_non_ascii_rating_byte_names_its_line(tmp_path):
    root = write_ml1m(tmp_path / "ml-1m")
    (root / "ratings.dat").write_bytes(b"1::1::5::978300760\r\n2::11::4\xa0::978301968\r\n")
    with pytest.raises(DataFormatError, match=r"ratings.dat:2: byte 0xa0 is not ASCII"):
        load_movielens_1m(root)


def test_crlf_ratings_load(tmp_path):
    root = write_ml1m(tmp_path / "ml-1m")
    (root / "ratings.dat").write_bytes(("\r\n".join(RATINGS) + "\r\n").encode("ascii"))
    assert load_movielens_1m(root).counts["ratings"] == 5


@pytest.mark.parametrize("policy, posters_found", [("record", 3), ("refuse", 2)])
def test_odd_poster_files_are_counted(tmp_path, policy, posters_found):
    root = write_ml1m(tmp_path / "ml-1m", posters=("1", "11"))
    os.mkfifo(root / "posters" / "73.jpg")
    (tmp_path / "system.jpg").write_bytes(b"\xff\xd8\xff\xd9")
    (root / "posters" / "99.jpg").symlink_to(tmp_path / "system.jpg")
    raw = load_movielens_1m(root, images_outside_folder=policy)
    assert raw.items.set_index("item_id").loc["73", "image_path"] is None
    assert raw.counts["images_not_regular_file"] == 1 and raw.counts["images_outside_folder"] == 1
    assert raw.counts["posters_found"] == posters_found


@pytest.mark.parametrize("title, year", [("Toy Story (1995)", 1995), ("Ed (1996) (1997)", 1997),
                                         ("1984 (1956)", 1956), ("Untitled", None), ("Movie (19)", None)])
def test_year_of_reads_the_trailing_year(title, year):
    assert year_of(title) == year


def test_registry_loads_movielens_by_name(tmp_path):
    root = write_ml1m(tmp_path / "ml-1m")
    assert SOURCES["movielens_1m"] is load_movielens_1m
    assert load_source("movielens_1m", root=root).counts["ratings"] == 5
    with pytest.raises(ValueError, match="unknown data source 'nope'"):
        load_source("nope", root=root)


@pytest.mark.skipif(not (REAL_ML1M / "ratings.dat").is_file(), reason="MovieLens-1M not present")
def test_real_movielens_1m_has_the_documented_counts():
    raw = load_movielens_1m(REAL_ML1M)
    assert raw.counts == {"movies": 3883, "ratings": 1_000_209, "posters_found": 3872, "posters_missing": 11,
                          "ratings_on_movies_without_poster": 73, "images_not_regular_file": 0,
                          "images_outside_folder": 0}
    assert raw.interactions["user_id"].nunique() == 6040
    assert raw.interactions["item_id"].nunique() == 3706
    toy_story = raw.items.set_index("item_id").loc["1"]
    assert (toy_story["title"], toy_story["year"], toy_story["meta_text"]) == (
        "Toy Story (1995)", 1995, "Animation, Children's, Comedy")
    assert raw.items["year"].notna().all()
