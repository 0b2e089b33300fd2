"""Q-Insight's rewards for TRL's GRPOTrainer: score threshold, degradation, their format, comparison accuracy/format.

The official definitions (bytedance/Q-Insight `qinsight_multi_task.py` and `qinsight_comparison.py`), each a pure
function of one completion's full text plus its row's label, wrapped by a picklable callable class:

    score_threshold   1.0 if |rating - mos| < threshold (strict; 0.35 officially), else 0.0; the rating is
                      `"rating": x` (digits and dots) in the FIRST <answer> block; none found -> 0.0
    degradation       0.25 if "distortion_class" equals the label, plus 0.75 if "severity" does too, the severity
                      counting only when the class is right: 0, 0.25 or 1.0; first <answer> block; case-sensitive
    qinsight_format   1.0 if the whole text is <think>\\n...\\n</think>\\n<answer>\\n{flat JSON}\\n</answer>
                      (`FORMAT_PATTERN`, DOTALL | MULTILINE full match), for score and degradation rows
    comparison        1.0 if the stripped first <answer> block is exactly the label ("Image A" / "Image B" /
                      "Similar")
    comparison_format 1.0 if the whole text is <think>\\n...\\n</think>\\n<answer>\\n...\\n</answer>

Rows carry a `task` column ("score" when absent). Each reward scores only the rows of its own tasks and returns
None for the others, so one mixed batch (score + degradation + comparison rows) gets each row's rewards only; TRL
sums the non-None rewards of a row.

With `answer_prefix` (the fast path: the generation prompt already ends with "<think>\\n\\n</think>\\n<answer>\\n"),
the prefix is put back in front of each completion and a missing "</answer>" is closed before the text is read.
"""

import re
from collections.abc import Callable, Sequence

from vq_reward.data.rows import COMPARISON_TASK, DEGRADATION_TASK, SCORE_TASK
from vq_reward.parsing import parse_comparison, parse_degradation, parse_rating
from vq_reward.rewards import completion_text


SCORE_THRESHOLD = 0.35  # `--score_reward_threshold` of the official run
CLASS_CREDIT = 0.25  # alpha_1: the right distortion class
SEVERITY_CREDIT = 0.75  # alpha_2: the right severity, given the right class

FORMAT_PATTERN = re.compile(
    r"^<think>\s*\n.*?\n\s*</think>\s*\n<answer>\s*\n\{[^\{\}]*\}\s*\n\s*</answer>\s*$", re.DOTALL | re.MULTILINE
)
COMPARISON_FORMAT_PATTERN = re.compile(
    r"^<think>\s*\n[\s\S]*?\n\s*</think>\s*\n<answer>\s*\n[\s\S]*?\n\s*</answer>\s*$", re.DOTALL | re.MULTILINE
)


def score_threshold_reward(text: str, mos: float, threshold: float = SCORE_THRESHOLD) -> float:
    """1.0 when the first answer's rating is strictly within `threshold` of `mos`, else 0.0.

    Example:
        >>> score_threshold_reward('<answer>{"rating": 3.34}</answer>', 3.0)
        1.0
        >>> score_threshold_reward('<answer>{"rating": 3.5}</answer>', 3.0)
        0.0
    """
    rating = parse_rating(text)
    return 1.0 if rating is not None and abs(rating - float(mos)) < threshold else 0.0


def degradation_reward(text: str, distortion_class: str, severity: str) -> float:
    """0.25 for the right class, plus 0.75 when the severity is right too (only then); first answer block.

    Example:
        >>> answer = '<answer>{"distortion_class": "blur", "severity": "slight"}</answer>'
        >>> degradation_reward(answer, "blur", "slight"), degradation_reward(answer, "blur", "serious")
        (1.0, 0.25)
        >>> degradation_reward(answer, "noise", "slight")  # right severity, wrong class: nothing
        0.0
    """
    found_class, found_severity = parse_degradation(text)
    if found_class is None or found_class != distortion_class:
        return 0.0
    return CLASS_CREDIT + (SEVERITY_CREDIT if found_severity == severity else 0.0)


def qinsight_format_reward(text: str) -> float:
    """1.0 when the text is exactly Q-Insight's score/degradation layout (`FORMAT_PATTERN`), else 0.0.

    Example:
        >>> qinsight_format_reward('<think>\\nok\\n</think>\\n<answer>\\n{"rating": 3.1}\\n</answer>')
        1.0
        >>> qinsight_format_reward('<think>ok</think><answer>{"rating": 3.1}</answer>')  # newlines required
        0.0
    """
    return 1.0 if FORMAT_PATTERN.fullmatch(text) else 0.0


def comparison_reward(text: str, result: str) -> float:
    """1.0 when the stripped first answer block is exactly `result`, else 0.0.

    Example:
        >>> comparison_reward("<answer>\\n Image B \\n</answer>", "Image B")
        1.0
        >>> comparison_reward("<answer>B</answer>", "Image B")
        0.0
    """
    return 1.0 if parse_comparison(text) == result else 0.0


