"""Synthetic graded degradations: noise, JPEG compression, blur and darkening at five severities.

A clean photo plus these gives labelled data with a known quality order, for tests, demos, the learning benchmark
and the degradation-perception task of Q-Insight (whose class and severity names are the ones used here). Only
PIL and numpy are needed. Every result is deterministic: the noise is seeded from the image content and severity.

Quality label: a clean image is 5.0 and each severity step costs 0.8, so severity 1 ("slight") is 4.2 and severity 5
("catastrophic") is 1.0.

    >>> from PIL import Image
    >>> clean = Image.new("RGB", (64, 64), (200, 120, 40))
    >>> distort(clean, "darken", 3).getpixel((0, 0))[0] < 200
    True
    >>> quality_label(3)
    2.6
"""

import hashlib
import io
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from vq_reward import prompts
from vq_reward.data.jsonl import write_atomically, write_jsonl
from vq_reward.images import load_image, pil_to_rgb


DISTORTIONS = prompts.QINSIGHT_DEGRADATION_CLASSES
SEVERITIES = prompts.QINSIGHT_SEVERITIES  # severity 1..5, in this order
CLEAN_CLASS = prompts.QINSIGHT_NONE  # Q-Insight's name for "no distortion" (class and severity)

# One parameter per severity 1..5, chosen so each step is visibly worse than the one before.
NOISE_SIGMA = (6.0, 14.0, 26.0, 44.0, 72.0)  # Gaussian noise std on the 0..255 scale
JPEG_QUALITY = (40, 20, 10, 5, 2)
BLUR_RADIUS = (0.8, 1.6, 2.8, 4.5, 7.0)  # Gaussian blur radius in pixels
DARKEN_FACTOR = (0.75, 0.55, 0.38, 0.24, 0.12)  # multiplier on every channel

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def quality_label(severity: int) -> float:
    """The quality label of an image at `severity` (0 = clean): 5.0 minus 0.8 per step, in [1, 5].

    Example:
        >>> [quality_label(s) for s in range(6)]
        [5.0, 4.2, 3.4, 2.6, 1.8, 1.0]
    """
    _check_severity(severity, allow_clean=True)
    return round(5.0 - 0.8 * severity, 4)


def severity_name(severity: int) -> str:
    """Q-Insight's name of a severity: 1 -> "slight" ... 5 -> "catastrophic", 0 -> "null".

    Example:
        >>> severity_name(5)
        'catastrophic'
    """
    _check_severity(severity, allow_clean=True)
    return CLEAN_CLASS if severity == 0 else SEVERITIES[severity - 1]


def distort(image: Image.Image, kind: str, severity: int) -> Image.Image:
    """Return `image` degraded by `kind` at `severity` (1 slight .. 5 catastrophic), as a new RGB image.

    Args:
        image: any PIL image; it is converted to RGB first and left unchanged.
        kind: one of `DISTORTIONS`: "noise", "compression" (JPEG), "blur" or "darken".
        severity: 1..5.

    Example:
        >>> img = Image.new("RGB", (32, 32), "white")
        >>> distort(img, "blur", 1).size
        (32, 32)
    """
    if kind not in DISTORTIONS:
        raise ValueError(f"unknown distortion {kind!r}; choose one of {', '.join(DISTORTIONS)}.")
    _check_severity(severity, allow_clean=False)
    rgb = pil_to_rgb(image)
    step = severity - 1
    if kind == "noise":
        pixels = np.asarray(rgb, dtype=np.float32)
        rng = np.random.default_rng(_content_seed(rgb, severity))
        noisy = pixels + rng.normal(0.0, NOISE_SIGMA[step], size=pixels.shape)
        return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))
    if kind == "compression":
        buffer = io.BytesIO()
        rgb.save(buffer, format="JPEG", quality=JPEG_QUALITY[step])
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    if kind == "blur":
        return rgb.filter(ImageFilter.GaussianBlur(BLUR_RADIUS[step]))
    pixels = np.asarray(rgb, dtype=np.float32) * DARKEN_FACTOR[step]
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


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
    sources = sorted(p for p in Path(source_dir).iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not sources:
        raise FileNotFoundError(f"no images ({', '.join(_IMAGE_SUFFIXES)}) in {source_dir}")
    out = Path(output_dir)
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


def _content_seed(image: Image.Image, severity: int) -> int:
    digest = hashlib.blake2b(image.tobytes(), digest_size=8, key=bytes([severity])).digest()
    return int.from_bytes(digest, "little")


def _check_severity(severity: int, allow_clean: bool) -> None:
    low = 0 if allow_clean else 1
    if not isinstance(severity, int) or not low <= severity <= len(SEVERITIES):
        raise ValueError(f"severity must be an integer in {low}..{len(SEVERITIES)}, got {severity!r}.")
