"""MovieLens-1M adapter: the official GroupLens ``ml-1m`` files plus one poster JPEG per movie.

Layout under ``root`` (https://grouplens.org/datasets/movielens/1m/, README.grouplens):

``ratings.dat``  ``UserID::MovieID::Rating::Timestamp``; integer ratings 1..5, Unix seconds; ASCII
``movies.dat``   ``MovieID::Title (Year)::Genre1|Genre2|...``, latin-1 encoded in the official release
``posters/``     ``<MovieID>.jpg`` (or any ``posters_dir``); a missing poster is counted, never fatal

Every malformed line raises :class:`~vlm4rec.data.DataFormatError` with the file and 1-based line number.
Lines end at ``\n`` only (a ``\r`` before it is dropped): ``str.splitlines`` would also break a line at
U+0085 or U+2028, which a decoded title can hold. ``ratings.dat`` must be ASCII. ``movies.dat`` is read
by :func:`decode_movies`: latin-1 when it is the official file (its sha256), else UTF-8 when it decodes
as UTF-8 (an edited copy is usually saved so), else latin-1, and a control character in a line (a C1
byte 0x80-0x9F read as latin-1 means the file is cp1252 or damaged) is an error.
The official title is kept as is (``"American President, The (1995)"``); the year is parsed from its
trailing ``(YYYY)`` when there is one.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd

from vlm4rec.data import DataFormatError, RawDataset
from vlm4rec.download import OutsideFolderPolicy, attach_image_paths

SOURCE_NAME = "movielens_1m"
RATINGS_FILE = "ratings.dat"
MOVIES_FILE = "movies.dat"
USERS_FILE = "users.dat"
SEPARATOR = "::"
#: sha256 of the official GroupLens release files (ml-1m.zip from files.grouplens.org; ratings.dat is
#: byte for byte the original). A file with this hash is the official one; the fetch stage refuses any
#: other under these names.
OFFICIAL_SHA256 = {
    RATINGS_FILE: "506d64ca44484487c11dc2d9a28de5c54948213e6b96285e298afe28d6ea4e0f",
    MOVIES_FILE: "0140fc2356357c1a851d0f52e893a1e4d3696df632c4141cea8d5bc3d621f0b9",
    USERS_FILE: "1dc3a95300cb19f7c10e027daf29b8cdf1d908dab65b5edfb45950aa389a10a3",
}
_YEAR_AT_END = re.compile(r"\((\d{4})\)\s*$")
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _read_bytes(path: Path) -> bytes:
    """The file's bytes (a missing file is a clear error)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MovieLens-1M file not found")
    return path.read_bytes()


def _lines(text: str) -> list[str]:
    """Lines split at ``\n`` only, a ``\r`` before it dropped, no empty last line after a final ``\n``."""
    lines = text.replace("\r\n", "\n").split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def _line_at(data: bytes, offset: int) -> int:
    """The 1-based line number of byte ``offset``."""
    return data.count(b"\n", 0, offset) + 1


def _decode_ascii(data: bytes, path: Path) -> str:
    """``data`` as ASCII, or a DataFormatError at the line of the first other byte."""
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as err:
        reason = f"byte 0x{data[err.start]:02x} is not ASCII (the file holds digits and '::')"
        raise DataFormatError(path, _line_at(data, err.start), reason) from None


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def decode_movies(data: bytes, path: Path) -> tuple[str, str]:
    """(text, encoding) of ``movies.dat`` by the module's rule: latin-1 for the official file (its
    sha256), else UTF-8 when the bytes are UTF-8, else latin-1 -- unless some non-ASCII lines are UTF-8
    and others not, which is an error at the first line that is not (an edit saved in another encoding).
    """
    if hashlib.sha256(data).hexdigest() == OFFICIAL_SHA256[MOVIES_FILE]:
        return data.decode("latin-1"), "latin-1"
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as err:
        first_other = _line_at(data, err.start)
    raw_lines = data.split(b"\n")
    utf8_line = next((no for no, raw in enumerate(raw_lines, start=1)
                      if not raw.isascii() and _is_utf8(raw)), None)
    if utf8_line is not None:
        raise DataFormatError(path, first_other, f"not UTF-8 while line {utf8_line} is: the file mixes "
                              "encodings; save it as UTF-8 (or restore the official latin-1 file)")
    return data.decode("latin-1"), "latin-1"


def _check_no_control_character(line: str, encoding: str, path: Path, line_no: int) -> None:
    """A line of text holds no control character; one is a decoding problem, never a title."""
    found = _CONTROL_CHARACTER.search(line)
    if found is None:
        return
    code = ord(found.group())
    if code >= 0x80 and encoding == "latin-1":
        hint = ("; the file is not UTF-8 and was read as latin-1, where bytes 0x80-0x9F are control "
                "characters (cp1252 text or damaged UTF-8?): save it as UTF-8")
    else:
        hint = f" (read as {encoding})"
    raise DataFormatError(path, line_no, f"control character U+{code:04X} at column {found.start() + 1}{hint}")


def _split_fields(line: str, n_fields: int, path: Path, line_no: int) -> list[str]:
    """The ``::``-separated fields of one line, exactly ``n_fields`` of them."""
    fields = line.split(SEPARATOR)
    if len(fields) != n_fields:
        raise DataFormatError(path, line_no, f"expected {n_fields} '::'-separated fields, got {len(fields)}")
    return fields


def _positive_int(text: str, what: str, path: Path, line_no: int) -> int:
    """``text`` as a positive integer id, or a DataFormatError naming ``what``."""
    try:
        value = int(text)
    except ValueError:
        raise DataFormatError(path, line_no, f"{what} {text!r} is not an integer") from None
    if value < 1:
        raise DataFormatError(path, line_no, f"{what} {value} is not a positive id")
    return value


