"""Prompt arms for leakage control, and the check for descriptions that name their item's title.

``image_only`` asks for what is visible and never shows the title; ``image_title`` is the reference
code's prompt, which injects the title (so its descriptions cannot isolate the visual contribution).
Posters print their titles and LVLMs know famous films, so even ``image_only`` descriptions can name
the film: :func:`mentions_title` measures how often.
"""
from __future__ import annotations

import re
import unicodedata

IMAGE_ONLY = "image_only"
IMAGE_TITLE = "image_title"

IMAGE_ONLY_PROMPT = ("Describe what is visible in this movie poster: the people, objects, setting, colours "
                     "and mood, in two or three sentences. Do not name the movie.")
_TITLE_PREFIX = "This is the poster of the movie '"
_TITLE_SUFFIX = "'. Describe the poster in detail: the people, objects, setting, colours and mood."

PROMPT_ARMS = (IMAGE_ONLY, IMAGE_TITLE)

_YEAR = re.compile(r"\s*\(\s*\d{4}\s*\)\s*$")
_PARENTHESISED = re.compile(r"\(([^()]*)\)")
_AKA = re.compile(r"^\s*a\.?\s*k\.?\s*a\.?\s+", re.IGNORECASE)
#: Articles moved or dropped before matching ("Matrix, The" and "The Matrix" both match "matrix").
ARTICLES = ("the", "a", "an", "la", "le", "les", "l", "il", "el", "los", "las", "der", "die", "das")


def build_prompt(arm: str, title: str) -> str:
    """The prompt of ``arm`` for an item titled ``title`` (ignored by ``image_only``)."""
    if arm == IMAGE_ONLY:
        return IMAGE_ONLY_PROMPT
    if arm == IMAGE_TITLE:
        return f"{_TITLE_PREFIX}{title}{_TITLE_SUFFIX}"
    raise ValueError(f"unknown prompt arm {arm!r}; expected one of {PROMPT_ARMS}")


def title_in_prompt(prompt: str) -> str | None:
    """The title an ``image_title`` prompt injects, or None for any other prompt."""
    if prompt.startswith(_TITLE_PREFIX) and prompt.endswith(_TITLE_SUFFIX):
        return prompt[len(_TITLE_PREFIX):len(prompt) - len(_TITLE_SUFFIX)]
    return None


def mentions_title(description: str, title: str) -> bool:
    """Whether ``description`` names the item: any form of the title appears as whole words.

    Forms: the main title and each parenthesised alternative ("a.k.a." removed), with the trailing
    "(Year)" dropped and a leading or trailing article ("The ...", "..., The") ignored; matching is
    case-, accent- and punctuation-insensitive. Very short titles ("It", "Heat") match ordinary words:
    this is an upper bound on leakage, not a lower one.
    """
    text = f" {_normalise(description)} "
    return any(f" {form} " in text for form in title_forms(title))


def title_forms(title: str) -> list[str]:
    """Normalised forms of ``title`` searched for by :func:`mentions_title` (empty ones dropped)."""
    base = _YEAR.sub("", title)
    alternatives = [_AKA.sub("", alt) for alt in _PARENTHESISED.findall(base)]
    main = _PARENTHESISED.sub(" ", base)
    forms = [_strip_article(_normalise(name)) for name in [main, *alternatives]]
    return [form for form in dict.fromkeys(forms) if form]


def _normalise(text: str) -> str:
    """Lower case, accents removed, punctuation as spaces, single spaces."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(re.sub(r"[^\w]+", " ", plain).split())


def _strip_article(form: str) -> str:
    """Drop one leading article, or a trailing one ("matrix the" from "Matrix, The")."""
    words = form.split()
    if len(words) > 1 and words[0] in ARTICLES:
        words = words[1:]
    elif len(words) > 1 and words[-1] in ARTICLES:
        words = words[:-1]
    return " ".join(words)
