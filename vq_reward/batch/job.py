"""Scoring image files into a results file (`vq_reward.batch.results_file`, which documents the format): chunks of
lines appended and synced as they are scored, each image's score, standard deviation, digit probabilities and
masses, its reasoning in thinking mode, or an error. `run_identity` is what the run file beside it records.

A score is a finite number or an error line: an image the model scores NaN (a broken checkpoint, a server answering
NaN) gets an error line that `--retry-errors` retries, and the other images of its batch are still scored.
"""

import hashlib
import os
from dataclasses import dataclass, field

from PIL import Image
from tqdm.auto import tqdm

from vq_reward.batch.results_file import ResultsFile, is_finite, non_finite_line
from vq_reward.images import ImageInputError
from vq_reward.scorer import NonFiniteScoreError, VisualQualityScorer


@dataclass(frozen=True)
class RunSummary:
    """What a run did: images scored, images that failed (with the first reasons), images already in the file;
    and the score in the file of every image given (this run's and earlier runs'), by resolved path."""

    scored: int
    errors: int
    skipped: int
    first_errors: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)


def run_identity(scorer: VisualQualityScorer, model_name: str, thinking: bool, generate_kwargs: dict | None) -> dict:
    """What a results file records about the run that produced it; a rerun must match it to append."""
    return {
        "model": model_name,
        "weights": scorer.backend.fingerprint(),
        "min_pixels": scorer.min_pixels,
        "max_pixels": scorer.max_pixels,
        "prompt": _digest(scorer.prompt(thinking) + ("" if thinking else scorer.answer_prefix)),
        "mode": "thinking" if thinking else "score",
        "readout": None if thinking else scorer.readout,
        "exif_transpose": scorer.exif_transpose,
        "generate": dict(sorted((generate_kwargs or {}).items())) if thinking else None,
    }


def score_files(
    scorer: VisualQualityScorer,
    paths: list[str],
    output: str | os.PathLike,
    *,
    model_name: str,
    thinking: bool = False,
    batch_size: int | None = None,
    retry_errors: bool = False,
    progress: bool = True,
    generate_kwargs: dict | None = None,
) -> RunSummary:
    """Score `paths` into the results file `output`, resuming what an earlier run of the same settings began.

    Returns the summary; failures are result lines (`{"path", "error"}`), not exceptions.
    """
    paths = list(dict.fromkeys(os.path.realpath(path) for path in paths))
    with ResultsFile(output) as results:
        results.start(run_identity(scorer, model_name, thinking, generate_kwargs))
        done = results.done(retry_errors)
        todo = [path for path in paths if path not in done]
        chunk = 4 * (batch_size or scorer.batch_size)  # lines reach the disk at least this often
        scored = errors = 0
        first_errors: list[str] = []
        # The bar clears itself when done (the summary says what was scored), and shows only when there is work.
        with tqdm(total=len(todo), disable=not (progress and todo), leave=False, unit="img") as bar:
            for start in range(0, len(todo), chunk):
                lines = _score_chunk(scorer, todo[start : start + chunk], thinking, batch_size, generate_kwargs)
                results.append(lines)
                failed = [line for line in lines if "error" in line]
                first_errors.extend(line["error"] for line in failed[: 5 - len(first_errors)])
                errors += len(failed)
                scored += len(lines) - len(failed)
                bar.update(len(lines))
        in_file = results.scores()
    return RunSummary(scored=scored, errors=errors, skipped=len(paths) - len(todo), first_errors=first_errors,
                      scores={path: in_file[path] for path in paths if path in in_file})  # fmt: skip


def _score_chunk(
    scorer: VisualQualityScorer, paths: list[str], thinking: bool, batch_size: int | None, generate_kwargs: dict | None
) -> list[dict]:
    lines: dict[str, dict] = {}
    images, readable = [], []
    for path in paths:
        try:
            images.extend(scorer.prepare(path))
            readable.append(path)
        except ImageInputError as error:
            lines[path] = {"path": path, "error": str(error)}
    if readable and thinking:
        ratings = scorer.generate(images, thinking=True, batch_size=batch_size, **(generate_kwargs or {}))
        for path, rating in zip(readable, ratings, strict=True):
            lines[path] = {"path": path, "score": rating.score, "raw_score": rating.raw_score,
                           "reasoning": rating.reasoning, "text": rating.text}  # fmt: skip
    elif readable:
        lines.update(zip(readable, _score_lines(scorer, readable, images, batch_size), strict=True))
    return [lines[path] if is_finite(lines[path]) else non_finite_line(path) for path in paths]


def _score_lines(
    scorer: VisualQualityScorer, paths: list[str], images: list[Image.Image], batch_size: int | None
) -> list[dict]:
    """One score line per image, NaN included (`_score_chunk` makes those error lines)."""
    try:
        details = scorer.score_details(images, batch_size=batch_size)
    except NonFiniteScoreError as error:  # it carries the figures of the whole call: the others are good scores
        if error.details is None:
            raise
        details = error.details
    lines = []
    for i, path in enumerate(paths):
        # Every digit of the float32 value: a rerun that gets the same bits writes the same line.
        line = {"path": path, "score": details.scores[i].item(), "std": details.std[i].item(),
                "digit_mass": details.digit_mass[i].item(), "probs": details.probs[i].tolist()}  # fmt: skip
        if details.dot_mass is not None:
            line["dot_mass"] = details.dot_mass[i].tolist()
        lines.append(line)
    return lines


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
