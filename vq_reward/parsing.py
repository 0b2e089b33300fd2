"""The parsers of generated answers: one per model family, shared by inference and the training rewards.

VisualQuality-R1 (`parse_answer`, the official rule): the text inside the *last* `<answer>...</answer>`, then the
*first* number in it (a minus sign is kept, so "-1" is reported as -1 and not silently as 1).

Q-Insight (`parse_rating`, `parse_degradation`, `parse_comparison`, its official rules): the *first* answer block,
then `"rating": x`, the `"distortion_class"` / `"severity"` pair, or one of "Image A" / "Image B" / "Similar".

A parser never invents a value: an answer without one gives `None`. Range handling is left to the caller: the scorer
clips into [1, 5] and keeps the raw value, the training rewards use the raw value as the official code does.
"""

import re
from dataclasses import dataclass

from vq_reward.prompts import QINSIGHT_COMPARISON_RESULTS


_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_RATING = re.compile(r'"rating"\s*:\s*([\d\.]+)')
_CLASS_AND_SEVERITY = re.compile(r'"distortion_class"\s*:\s*"([^"]+)".*?"severity"\s*:\s*"([^"]+)"', re.DOTALL)


@dataclass(frozen=True)
class ParsedAnswer:
    """What a completion says.

    Attributes:
        score: the first number in the last `<answer>` block, unclipped; `None` when there is none.
        answer: the stripped text of the last `<answer>` block; `None` when the tags are missing.
        reasoning: the stripped text of the last `<think>` block; `None` when the tags are missing.
    """

    score: float | None
    answer: str | None
    reasoning: str | None


def parse_answer(text: str, *, fallback_to_text: bool = False) -> ParsedAnswer:
    """Parse a completion into score, answer and reasoning.

    Args:
        text: the decoded completion.
        fallback_to_text: without `<answer>` tags, look for the number in the whole text (what the official
            training code does; it then reads e.g. the "1" of "between 1 and 5" in a truncated reasoning).
            Off by default: no tags, no score.

    Example:
        >>> parse_answer("<think>sharp, little noise</think> <answer>3.75</answer>")
        ParsedAnswer(score=3.75, answer='3.75', reasoning='sharp, little noise')
        >>> parse_answer("no tags here 4").score is None
        True
    """
    answers = _ANSWER.findall(text)
    thoughts = _THINK.findall(text)
    answer = answers[-1].strip() if answers else None
    reasoning = thoughts[-1].strip() if thoughts else None
    searched = answer if answer is not None else (text if fallback_to_text else "")
    number = _NUMBER.search(searched)
    return ParsedAnswer(score=float(number.group()) if number else None, answer=answer, reasoning=reasoning)


def parse_score(text: str, *, fallback_to_text: bool = False) -> float | None:
    """The score of a completion, or `None` when it has none (see `parse_answer`).

    Example:
        >>> parse_score("<answer>2</answer><answer> 4.5 </answer>")
        4.5
    """
    return parse_answer(text, fallback_to_text=fallback_to_text).score


def first_answer(text: str) -> str | None:
    """The text of the first `<answer>` block (Q-Insight's rewards read that one), unstripped; `None` without one."""
    found = _ANSWER.search(text)
    return found.group(1) if found else None


def parse_rating(text: str) -> float | None:
    """The `"rating": x` of the first `<answer>` block (Q-Insight's score reward reads it so), else `None`.

    Only digits and dots are read, as Q-Insight's regex does: a negative or malformed number ("4.5.1") is `None`.

    Example:
        >>> parse_rating('<think>\\nsharp\\n</think>\\n<answer>\\n{"rating": 4.25}\\n</answer>')
        4.25
        >>> parse_rating('<answer>{"rating": 2}</answer><answer>{"rating": 5}</answer>')
        2.0
        >>> parse_rating('{"rating": 3}') is None  # no answer block
        True
    """
    answer = first_answer(text)
    found = _RATING.search(answer) if answer is not None else None
    if found is None:
        return None
    try:
        return float(found.group(1))
    except ValueError:  # "4.5.1" or "." match the character class but are no number
        return None


def parse_degradation(text: str) -> tuple[str | None, str | None]:
    """Class and severity from the first `<answer>` block, whitespace inside the quotes stripped, else `(None, None)`.

    The official reward strips them too, so `" blur "` counts as "blur".

    Example:
        >>> parse_degradation('<answer>{"distortion_class": " blur ", "severity": "slight"}</answer>')
        ('blur', 'slight')
    """
    answer = first_answer(text)
    found = _CLASS_AND_SEVERITY.search(answer) if answer is not None else None
    return (found.group(1).strip(), found.group(2).strip()) if found else (None, None)


def parse_comparison(text: str) -> str | None:
    """ "Image A" / "Image B" / "Similar" when the stripped first `<answer>` block is exactly one of them, else `None`.

    Example:
        >>> parse_comparison("<answer>\\n Image B \\n</answer>"), parse_comparison("<answer>B</answer>")
        ('Image B', None)
    """
    answer = first_answer(text)
    result = answer.strip() if answer is not None else None
    return result if result in QINSIGHT_COMPARISON_RESULTS else None
