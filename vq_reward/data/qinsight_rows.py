"""Q-Insight training rows: degradation rows (image, class, severity) and comparison rows (reference, A, B, result).

Both are built from label files of plain objects, so the synthetic set of `vq-reward distort` (its
`distortions.jsonl`) and the official data feed the same code:

- degradation labels: objects with `image`, `distortion_class` ("noise", "compression", "blur", "darken" or
  "null") and `severity` ("slight" .. "catastrophic", or "null"), optionally `reference` (the content, so that a
  split keeps all versions of one content together). `distortions.jsonl` has exactly these; the official
  KADIS-700K metas (`train_dist.json`, a JSON list) have the first three.
- comparison pairs: the official `train_comparison.json` objects `{ref_image, ImageA, ImageB, result}`; or pairs
  drawn from a synthetic set (`synthetic_comparisons`): two distorted versions of one clean crop, with the clean
  crop as the reference; the less degraded one is better ("Image A" / "Image B"), equal severity is "Similar".

Rows are split by reference content with the same rule as `prepare-data` (60/20/20, seeded) and written as JSONL
that `merge-data` can mix with score rows.
"""

import random
import re
from collections.abc import Sequence
from pathlib import Path

from vq_reward.data.jsonl import DataFileError, read_objects
from vq_reward.data.rows import COMPARISON_TASK, DEGRADATION_TASK
from vq_reward.prompts import QINSIGHT_COMPARISON_RESULTS as COMPARISON_RESULTS
from vq_reward.prompts import QINSIGHT_DEGRADATION_CLASSES as DEGRADATION_CLASSES
from vq_reward.prompts import QINSIGHT_NONE as NO_DISTORTION
from vq_reward.prompts import QINSIGHT_SEVERITIES as SEVERITIES


def read_label_objects(path: str | Path) -> list[dict]:
    """Read a JSON list or a JSONL file of objects (errors name the file and line).

    Example:
        >>> from vq_reward.data.distorted_sets import make_distorted_set
        >>> _ = make_distorted_set("examples/images", tmp_path, kinds=("blur",), levels=(1,), crops_per_image=1)
        >>> read_label_objects(tmp_path / "distortions.jsonl")[0]["distortion_class"]
        'null'
    """
    objects = [item for _, item in read_objects(path, hint="`vq-reward distort` writes distortions.jsonl.")]
    if not objects:
        raise DataFileError(f"{path}: no label objects in the file.")
    return objects


def degradation_rows(
    labels: Sequence[dict],
    images_dir: str | Path,
    dataset_name: str,
    *,
    reference_pattern: str | None = None,
    split: dict[str, str] | None = None,
) -> list[dict]:
    """Degradation rows from label objects; classes and severities are checked against Q-Insight's names.

    Args:
        images_dir: the folder the labels' image names are relative to.
        reference_pattern: a regex whose first group, searched in the image name, is the reference content; used
            when the labels have no `reference` (default: each image is its own content).
        split: reference -> "train" / "val" / "test"; None marks every row "all".

    Example:
        >>> rows = degradation_rows([{"image": "a__blur3.png", "distortion_class": "blur", "severity": "obvious"}],
        ...                         "/data", "synthetic", reference_pattern="^(.+)__")
        >>> rows[0]["task"], rows[0]["image"], rows[0]["reference"], rows[0]["split"]
        ('degradation', '/data/a__blur3.png', 'a', 'all')
    """
    root = Path(images_dir).resolve()
    rows = []
    for index, label in enumerate(labels):
        missing = [key for key in ("image", "distortion_class", "severity") if key not in label]
        if missing:
            raise DataFileError(f"label {index} ({label}) lacks {missing}; degradation labels need image, "
                                "distortion_class and severity.")  # fmt: skip
        _check_degradation(index, label["distortion_class"], label["severity"])
        image = _image_name(label["image"], f"label {index}")
        reference = label.get("reference") or _reference(image, reference_pattern)
        row = {
            "id": index,
            "image": str(root / image),
            "dataset_name": dataset_name,
            "task": DEGRADATION_TASK,
            "distortion_class": label["distortion_class"],
            "severity": label["severity"],
            "reference": reference,
            "split": "all" if split is None else split[reference],
        }
        if "level" in label:
            row["level"] = label["level"]
        rows.append(row)
    return rows


def comparison_rows(
    pairs: Sequence[dict], images_dir: str | Path, dataset_name: str, *, split: dict[str, str] | None = None
) -> list[dict]:
    """Comparison rows from the official pair objects `{ref_image, ImageA, ImageB, result}`.

    The reference image's name is the row's `reference` content, so a split keeps its pairs together.

    Example:
        >>> rows = comparison_rows([{"ref_image": "r.png", "ImageA": "a.png", "ImageB": "b.png", "result": "Similar"}],
        ...                        "/d", "DiffIQA")
        >>> rows[0]["images"], rows[0]["result"]
        (['/d/r.png', '/d/a.png', '/d/b.png'], 'Similar')
    """
    root = Path(images_dir).resolve()
    rows = []
    for index, pair in enumerate(pairs):
        missing = [key for key in ("ref_image", "ImageA", "ImageB", "result") if key not in pair]
        if missing:
            raise DataFileError(f"pair {index} ({pair}) lacks {missing}; comparison pairs need ref_image, ImageA, "
                                "ImageB and result.")  # fmt: skip
        rows.append(_comparison_row(index, [pair["ref_image"], pair["ImageA"], pair["ImageB"]], pair["result"],
                                    root, dataset_name, pair["ref_image"], split))  # fmt: skip
    return rows


