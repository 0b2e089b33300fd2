"""Scoring image files into a results file (`vq_reward.data.results_file`): chunks of lines appended and synced as
they are scored, each image's score, standard deviation, digit probabilities and masses, its reasoning in thinking
mode, or an error. `run_identity` is what the file's header records about the run.
"""

import hashlib
import os
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from vq_reward.data.files import IMAGE_EXTENSIONS, find_images  # noqa: F401 - re-exported
from vq_reward.data.results_file import HEADER_KEY, ResultsFile, ResultsFileError  # noqa: F401 - re-exported
from vq_reward.images import ImageInputError
from vq_reward.scorer import VisualQualityScorer


@dataclass(frozen=True)
class RunSummary:
    """What a run did: images scored, images that failed (with the first reasons), images already in the file."""

    scored: int
    errors: int
    skipped: int
    first_errors: list[str] = field(default_factory=list)


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
    paths = [os.path.realpath(path) for path in paths]
    with ResultsFile(output) as results:
        results.start(run_identity(scorer, model_name, thinking, generate_kwargs))
        done = results.done(retry_errors)
        todo = [path for path in dict.fromkeys(paths) if path not in done]
        chunk = 4 * (batch_size or scorer.batch_size)  # lines reach the disk at least this often
        scored = errors = 0
        first_errors: list[str] = []
        with tqdm(total=len(todo), disable=not progress, unit="img") as bar:
            for start in range(0, len(todo), chunk):
                lines = _score_chunk(scorer, todo[start : start + chunk], thinking, batch_size, generate_kwargs)
                results.append(lines)
                failed = [line for line in lines if "error" in line]
                first_errors.extend(line["error"] for line in failed[: 5 - len(first_errors)])
                errors += len(failed)
                scored += len(lines) - len(failed)
                bar.update(len(lines))
    return RunSummary(scored=scored, errors=errors, skipped=len(paths) - len(todo), first_errors=first_errors)


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
        details = scorer.score_details(images, batch_size=batch_size)
        for i, path in enumerate(readable):
            # Every digit of the float32 value: a rerun that gets the same bits writes the same line.
            lines[path] = {"path": path, "score": details.scores[i].item(), "std": details.std[i].item(),
                           "digit_mass": details.digit_mass[i].item(), "probs": details.probs[i].tolist()}  # fmt: skip
            if details.dot_mass is not None:
                lines[path]["dot_mass"] = details.dot_mass[i].tolist()
    return [lines[path] for path in paths]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
