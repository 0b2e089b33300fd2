import pytest

from vq_reward.parsing import ParsedAnswer, parse_answer, parse_score


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<answer>3.75</answer>", 3.75),
        ("<answer> 4 </answer>", 4.0),
        ("<think>fine</think><answer>2.5</answer>", 2.5),
        ("<answer>1.0</answer> then <answer>4.25</answer>", 4.25),  # several answers: the last one counts
        ("<answer>about 3.5, maybe 4</answer>", 3.5),  # the first number inside it
        ("<answer>-1.5</answer>", -1.5),  # negative kept, not read as 1.5
        ("<answer>7.2</answer>", 7.2),  # out of range kept raw; the scorer clips
        ("<answer>\n3.1\n</answer>", 3.1),
    ],
)
def test_scores(text, expected):
    assert parse_score(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",  # empty
        "3.5",  # missing tags
        "<answer>3.5",  # truncated: no closing tag
        "<answer>good</answer>",  # no number
        "<answer></answer>",
        "\x00garbage<<answer>>",
        "<think>between 1 and 5</think>",  # reasoning numbers are not answers
    ],
)
def test_unparseable_is_none_never_invented(text):
    assert parse_score(text) is None


def test_fallback_to_text_is_the_official_behaviour():
    # The official training reads the first number of the whole text when tags are missing.
    assert parse_score("<think>rating between 1 and 5", fallback_to_text=True) == 1.0
    assert parse_score("<think>rating between 1 and 5") is None


def test_parse_answer_fields():
    parsed = parse_answer("<think> a </think><think> blurry edges </think> <answer> 2.25 </answer>")
    assert parsed == ParsedAnswer(score=2.25, answer="2.25", reasoning="blurry edges")
    assert parse_answer("no tags") == ParsedAnswer(score=None, answer=None, reasoning=None)
