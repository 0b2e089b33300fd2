"""Training data: MOS normalisation, the split by reference image, JSONL rows, and the multi-dataset merge.

The official VisualQuality-R1 preparation, made deterministic: MOS min-max normalised to [1, 5] over the whole
label file (before splitting), references shuffled with a fixed seed and cut 60/20/20 with `round()`, so KADID-10K's
81 references become 49/16/16 (6125/2000/2000 images). The official run used one particular shuffle, committed as
split files; `KADID10K_OFFICIAL_SPLIT` reproduces it exactly.

A row (one JSON object per line):

    {"id": 0, "image": "/data/kadid/I01_01_01.png", "dataset_name": "KADID-10K", "task": "score",
     "mos": 4.6336, "mos_raw": 4.57, "std": null, "reference": "I01", "split": "train"}

`task` routes a row to its prompt and rewards. Q-Insight adds two tasks (rows from `vq_reward.data.qinsight_rows`):

    {"id": 1, "image": "/data/synth/chelsea__c0__blur3.png", "dataset_name": "synthetic", "task": "degradation",
     "distortion_class": "blur", "severity": "obvious", "reference": "chelsea__c0", "split": "train"}
    {"id": 2, "images": ["/data/ref.png", "/data/a.png", "/data/b.png"], "dataset_name": "synthetic",
     "task": "comparison", "result": "Image A", "reference": "chelsea__c0", "split": "train"}

One JSONL may mix tasks; each row is checked for its own task's keys (`TASK_KEYS`).
"""

import json
import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from vq_reward.data.jsonl import DataFileError, read_objects, write_jsonl  # noqa: F401 - re-exported
from vq_reward.data.labels import LabelRow
from vq_reward.prompts import (
    QINSIGHT_COMPARISON_RESULTS,
    QINSIGHT_DEGRADATION_CLASSES,
    QINSIGHT_NONE,
    QINSIGHT_SEVERITIES,
)


SPLITS = ("train", "val", "test")
SCORE_TASK = "score"  # a row without a `task` is a score row
DEGRADATION_TASK = "degradation"
COMPARISON_TASK = "comparison"
# The keys each task's rows must have (a comparison row's `images` are the reference, image A and image B).
TASK_KEYS = {
    SCORE_TASK: ("image", "dataset_name", "mos"),
    DEGRADATION_TASK: ("image", "distortion_class", "severity"),
    COMPARISON_TASK: ("images", "result"),
}

# The official KADID-10K split (the committed KADID-10K_{val,test}_set.txt); the other 49 references are train.
KADID10K_OFFICIAL_SPLIT = {
    "val": "I07 I12 I14 I15 I16 I27 I32 I35 I36 I41 I44 I49 I55 I66 I67 I70".split(),
    "test": "I19 I29 I30 I34 I37 I38 I43 I50 I64 I71 I72 I73 I74 I78 I80 I81".split(),
}


def normalize_mos(values: Sequence[float], lower_is_better: bool = False) -> list[float]:
    """Min-max normalise scores to [1, 5] over all of `values`, as the official code does for each label file.

    Args:
        lower_is_better: the file holds DMOS (a higher number is a worse image); it is flipped so 5 is best.
            The official code has no such flag.

    Example:
        >>> [round(v, 4) for v in normalize_mos([1.0, 4.57, 4.93])]
        [1.0, 4.6336, 5.0]
        >>> normalize_mos([0.0, 100.0], lower_is_better=True)
        [5.0, 1.0]
    """
    low, high = min(values), max(values)
    if high == low:
        raise ValueError(f"every MOS is {low}: a constant label file cannot be normalised or ranked.")
    scaled = [(value - low) / (high - low) for value in values]
    return [(1.0 - s if lower_is_better else s) * 4.0 + 1.0 for s in scaled]


