"""Labelled sets of synthetic degradations written to a folder: every clean photo (or random crops of it) under
every distortion kind and severity, with `labels.txt` and `distortions.jsonl` (the `vq-reward distort` command).
"""

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vq_reward.data.jsonl import write_atomically, write_jsonl
from vq_reward.distortions import CLEAN_CLASS, DISTORTIONS, distort, quality_label, severity_name
from vq_reward.images import load_image


_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class DistortedImage:
    """One written image of a distorted set.

    Attributes:
        image: file name inside the output folder, e.g. "chelsea__c0__blur3.png".
        source: the clean photo's file name.
        reference: the content it shows (photo stem plus crop index); images of one reference are never split apart.
        distortion_class: one of `DISTORTIONS`, or "null" for the clean image.
        severity: Q-Insight's severity name ("slight".."catastrophic", or "null").
        level: 0 (clean) .. 5.
        mos: `quality_label(level)`.
    """

    image: str
    source: str
    reference: str
    distortion_class: str
    severity: str
    level: int
    mos: float


def make_distorted_set(
    source_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    kinds: tuple[str, ...] = DISTORTIONS,
    levels: tuple[int, ...] = (1, 2, 3, 4, 5),
    include_clean: bool = True,
    crops_per_image: int = 0,
    crop_size: int = 112,
    seed: int = 0,
) -> list[DistortedImage]:
    """Write every clean image of `source_dir` (or random crops of it) under every kind and level into `output_dir`.

    Also writes `labels.txt` ("name mos" per line, the format `vq-reward prepare-data` reads with its default
    `--format plain`) and `distortions.jsonl` (one `DistortedImage` per line).

    Args:
        crops_per_image: 0 uses each whole photo; N > 0 takes N seeded random `crop_size` squares of each photo,
            each its own reference.
        seed: seeds the crop positions.

    Example:
        >>> rows = make_distorted_set("examples/images", tmp_path, kinds=("blur",), levels=(1,), crops_per_image=1)
        >>> rows[1].image, rows[1].mos
        ('astronaut__c0__blur1.png', 4.2)
    """
    if not Path(source_dir).is_dir():
        raise FileNotFoundError(f"{source_dir}: no such folder of clean images.")
    sources = sorted(p for p in Path(source_dir).iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not sources:
        raise FileNotFoundError(f"no images ({', '.join(_IMAGE_SUFFIXES)}) in {source_dir}")
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file; name a folder for the distorted images.")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows: list[DistortedImage] = []
    for source in sources:
        photo = load_image(source)  # the scorer's loader: transparency, 16-bit and EXIF handled as at scoring time
        for crop_index, clean in enumerate(_crops(photo, crops_per_image, crop_size, rng, source)):
            reference = source.stem if crops_per_image == 0 else f"{source.stem}__c{crop_index}"
            variants = [(CLEAN_CLASS, 0)] if include_clean else []
            variants += [(kind, level) for kind in kinds for level in levels]
            for kind, level in variants:
                name = f"{reference}__{'clean' if level == 0 else f'{kind}{level}'}.png"
                (clean if level == 0 else distort(clean, kind, level)).save(out / name)
                rows.append(
                    DistortedImage(
                        name, source.name, reference, kind, severity_name(level), level, quality_label(level)
                    )
                )
    write_atomically(out / "labels.txt", "".join(f"{row.image} {row.mos}\n" for row in rows))
    write_jsonl([asdict(row) for row in rows], out / "distortions.jsonl")
    return rows


def _crops(photo: Image.Image, count: int, size: int, rng: np.random.Generator, source: Path) -> list[Image.Image]:
    if count == 0:
        return [photo]
    if photo.width < size or photo.height < size:
        raise ValueError(f"{source} is {photo.width}x{photo.height}, smaller than crop_size={size}; lower crop_size.")
    crops = []
    for _ in range(count):
        left = int(rng.integers(0, photo.width - size + 1))
        top = int(rng.integers(0, photo.height - size + 1))
        crops.append(photo.crop((left, top, left + size, top + size)))
    return crops
