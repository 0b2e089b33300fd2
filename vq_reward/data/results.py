"""Score image files into a JSONL file that a rerun resumes: nothing scored is lost, nothing is written twice.

Each image gets one line: its score (and digit mass and probabilities), or its reasoning in thinking mode, or an
error. Lines are appended a chunk at a time and synced to disk; a run killed mid-write leaves at most a torn last
line, which the next run drops before appending. A rerun skips every path already in the file, error lines too
unless `retry_errors` (a fixed file is then tried again and its new line supersedes the error).
"""

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from vq_reward.images import ImageInputError
from vq_reward.scorer import VisualQualityScorer


IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


@dataclass(frozen=True)
class RunSummary:
    scored: int
    errors: int
    skipped: int


def find_images(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Files as given, and the image files under each directory (recursively, sorted)."""
    found: list[str] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS))
        else:
            found.append(str(path))  # missing files get an error line, like unreadable ones
    return list(dict.fromkeys(found))


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
    """Score `paths` into the JSONL file `output`, resuming what an earlier run with the same model began."""
    output = Path(output)
    done = already_done(output, model_name, retry_errors)
    todo = [path for path in paths if path not in done]
    chunk = 4 * (batch_size or scorer.batch_size)  # lines reach the disk at least this often
    scored = errors = 0
    with open(output, "a", encoding="utf-8") as sink, tqdm(total=len(todo), disable=not progress, unit="img") as bar:
        for start in range(0, len(todo), chunk):
            lines = _score_chunk(
                scorer, todo[start : start + chunk], model_name, thinking, batch_size, generate_kwargs
            )
            sink.write("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
            sink.flush()
            os.fsync(sink.fileno())
            errors += sum("error" in line for line in lines)
            scored += sum("error" not in line for line in lines)
            bar.update(len(lines))
    return RunSummary(scored=scored, errors=errors, skipped=len(paths) - len(todo))


def _score_chunk(
    scorer: VisualQualityScorer,
    paths: list[str],
    model_name: str,
    thinking: bool,
    batch_size: int | None,
    generate_kwargs: dict | None,
) -> list[dict]:
    lines: dict[str, dict] = {}
    images, readable = [], []
    for path in paths:
        try:
            images.extend(scorer.prepare(path))
            readable.append(path)
        except ImageInputError as error:
            lines[path] = {"path": path, "model": model_name, "error": str(error)}
    if readable and thinking:
        ratings = scorer.generate(images, thinking=True, batch_size=batch_size, **(generate_kwargs or {}))
        for path, rating in zip(readable, ratings, strict=True):
            lines[path] = {"path": path, "model": model_name, "score": rating.score, "raw_score": rating.raw_score,
                           "reasoning": rating.reasoning, "text": rating.text}  # fmt: skip
    elif readable:
        details = scorer.score_details(images, batch_size=batch_size)
        for i, path in enumerate(readable):
            lines[path] = {"path": path, "model": model_name, "score": round(details.scores[i].item(), 6),
                           "digit_mass": round(details.digit_mass[i].item(), 6),
                           "probs": [round(p, 6) for p in details.probs[i].tolist()]}  # fmt: skip
    return [lines[path] for path in paths]


def already_done(output: Path, model_name: str, retry_errors: bool) -> set[str]:
    """Paths the file already answers for; drops a torn last line left by a killed run."""
    if not output.exists():
        return set()
    raw = output.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    if len(complete) != len(raw):
        with open(output, "r+b") as file:
            file.truncate(len(complete))
    done: set[str] = set()
    for number, text in enumerate(complete.decode("utf-8").splitlines(), start=1):
        try:
            line = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{output}:{number} is not valid JSON ({error}); fix or delete that line.") from error
        if line.get("model") != model_name:
            raise ValueError(
                f"{output} holds results of model {line.get('model')!r}, not {model_name!r}; pass a new --output "
                "or the same --model to resume."
            )
        if "error" in line and retry_errors:
            done.discard(line["path"])
        else:
            done.add(line["path"])
    return done
