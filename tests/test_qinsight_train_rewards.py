"""Q-Insight's rewards against hand-computed cases from the official definitions (strict threshold, first answer
block, nested severity credit, the format regexes' newline rules, exact comparison match), task routing in mixed
batches, the forced answer prefix, the registry and pickling."""

import pickle

import pytest

from vq_reward.parsing import parse_rating
from vq_reward.train.qinsight_rewards import (
    ComparisonFormatReward,
    ComparisonReward,
    DegradationReward,
    QInsightFormatReward,
    ScoreThresholdReward,
    comparison_format_reward,
    comparison_reward,
    degradation_reward,
    qinsight_format_reward,
    score_threshold_reward,
)
from vq_reward.train.reward_registry import make_reward_funcs
from vq_reward.train.vqr1_rewards import FidelityRankReward


def answer(body: str, thought: str = "fine") -> str:
    return f"<think>\n{thought}\n</think>\n<answer>\n{body}\n</answer>"


def degradation(kind: str, level: str) -> str:
    return answer(f'{{"distortion_class": "{kind}", "severity": "{level}"}}')


@pytest.mark.parametrize(
    ("text", "mos", "threshold", "expected"),
    [
        (answer('{"rating": 3.34}'), 3.0, 0.35, 1.0),
        (answer('{"rating": 2.66}'), 3.0, 0.35, 1.0),
        (answer('{"rating": 3.36}'), 3.0, 0.35, 0.0),
        # Strict "<" at an exactly representable boundary: |3.25 - 3.0| = 0.25 is not < 0.25.
        (answer('{"rating": 3.25}'), 3.0, 0.25, 0.0),
        (answer('{"rating": 3.125}'), 3.0, 0.25, 1.0),
        (answer('{"rating":3}'), 3.0, 0.35, 1.0),  # no space needed
        (answer('{"rating": "3.0"}'), 3.0, 0.35, 0.0),  # a quoted number does not match [\d.]+
        (answer('{"rating": -3}'), -3.0, 0.35, 0.0),  # no minus sign in the official regex
        (answer('{"rating": 4.5.1}'), 4.5, 0.35, 0.0),  # digits and dots, but no number
        (answer('{"score": 3.0}'), 3.0, 0.35, 0.0),
        ('{"rating": 3.0}', 3.0, 0.35, 0.0),  # no answer block: 0, never a fallback
        ('<think>\n"rating": 3.0\n</think>\n<answer>\n{}\n</answer>', 3.0, 0.35, 0.0),  # the thought is not read
        # The FIRST answer block counts (Q-Insight's re.search), unlike VisualQuality-R1's last.
        (answer('{"rating": 3.1}') + answer('{"rating": 1.0}'), 3.0, 0.35, 1.0),
        (answer('{"rating": 1.0}') + answer('{"rating": 3.1}'), 3.0, 0.35, 0.0),
    ],
)
def test_score_threshold_reward(text, mos, threshold, expected):
    assert score_threshold_reward(text, mos, threshold) == expected


def test_parse_rating():
    assert parse_rating(answer('{"rating": 4.25}')) == 4.25
    assert parse_rating('<answer>"rating" :  2.</answer>') == 2.0
    assert parse_rating("<answer>rating: 3</answer>") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (degradation("blur", "serious"), 1.0),  # 0.25 + 0.75
        (degradation("blur", "slight"), 0.25),  # right class only
        (degradation("noise", "serious"), 0.0),  # right severity, wrong class: nested, so nothing
        (degradation("Blur", "serious"), 0.0),  # case-sensitive
        (answer('{"distortion_class": "blur"}'), 0.0),  # both keys needed
        (answer('{"severity": "serious", "distortion_class": "blur"}'), 0.0),  # class must come first
        (answer('{"distortion_class":"blur",\n"severity":"serious"}'), 1.0),  # DOTALL: across lines
        (degradation("blur", "serious") + degradation("noise", "slight"), 1.0),  # first block
        (degradation("noise", "slight") + degradation("blur", "serious"), 0.0),
        ('{"distortion_class": "blur", "severity": "serious"}', 0.0),  # no answer block
        (answer('{"distortion_class": " blur ", "severity": " serious"}'), 1.0),  # stripped, as officially
    ],
)
def test_degradation_reward(text, expected):
    assert degradation_reward(text, "blur", "serious") == expected