def synthetic_comparisons(
    labels: Sequence[dict],
    images_dir: str | Path,
    dataset_name: str,
    *,
    pairs_per_reference: int = 8,
    similar_fraction: float = 0.2,
    seed: int = 0,
    split: dict[str, str] | None = None,
) -> list[dict]:
    """Comparison rows drawn from a synthetic distorted set (`distortions.jsonl` of `vq-reward distort`).

    For each reference content: the clean image is the reference, and `pairs_per_reference` pairs of its
    distorted versions (without repeats) are A and B: a `similar_fraction` of them with equal severity levels
    (different kinds; result "Similar"), the rest with different levels, the lower level being better; which one
    is A is drawn at random, so "Image A" and "Image B" are equally frequent (the official data: 40/40/20).

    Example:
        >>> labels = [{"image": f"c__{k}{l}.png", "reference": "c", "distortion_class": k, "level": l}
        ...           for k in ("blur", "noise") for l in (1, 2)] + [{"image": "c__clean.png", "reference": "c",
        ...           "distortion_class": "null", "level": 0}]
        >>> rows = synthetic_comparisons(labels, "/d", "synthetic", pairs_per_reference=5, similar_fraction=0.4)
        >>> sorted(row["result"] for row in rows)
        ['Image A', 'Image A', 'Image A', 'Similar', 'Similar']
    """
    if not 0.0 <= similar_fraction <= 1.0:
        raise ValueError(f"similar_fraction must be in [0, 1], got {similar_fraction}.")
    root = Path(images_dir).resolve()
    by_reference: dict[str, list[dict]] = {}
    for label in labels:
        if not isinstance(label.get("level"), int) or "reference" not in label:
            raise DataFileError(
                f"label {label} lacks an integer level or a reference; use the distortions.jsonl of vq-reward distort."
            )
        by_reference.setdefault(label["reference"], []).append(label)
    rng = random.Random(seed)
    rows: list[dict] = []
    for reference, members in sorted(by_reference.items()):
        clean = [m for m in members if m["level"] == 0]
        if not clean:
            raise DataFileError(f"reference {reference!r} has no clean image (level 0); run distort without "
                                "--no-clean: the clean image is the comparison's reference.")  # fmt: skip
        distorted = sorted((m for m in members if m["level"] > 0), key=lambda m: m["image"])
        pairs = [(a, b) for i, a in enumerate(distorted) for b in distorted[i + 1 :]]
        equal = [p for p in pairs if p[0]["level"] == p[1]["level"]]
        unequal = [p for p in pairs if p[0]["level"] != p[1]["level"]]
        n_similar = round(pairs_per_reference * similar_fraction)
        if n_similar > len(equal) or pairs_per_reference - n_similar > len(unequal):
            raise ValueError(
                f"reference {reference!r} has {len(equal)} equal-level and {len(unequal)} unequal-level pairs, "
                f"too few for {n_similar} 'Similar' and {pairs_per_reference - n_similar} ranked pairs; lower "
                "pairs_per_reference or distort with more kinds and levels."
            )
        chosen = rng.sample(equal, n_similar) + rng.sample(unequal, pairs_per_reference - n_similar)
        for first, second in chosen:
            a, b = (first, second) if rng.random() < 0.5 else (second, first)
            result = "Similar" if a["level"] == b["level"] else "Image A" if a["level"] < b["level"] else "Image B"
            row = _comparison_row(len(rows), [clean[0]["image"], a["image"], b["image"]], result, root,
                                  dataset_name, reference, split)  # fmt: skip
            row["levels"] = [a["level"], b["level"]]
            row["kinds"] = [a["distortion_class"], b["distortion_class"]]
            rows.append(row)
    return rows


def _comparison_row(
    index: int, images: list[str], result: str, root: Path, dataset_name: str, reference: str, split: dict | None
) -> dict:
    if result not in COMPARISON_RESULTS:
        raise DataFileError(f"pair {index}: result {result!r} is not one of {list(COMPARISON_RESULTS)}.")
    return {
        "id": index,
        "images": [str(root / _image_name(image, f"pair {index}")) for image in images],
        "dataset_name": dataset_name,
        "task": COMPARISON_TASK,
        "result": result,
        "reference": reference,
        "split": "all" if split is None else split[reference],
    }


def _check_degradation(index: int, distortion_class: str, severity: str) -> None:
    classes = (*DEGRADATION_CLASSES, NO_DISTORTION)
    if distortion_class not in classes:
        raise DataFileError(f"label {index}: distortion_class {distortion_class!r} is not one of {list(classes)} "
                            "(Q-Insight calls JPEG 'compression').")  # fmt: skip
    allowed = (NO_DISTORTION,) if distortion_class == NO_DISTORTION else SEVERITIES
    if severity not in allowed:
        raise DataFileError(f"label {index}: severity {severity!r} of class {distortion_class!r} is not one of "
                            f"{list(allowed)}.")  # fmt: skip


def _image_name(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise DataFileError(f"{where}: image {value!r} is not a file name.")
    return value


def _reference(image: str, pattern: str | None) -> str:
    if pattern is None:
        return Path(image).stem
    found = re.search(pattern, Path(image).name)
    if found is None or not found.groups():
        raise DataFileError(f"reference pattern {pattern!r} has no group matching the image name {image!r}.")
    return found.group(1)