def _rating_row(fields: list[str], path: Path, line_no: int) -> tuple[int, int, int, int]:
    """(user, movie, rating, timestamp) of one ``ratings.dat`` line, validated."""
    user = _positive_int(fields[0], "UserID", path, line_no)
    movie = _positive_int(fields[1], "MovieID", path, line_no)
    try:
        rating = int(fields[2])
    except ValueError:
        raise DataFormatError(path, line_no, f"Rating {fields[2]!r} is not an integer") from None
    if not 1 <= rating <= 5:
        raise DataFormatError(path, line_no, f"Rating {rating} is outside 1..5")
    try:
        timestamp = int(fields[3])
    except ValueError:
        raise DataFormatError(path, line_no, f"Timestamp {fields[3]!r} is not an integer") from None
    if timestamp < 0:
        raise DataFormatError(path, line_no, f"Timestamp {timestamp} is negative")
    return user, movie, rating, timestamp


def read_ratings(path: Path) -> pd.DataFrame:
    """``ratings.dat`` as user_id, item_id (str), rating (float32), timestamp (int64).

    A plain line loop: about a second for the 1,000,209 lines, and the failing line is known exactly.
    """
    rows = [_rating_row(_split_fields(line, 4, path, no), path, no)
            for no, line in enumerate(_lines(_decode_ascii(_read_bytes(path), path)), start=1)]
    if not rows:
        raise DataFormatError(path, None, "the file has no ratings (it is empty)")
    table = np.array(rows, dtype=np.int64).reshape(len(rows), 4)
    return pd.DataFrame({"user_id": pd.Series(table[:, 0]).astype(str),
                         "item_id": pd.Series(table[:, 1]).astype(str),
                         "rating": table[:, 2].astype(np.float32),
                         "timestamp": table[:, 3]})


def year_of(title: str) -> int | None:
    """The release year in a title's trailing ``(YYYY)``, None when there is none."""
    match = _YEAR_AT_END.search(title)
    return int(match.group(1)) if match else None


def read_movies(path: Path) -> pd.DataFrame:
    """``movies.dat`` as item_id, title, year, genres, meta_text (duplicate MovieIDs are an error)."""
    text, encoding = decode_movies(_read_bytes(path), path)
    records: list[dict] = []
    line_of_movie: dict[int, int] = {}
    for no, line in enumerate(_lines(text), start=1):
        _check_no_control_character(line, encoding, path, no)
        movie_text, title, genres = _split_fields(line, 3, path, no)
        movie = _positive_int(movie_text, "MovieID", path, no)
        if movie in line_of_movie:
            raise DataFormatError(path, no, f"MovieID {movie} already defined on line {line_of_movie[movie]}")
        line_of_movie[movie] = no
        genre_list = [g for g in genres.split("|") if g]
        records.append({"item_id": str(movie), "title": title, "year": year_of(title),
                        "genres": "|".join(genre_list), "meta_text": ", ".join(genre_list)})
    if not records:
        raise DataFormatError(path, None, "the file has no movies (it is empty)")
    movies = pd.DataFrame.from_records(records, columns=["item_id", "title", "year", "genres", "meta_text"])
    movies["year"] = movies["year"].astype("Int64")
    return movies


def attach_posters(movies: pd.DataFrame, posters_dir: Path, counts: dict[str, int],
                   outside_folder: OutsideFolderPolicy = "refuse") -> pd.DataFrame:
    """Add image_path (absolute, or None when ``<MovieID>.jpg`` is not a usable regular file), has_image,
    image_url; the checks and counts of :func:`vlm4rec.download.attach_image_paths`."""
    movies = attach_image_paths(movies, posters_dir.resolve(), counts, outside_folder=outside_folder)
    movies["image_url"] = None
    return movies


def _check_rated_movies_exist(ratings: pd.DataFrame, movies: pd.DataFrame, path: Path) -> None:
    """Every rated MovieID has a ``movies.dat`` record; else name the first offending line."""
    unknown = ~ratings["item_id"].isin(set(movies["item_id"]))
    if unknown.any():
        first = int(np.flatnonzero(unknown.to_numpy())[0])
        movie = ratings["item_id"].iloc[first]
        raise DataFormatError(path, first + 1, f"MovieID {movie} is not in {MOVIES_FILE} "
                              f"({int(unknown.sum())} ratings on unknown movies)")


def load_movielens_1m(root: str | Path, posters_dir: str | Path | None = None,
                      images_outside_folder: OutsideFolderPolicy = "refuse") -> RawDataset:
    """Ratings, movies and posters of MovieLens-1M under ``root`` (posters default: ``root/posters``).

    counts: movies, ratings, posters_found, posters_missing, ratings_on_movies_without_poster,
    images_not_regular_file, images_outside_folder (``images_outside_folder``: see
    :func:`vlm4rec.download.attach_image_paths`).
    """
    root = Path(root)
    posters = Path(posters_dir) if posters_dir is not None else root / "posters"
    ratings = read_ratings(root / RATINGS_FILE)
    counts: dict[str, int] = {}
    movies = attach_posters(read_movies(root / MOVIES_FILE), posters, counts, images_outside_folder)
    _check_rated_movies_exist(ratings, movies, root / RATINGS_FILE)
    without_poster = set(movies.loc[~movies["has_image"], "item_id"])
    counts |= {"movies": len(movies), "ratings": len(ratings),
               "posters_found": int(movies["has_image"].sum()),
               "posters_missing": int((~movies["has_image"]).sum()),
               "ratings_on_movies_without_poster": int(ratings["item_id"].isin(without_poster).sum())}
    return RawDataset(name=SOURCE_NAME, interactions=ratings, items=movies, counts=counts)
