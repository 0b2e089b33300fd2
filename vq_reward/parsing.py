"""The one parser of generated answers, shared by the scorer's generate path and the training rewards.

Rule (the official one): take the text inside the *last* `<answer>...</answer>`, then the *first* number in it
(a minus sign is kept, so "-1" is reported as -1 and not silently as 1). The parser never invents a score: an
answer with no number is `score=None`. Range handling is left to the caller: the scorer clips into [1, 5] and
keeps the raw value, the training reward uses the raw value as the official code does.
"""

import re
from dataclasses import dataclass


_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


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