def comparison_format_reward(text: str) -> float:
    """1.0 when the text is exactly Q-Insight's comparison layout (`COMPARISON_FORMAT_PATTERN`), else 0.0.

    Example:
        >>> comparison_format_reward("<think>\\nA is sharper\\n</think>\\n<answer>\\nImage A\\n</answer>")
        1.0
    """
    return 1.0 if COMPARISON_FORMAT_PATTERN.fullmatch(text) else 0.0


class TaskReward:
    """A per-row reward for the rows of `tasks`; None for every other row (TRL's contract for "not mine").

    Args:
        name: the name TRL logs the reward under (`rewards/<name>/mean`).
        tasks: the row tasks this reward scores.
        score: the pure function, `score(full_text, row) -> float`; `row` maps each column name to this row's value.
        answer_prefix: text the generation prompt already ends with; put back before each completion, and a
            missing "</answer>" is closed.
    """

    def __init__(
        self, name: str, tasks: tuple[str, ...], score: Callable[[str, dict], float], answer_prefix: str = ""
    ) -> None:
        self.__name__ = name
        self.tasks = tasks
        self.score = score
        self.answer_prefix = answer_prefix

    def __call__(self, completions: Sequence, task: Sequence[str | None] | None = None, **columns) -> list:
        out: list[float | None] = []
        for index, completion in enumerate(completions):
            row_task = (task[index] if task is not None else None) or SCORE_TASK
            if row_task not in self.tasks:
                out.append(None)
                continue
            row = {key: values[index] for key, values in columns.items() if _is_column(values, len(completions))}
            out.append(self.score(self.full_text(completion_text(completion)), row))
        return out

    def full_text(self, completion: str) -> str:
        """The completion as the model's whole answer: the forced prefix put back, an open answer block closed."""
        if not self.answer_prefix:
            return completion
        closing = "" if "</answer>" in completion else "\n</answer>"
        return self.answer_prefix + completion + closing


class ScoreThresholdReward(TaskReward):
    """Q-Insight's score reward on "score" rows (label column `mos`, normalised to [1, 5]).

    Example:
        >>> reward = ScoreThresholdReward(threshold=0.35)
        >>> reward(completions=['<answer>{"rating": 3.3}</answer>', "<answer>x</answer>", "<answer>Image A</answer>"],
        ...        mos=[3.0, 3.0, None], task=["score", "score", "comparison"])
        [1.0, 0.0, None]
    """

    def __init__(self, threshold: float = SCORE_THRESHOLD, answer_prefix: str = "") -> None:
        if threshold <= 0:
            raise ValueError(f"score_threshold must be positive (official 0.35), got {threshold}.")
        self.threshold = threshold
        super().__init__("score_threshold", (SCORE_TASK,), self._score, answer_prefix)

    def _score(self, text: str, row: dict) -> float:
        return score_threshold_reward(text, row["mos"], self.threshold)


class DegradationReward(TaskReward):
    """Q-Insight's degradation reward on "degradation" rows (label columns `distortion_class`, `severity`).

    Example:
        >>> DegradationReward()(completions=['<answer>{"distortion_class": "noise", "severity": "slight"}</answer>'],
        ...                     distortion_class=["noise"], severity=["serious"], task=["degradation"])
        [0.25]
    """

    def __init__(self, answer_prefix: str = "") -> None:
        super().__init__("degradation", (DEGRADATION_TASK,), _degradation, answer_prefix)


class QInsightFormatReward(TaskReward):
    """Q-Insight's format reward on "score" and "degradation" rows.

    Example:
        >>> QInsightFormatReward(answer_prefix="<think>\\n\\n</think>\\n<answer>\\n")(completions=['{"rating": 4}'])
        [1.0]
    """

    def __init__(self, answer_prefix: str = "") -> None:
        super().__init__("qinsight_format", (SCORE_TASK, DEGRADATION_TASK), _format, answer_prefix)


class ComparisonReward(TaskReward):
    """Q-Insight's comparison accuracy on "comparison" rows (label column `result`).

    Example:
        >>> ComparisonReward()(completions=["<answer>\\nSimilar\\n</answer>"], result=["Similar"], task=["comparison"])
        [1.0]
    """

    def __init__(self, answer_prefix: str = "") -> None:
        super().__init__("comparison", (COMPARISON_TASK,), _comparison, answer_prefix)


class ComparisonFormatReward(TaskReward):
    """Q-Insight's comparison format reward on "comparison" rows.

    Example:
        >>> ComparisonFormatReward()(completions=["<answer>Image A</answer>"], task=["comparison"])
        [0.0]
    """

    def __init__(self, answer_prefix: str = "") -> None:
        super().__init__("comparison_format", (COMPARISON_TASK,), _comparison_format, answer_prefix)


# Module-level functions (not lambdas), so the reward objects pickle.
def _degradation(text: str, row: dict) -> float:
    return degradation_reward(text, row["distortion_class"], row["severity"])


def _format(text: str, row: dict) -> float:
    return qinsight_format_reward(text)


def _comparison(text: str, row: dict) -> float:
    return comparison_reward(text, row["result"])


def _comparison_format(text: str, row: dict) -> float:
    return comparison_format_reward(text)


def _is_column(values, length: int) -> bool:
    """A per-row column that TRL passes (a list as long as the batch), not a scalar such as `trainer_state`."""
    return isinstance(values, (list, tuple)) and len(values) == length
