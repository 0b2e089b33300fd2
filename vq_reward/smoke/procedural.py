"""Procedural training images for the taught smoke model: photo-like content made from a seed (colour fields with
natural 1/f spectra, shapes, stripes and checkers, text-like marks, fine textures), each through a mild "camera" and
then degraded at a known severity. Nothing is downloaded and no data file is read.
"""

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from vq_reward.distortions import DISTORTIONS, distort, quality_label


IMAGE_SIDE = 112  # training images, and the default crop of `make_distorted_set`: 16 image tokens


def training_images(
    bases: int, variants: int, seed: int, side: int = IMAGE_SIDE
) -> tuple[list[Image.Image], np.ndarray]:
    """`bases` procedural images, each in `variants` copies with a random distortion kind and severity 0..5.

    Returns the images (all `side` x `side`) and their quality labels (`distortions.quality_label` of the severity).
    A third of the bases are drawn larger and shrunk after distortion, as a whole photo is shrunk into the pixel
    budget; every base first goes through a mild "camera" (slight blur, sensor noise, JPEG at quality 70..95), as the
    clean photos a user scores do.
    """
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(bases):
        scale = rng.uniform(1.3, 2.5) if rng.random() < 1 / 3 else 1.0
        drawn = int(round(side * scale))
        clean = _camera(rng, procedural_image(rng, drawn))
        for severity in rng.integers(0, 6, variants):
            kind = DISTORTIONS[int(rng.integers(0, len(DISTORTIONS)))]
            image = clean if severity == 0 else distort(clean, kind, int(severity))
            if drawn != side:
                image = image.resize((side, side), Image.Resampling.BICUBIC)
            images.append(image)
            labels.append(quality_label(int(severity)))
    return images, np.array(labels)


def _camera(rng: np.random.Generator, image: Image.Image) -> Image.Image:
    """The mild imperfections of a good photo, which still counts as clean."""
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.6)))
    if rng.random() < 0.3:
        pixels = np.asarray(image, dtype=np.float32) + rng.normal(
            0.0, rng.uniform(0.5, 2.5), (image.height, image.width, 3)
        )
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    if rng.random() < 0.6:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(rng.integers(70, 96)))
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return image


def procedural_image(rng: np.random.Generator, side: int) -> Image.Image:
    """A seeded photo-like test image: colour fields, shapes, stripes, text-like marks or fine texture."""
    choice = rng.random()
    if choice < 0.35:
        pixels = _draw_shapes(rng, _colour_field(rng, side), int(rng.integers(2, 12)))
    elif choice < 0.55:
        pixels = _colour_field(rng, side)
    elif choice < 0.7:
        pixels = _stripes(rng, side)
        if rng.random() < 0.5:
            pixels = _draw_shapes(rng, pixels, int(rng.integers(1, 5)))
    elif choice < 0.85:
        pixels = _text_marks(rng, _colour_field(rng, side) * 0.3 + 0.6)
    else:
        texture = _spectral_field(rng, side, rng.uniform(0.3, 0.9))
        pixels = np.clip(rng.uniform(0.3, 0.6, 3) + 0.15 * texture[..., None] * rng.uniform(0.6, 1.4, 3), 0, 1)
        if rng.random() < 0.5:
            pixels = _draw_shapes(rng, pixels, int(rng.integers(1, 5)))
    # Photographic tone: stretched so the brightest pixels are near white (darkening is then visible), random gamma.
    low, high = np.percentile(pixels[::4, ::4], [1, 99])
    pixels = (pixels - low) / max(high - low, 1e-3)
    pixels = np.clip(pixels * rng.uniform(0.75, 1.0) + rng.uniform(0, 0.1), 0, 1) ** rng.uniform(0.7, 1.4)
    return Image.fromarray(np.rint(pixels * 255).astype(np.uint8))


