"""Synthetic graded degradations: noise, JPEG compression, blur and darkening at five severities.

A clean photo plus these gives labelled data with a known quality order, for tests, demos, the learning benchmark,
the taught smoke model and the degradation-perception task of Q-Insight (whose class and severity names are the ones
used here); `vq_reward.data.distorted_sets` writes whole labelled sets of them. Only PIL and
numpy are needed. Every result is deterministic: the noise is seeded from the image content and severity.

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

import numpy as np
from PIL import Image, ImageFilter

from vq_reward import prompts
from vq_reward.images import pil_to_rgb


DISTORTIONS = prompts.QINSIGHT_DEGRADATION_CLASSES
SEVERITIES = prompts.QINSIGHT_SEVERITIES  # severity 1..5, in this order
CLEAN_CLASS = prompts.QINSIGHT_NONE  # Q-Insight's name for "no distortion" (class and severity)

# One parameter per severity 1..5, chosen so each step is visibly worse than the one before.
NOISE_SIGMA = (6.0, 14.0, 26.0, 44.0, 72.0)  # Gaussian noise std on the 0..255 scale
JPEG_QUALITY = (40, 20, 10, 5, 2)
BLUR_RADIUS = (0.8, 1.6, 2.8, 4.5, 7.0)  # Gaussian blur radius in pixels
DARKEN_FACTOR = (0.75, 0.55, 0.38, 0.24, 0.12)  # multiplier on every channel


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


def _content_seed(image: Image.Image, severity: int) -> int:
    digest = hashlib.blake2b(image.tobytes(), digest_size=8, key=bytes([severity])).digest()
    return int.from_bytes(digest, "little")


def _check_severity(severity: int, allow_clean: bool) -> None:
    low = 0 if allow_clean else 1
    if not isinstance(severity, int) or not low <= severity <= len(SEVERITIES):
        raise ValueError(f"severity must be an integer in {low}..{len(SEVERITIES)}, got {severity!r}.")