def test_no_distortion_is_a_class_with_its_own_severity():
    assert degradation_reward(degradation("null", "null"), "null", "null") == 1.0
    assert degradation_reward(degradation("null", "slight"), "null", "null") == 0.25


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (answer('{"rating": 3.2}'), 1.0),
        ('<think>\n\n</think>\n<answer>\n{"rating": 3.2}\n</answer>', 1.0),  # the readouts' forced empty thought
        (answer('{"rating": 3.2}') + "\n  ", 1.0),  # trailing whitespace
        (
            '<think>  \n a\nb \n  </think>  \n<answer>  \n{"distortion_class": "x", "severity": "y"}  \n  </answer>',
            1.0,
        ),
        ('<think>fine\n</think>\n<answer>\n{"rating": 3.2}\n</answer>', 0.0),  # newline after <think> required
        ('<think>\nfine</think>\n<answer>\n{"rating": 3.2}\n</answer>', 0.0),  # and before </think>
        ('<think>\nfine\n</think><answer>\n{"rating": 3.2}\n</answer>', 0.0),  # and between </think> and <answer>
        ('<think>\nfine\n</think>\n<answer>{"rating": 3.2}\n</answer>', 0.0),  # and after <answer>
        ('<think>\nfine\n</think>\n<answer>\n{"rating": 3.2}</answer>', 0.0),  # and before </answer>
        (answer("3.2"), 0.0),  # the answer must be a {...} object
        (answer('{"a": {"b": 1}}'), 0.0),  # a flat one
        (answer('{"a": 1}\n{"b": 2}'), 0.0),  # exactly one
        ("x\n" + answer('{"rating": 3.2}'), 0.0),  # nothing before <think>, though MULTILINE lets ^ match a line
        (answer('{"rating": 3.2}') + "\nmore", 0.0),  # nothing after </answer>
    ],
)
def test_qinsight_format_reward(text, expected):
    assert qinsight_format_reward(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (answer("Image A"), 1.0),
        ("<answer> Image A \n</answer>", 1.0),  # stripped
        (answer("image a"), 0.0),
        (answer("Image A."), 0.0),
        (answer("Image A is better"), 0.0),
        (answer("Image B") + answer("Image A"), 0.0),  # the first block counts
        ("Image A", 0.0),
    ],
)
def test_comparison_reward(text, expected):
    assert comparison_reward(text, "Image A") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (answer("Image A"), 1.0),
        (answer("Similar, since both are sharp"), 1.0),  # no JSON, any text
        ("<think>\nx\n</think>\n<answer>Image A</answer>", 0.0),  # newlines around the answer required
        ("<answer>\nImage A\n</answer>", 0.0),
    ],
)
def test_comparison_format_reward(text, expected):
    assert comparison_format_reward(text) == expected


def mixed_batch(g: int = 2) -> dict:
    """Three rows (score, degradation, comparison), G rollouts each, with the columns TRL passes (None where a row
    lacks a column, as in a mixed dataset)."""
    completions = [
        answer('{"rating": 3.1}'), answer('{"rating": 4.9}'),
        degradation("blur", "serious"), degradation("blur", "slight"),
        answer("Image B"), "<answer>Image A</answer>",
    ]  # fmt: skip
    columns = {
        "task": ["score", "degradation", "comparison"],
        "mos": [3.0, None, None],
        "distortion_class": [None, "blur", None],
        "severity": [None, "serious", None],
        "result": [None, None, "Image A"],
        "dataset_name": ["synthetic"] * 3,
    }
    repeated = {key: [v for v in values for _ in range(g)] for key, values in columns.items()}
    return {"completions": [[{"role": "assistant", "content": c}] for c in completions], **repeated}


def test_each_row_gets_only_its_tasks_rewards():
    batch = mixed_batch()
    assert ScoreThresholdReward()(**batch) == [1.0, 0.0, None, None, None, None]
    assert DegradationReward()(**batch) == [None, None, 1.0, 0.25, None, None]
    assert QInsightFormatReward()(**batch) == [1.0, 1.0, 1.0, 1.0, None, None]
    assert ComparisonReward()(**batch) == [None, None, None, None, 0.0, 1.0]
    assert ComparisonFormatReward()(**batch) == [None, None, None, None, 1.0, 0.0]
    # VisualQuality-R1's rank reward beside them: None for the other tasks' rows, whose MOS is None.
    assert FidelityRankReward(num_generations=2)(**batch)[2:] == [None] * 4


def test_rows_without_a_task_are_score_rows():
    reward = ScoreThresholdReward()
    assert reward(completions=[answer('{"rating": 3.1}')], mos=[3.0]) == [1.0]
    assert DegradationReward()(completions=[answer("{}")], mos=[3.0]) == [None]


def test_the_forced_answer_prefix_is_put_back():
    prefix = "<think>\n\n</think>\n<answer>\n"
    reward = DegradationReward(answer_prefix=prefix)
    completion = '{"distortion_class": "darken", "severity": "moderate"}'  # a closed-set rollout: no "</answer>"
    assert reward.full_text(completion) == prefix + completion + "\n</answer>"
    assert reward(completions=[completion], task=["degradation"], distortion_class=["darken"],
                  severity=["moderate"]) == [1.0]  # fmt: skip
    assert QInsightFormatReward(answer_prefix=prefix)(completions=[completion], task=["degradation"]) == [1.0]
    assert ComparisonReward(answer_prefix=prefix)(
        completions=["Similar"], task=["comparison"], result=["Similar"]
    ) == [1.0]
    closed = '{"rating": 3\n</answer>'  # already closed: nothing appended
    assert ScoreThresholdReward(answer_prefix=prefix).full_text(closed) == prefix + closed


def test_registry_builds_picklable_named_rewards():
    names = ["score_threshold", "degradation", "qinsight_format", "comparison", "comparison_format"]
    funcs = make_reward_funcs(names, 8, answer_prefix="", score_threshold=0.2)
    copies = [pickle.loads(pickle.dumps(f)) for f in funcs]
    assert [f.__name__ for f in copies] == names
    assert copies[0].threshold == 0.2 and copies[0](completions=[answer('{"rating": 3.25}')], mos=[3.0]) == [0.0]
    assert copies[1](**mixed_batch()) == funcs[1](**mixed_batch())
    with pytest.raises(ValueError, match="score_threshold must be positive"):
        ScoreThresholdReward(threshold=0.0)
