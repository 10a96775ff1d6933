import pytest

from vlm4rec.grounding.prompts import (IMAGE_ONLY, IMAGE_TITLE, build_prompt, mentions_title, title_forms,
                                       title_in_prompt)


def test_image_only_prompt_never_contains_the_title():
    prompt = build_prompt(IMAGE_ONLY, "Toy Story (1995)")
    assert "Toy Story" not in prompt and prompt.startswith("Describe what is visible in this movie poster")
    assert prompt == build_prompt(IMAGE_ONLY, "Heat (1995)")
    assert title_in_prompt(prompt) is None


@pytest.mark.parametrize("title", ["Toy Story (1995)", "Schindler's List (1993)", "Matrix, The (1999)", "'"])
def test_image_title_prompt_injects_and_returns_the_title(title):
    prompt = build_prompt(IMAGE_TITLE, title)
    assert prompt.startswith("This is the poster of the movie '")
    assert title_in_prompt(prompt) == title


def test_unknown_arm_is_an_error():
    with pytest.raises(ValueError, match="unknown prompt arm 'title_only'"):
        build_prompt("title_only", "x")


def test_title_forms_drop_year_articles_and_split_alternatives():
    assert title_forms("Toy Story (1995)") == ["toy story"]
    assert title_forms("Shawshank Redemption, The (1994)") == ["shawshank redemption"]
    assert title_forms("The Birds (1963)") == ["birds"]
    assert title_forms("City of Lost Children, The (Cité des enfants perdus, La) (1995)") == [
        "city of lost children", "cite des enfants perdus"]
    assert title_forms("Seven (a.k.a. Se7en) (1995)") == ["seven", "se7en"]


@pytest.mark.parametrize("description, title, expected", [
    ("A poster for THE SHAWSHANK REDEMPTION with a man in the rain.", "Shawshank Redemption, The (1994)", True),
    ("Toy-Story: two toys on a bed", "Toy Story (1995)", True),
    ("A poster of cite des enfants perdus.", "City of Lost Children, The (Cité des enfants perdus, La) (1995)", True),
    ("Se7en, in dark letters", "Seven (a.k.a. Se7en) (1995)", True),
    ("A cowboy doll and a spaceman on a bed.", "Toy Story (1995)", False),
    ("A story about toys", "Toy Story (1995)", False),            # words present, but not the title
    ("Heathrow airport at night", "Heat (1995)", False),         # whole words only
    ("The heat of the desert", "Heat (1995)", True),             # short titles are an upper bound
])
def test_mentions_title(description, title, expected):
    assert mentions_title(description, title) is expected