def _spectral_field(rng: np.random.Generator, side: int, alpha: float) -> np.ndarray:
    """Zero-mean unit-std random field with amplitude spectrum 1/f^alpha (natural images: alpha ~ 1)."""
    fy = np.fft.fftfreq(side)[:, None]
    fx = np.fft.rfftfreq(side)[None, :]
    radius = np.sqrt(fx * fx + fy * fy)
    radius[0, 0] = 1.0
    amplitude = radius**-alpha
    amplitude[0, 0] = 0.0
    spectrum = amplitude * (rng.normal(size=amplitude.shape) + 1j * rng.normal(size=amplitude.shape))
    field = np.fft.irfft2(spectrum, s=(side, side))
    return (field - field.mean()) / (field.std() + 1e-8)


def _colour_field(rng: np.random.Generator, side: int) -> np.ndarray:
    luma = _spectral_field(rng, side, rng.uniform(0.9, 2.0))
    chroma = [_spectral_field(rng, side, rng.uniform(1.2, 2.5)) for _ in range(2)]
    tint = rng.normal(0, 0.15, (2, 3))
    pixels = rng.uniform(0.25, 0.75, 3) + 0.18 * rng.uniform(0.4, 1.2) * luma[..., None]
    pixels = pixels + 0.09 * sum(c[..., None] * t for c, t in zip(chroma, tint, strict=True))
    return np.clip(pixels, 0, 1)


def _draw_shapes(rng: np.random.Generator, pixels: np.ndarray, count: int) -> np.ndarray:
    side = pixels.shape[0]
    image = Image.fromarray(np.rint(pixels * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(count):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = rng.uniform(-0.2, 1.0, 2) * side
        w, h = rng.uniform(0.05, 0.6, 2) * side
        box = [x0, y0, x0 + w, y0 + h]
        shape = int(rng.integers(0, 4))
        if shape == 0:
            draw.ellipse(box, fill=colour)
        elif shape == 1:
            draw.rectangle(box, fill=colour)
        elif shape == 2:
            points = [tuple(p) for p in rng.uniform(0, 1, (int(rng.integers(3, 7)), 2)) * side]
            draw.polygon(points, fill=colour)
        else:
            ends = [tuple(rng.uniform(0, 1, 2) * side), tuple(rng.uniform(0, 1, 2) * side)]
            draw.line(ends, fill=colour, width=int(rng.integers(1, 6)))
    return np.asarray(image, dtype=np.float64) / 255


def _stripes(rng: np.random.Generator, side: int) -> np.ndarray:
    y, x = np.mgrid[0:side, 0:side] / side
    angle = rng.uniform(0, np.pi)
    frequency = rng.uniform(2, 20)
    wave = np.sin(2 * np.pi * frequency * (np.cos(angle) * x + np.sin(angle) * y))
    if rng.random() < 0.5:
        wave = np.sign(wave)
    if rng.random() < 0.3:  # checkerboard
        wave = wave * np.sign(np.sin(2 * np.pi * frequency * (np.cos(angle) * y - np.sin(angle) * x)))
    first, second = rng.uniform(0, 1, (2, 3))
    weight = (wave[..., None] + 1) / 2
    return first * weight + second * (1 - weight)


def _text_marks(rng: np.random.Generator, pixels: np.ndarray) -> np.ndarray:
    """Rows of small dark blocks, like lines of text."""
    side = pixels.shape[0]
    image = Image.fromarray(np.rint(pixels * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    height = int(rng.integers(3, 12))
    y = int(rng.integers(0, height * 2))
    while y < side:
        x = int(rng.integers(0, side // 4))
        while x < side:
            width = int(rng.integers(2, height + 1))
            if rng.random() < 0.8:
                draw.rectangle([x, y, x + width, y + height], fill=colour)
            x += width + int(rng.integers(1, 4))
        y += height + int(rng.integers(2, height + 3))
    return np.asarray(image, dtype=np.float64) / 255