def split_references(
    references: Iterable[str], ratios: tuple[float, float, float] = (0.6, 0.2, 0.2), seed: int = 42
) -> dict[str, str]:
    """Assign each reference to "train", "val" or "test": sorted, shuffled with `seed`, cut with `round()`.

    Example:
        >>> split = split_references([f"I{i:02d}" for i in range(1, 82)])
        >>> Counter(split.values()) == Counter({"train": 49, "val": 16, "test": 16})
        True
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(f"ratios must be three non-negative numbers adding up to 1, got {ratios}.")
    names = sorted(set(references))
    random.Random(seed).shuffle(names)
    n_train = round(len(names) * ratios[0])
    n_val = round(len(names) * ratios[1])
    cuts = {"train": names[:n_train], "val": names[n_train : n_train + n_val], "test": names[n_train + n_val :]}
    return {name: split for split, chosen in cuts.items() for name in chosen}


def fixed_split(references: Iterable[str], val: Sequence[str], test: Sequence[str]) -> dict[str, str]:
    """Assign references from explicit val/test lists (everything else is train), e.g. `KADID10K_OFFICIAL_SPLIT`.

    Example:
        >>> fixed_split(["I01", "I07", "I19"], val=["I07"], test=["I19"])
        {'I01': 'train', 'I07': 'val', 'I19': 'test'}
    """
    names = sorted(set(references))
    unknown = (set(val) | set(test)) - set(names)
    if unknown:
        raise ValueError(f"split lists name references that are not in the labels: {sorted(unknown)}")
    return {name: "val" if name in val else "test" if name in test else "train" for name in names}


def build_rows(
    labels: Sequence[LabelRow],
    images_dir: str | Path,
    dataset_name: str,
    *,
    lower_is_better: bool = False,
    split: dict[str, str] | None = None,
) -> list[dict]:
    """Turn label rows into JSONL rows: absolute image path, normalised MOS, reference and split ("all" without one).

    Example:
        >>> from vq_reward.data.labels import LabelRow
        >>> rows = build_rows([LabelRow("a.png", 1.0, None, "a", 1), LabelRow("b.png", 3.0, None, "b", 2)], "/d", "X")
        >>> rows[1]["image"], rows[1]["mos"], rows[1]["split"]
        ('/d/b.png', 5.0, 'all')
    """
    normalized = normalize_mos([row.mos for row in labels], lower_is_better=lower_is_better)
    root = Path(images_dir).resolve()
    return [
        {
            "id": index,
            "image": str(root / row.image),
            "dataset_name": dataset_name,
            "task": "score",
            "mos": round(mos, 6),
            "mos_raw": row.mos,
            "std": row.std,
            "reference": row.reference,
            "split": "all" if split is None else split[row.reference],
        }
        for index, (row, mos) in enumerate(zip(labels, normalized, strict=True))
    ]


def read_jsonl(path: str | Path, required: Sequence[str] | None = None, check_images: bool = False) -> list[dict]:
    """Read a JSONL data file, checking every row; all bad rows are reported at once, as `file:line: what`.

    A row needs the `required` keys (default: the keys of its `task`), a finite number as `mos` (score rows),
    Q-Insight's vocabulary (degradation and comparison rows), and with `check_images` image files that exist and
    whose headers decode (training checks this before its first step, not at step 12). Relative `image` / `images`
    paths are resolved against the file's folder, so a data folder can be moved as a whole.

    Example:
        >>> path = write_jsonl([{"image": "a.png", "dataset_name": "X", "mos": 3.0}], tmp_path / "x_train.jsonl")
        >>> read_jsonl(path)[0]["image"] == str(tmp_path / "a.png")
        True
    """
    path = Path(path)
    rows: list[dict] = []
    problems: list[str] = []
    for number, row in read_objects(path, hint="Write one with `vq-reward prepare-data`."):
        found = _row_problems(path, row, required, check_images)
        problems.extend(f"{path}:{number}: {problem}" for problem in found)
        if not found:
            rows.append(row)
    if problems:
        shown = "\n".join(problems[:50]) + (f"\n... and {len(problems) - 50} more" if len(problems) > 50 else "")
        raise DataFileError(f"{len(problems)} bad rows in {path}; fix or remove them:\n{shown}")
    if not rows:
        raise DataFileError(f"{path}: the data file has no rows.")
    return rows


def _row_problems(path: Path, row: dict, required: Sequence[str] | None, check_images: bool) -> list[str]:
    """What is wrong with one row (resolving its image paths in place); empty when nothing is."""
    task = row.get("task", SCORE_TASK)
    if required is None and task not in TASK_KEYS:
        return [f"unknown task {task!r}; known tasks: {sorted(TASK_KEYS)}"]
    needed = TASK_KEYS[task] if required is None else required
    missing = [key for key in needed if key not in row]
    if missing:
        return [f"missing {missing}; {task} rows need {list(needed)}"]
    problems = []
    if "mos" in needed:
        mos = row["mos"]
        if isinstance(mos, bool) or not isinstance(mos, (int, float)):
            problems.append(f"mos is {json.dumps(mos)}, not a number")
        elif not math.isfinite(mos):
            problems.append(f"mos is {json.dumps(mos)}, not a finite number")
    if task == DEGRADATION_TASK:
        classes, levels = (*QINSIGHT_DEGRADATION_CLASSES, QINSIGHT_NONE), (*QINSIGHT_SEVERITIES, QINSIGHT_NONE)
        if row["distortion_class"] not in classes or row["severity"] not in levels:
            problems.append(f"distortion_class/severity {row['distortion_class']!r}/{row['severity']!r} are not "
                            f"among {list(classes)} / {list(levels)}")  # fmt: skip
    if task == COMPARISON_TASK and row["result"] not in QINSIGHT_COMPARISON_RESULTS:
        problems.append(f"result {row['result']!r} is not one of {list(QINSIGHT_COMPARISON_RESULTS)}")
    if "image" in row:
        if not isinstance(row["image"], str):
            return problems + [f"image must be a path, got {json.dumps(row['image'])}"]
        row["image"] = _resolve(path, row["image"])
    if "images" in row:
        if not isinstance(row["images"], list) or not all(isinstance(i, str) for i in row["images"]):
            return problems + [f"`images` must be a list of paths, got {row['images']!r}"]
        row["images"] = [_resolve(path, image) for image in row["images"]]
    if check_images:
        for image in [row["image"]] if "image" in row else row.get("images", []):
            problem = _image_problem(image)
            if problem:
                problems.append(problem)
    return problems


def _image_problem(image: str) -> str | None:
    if not Path(image).is_file():
        return f"image {image} does not exist"
    try:
        with Image.open(image) as opened:  # the header only: cheap, and catches non-images and damaged headers
            width, height = opened.size
    except (OSError, Image.DecompressionBombError) as error:
        return f"image {image} cannot be read ({error})"
    if min(width, height) < 28:
        return f"image {image} is {width}x{height}; both sides must be at least 28 pixels"
    return None


def _resolve(data_file: Path, image: str) -> str:
    return image if Path(image).is_absolute() else str((data_file.parent / image).resolve())


def merge_rows(sources: Sequence[Sequence[dict]]) -> list[dict]:
    """Concatenate row lists (one per dataset file) and renumber `id`; each row keeps its own `dataset_name`.

    Example:
        >>> merged = merge_rows([[{"id": 0, "dataset_name": "A"}], [{"id": 0, "dataset_name": "B"}]])
        >>> [(row["id"], row["dataset_name"]) for row in merged]
        [(0, 'A'), (1, 'B')]
    """
    merged = [dict(row) for rows in sources for row in rows]
    for index, row in enumerate(merged):
        row["id"] = index
    return merged


@dataclass(frozen=True)
class DataSummary:
    """How many rows each dataset and split holds, for the report after `prepare-data` / `merge-data`."""

    counts: dict[str, dict[str, int]]

    @classmethod
    def of(cls, rows: Iterable[dict]) -> "DataSummary":
        counts: dict[str, Counter] = {}
        for row in rows:
            task = row.get("task", SCORE_TASK)
            name = str(row.get("dataset_name")) + ("" if task == SCORE_TASK else f" ({task})")
            counts.setdefault(name, Counter())[row.get("split", "all")] += 1
        return cls({name: dict(counter) for name, counter in counts.items()})

    def __str__(self) -> str:
        return "\n".join(
            f"  {name}: " + ", ".join(f"{split} {count}" for split, count in sorted(splits.items()))
            for name, splits in self.counts.items()
        )
