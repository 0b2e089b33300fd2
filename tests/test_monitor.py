"""HackingMonitor: each synthetic kind of hacking raises its statistic and a warning while the reward rises;
unchanged images, or a drift while the reward stays flat, do not warn."""

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from vq_reward.rewards.monitor import STATISTICS, HackingMonitor, image_statistics


PHOTOS = Path(__file__).resolve().parents[1] / "examples" / "images"


@pytest.fixture(scope="module")
def crops() -> list[Image.Image]:
    """Eight 128-pixel crops of the sample photos, two per photo."""
    found = []
    for path in sorted(PHOTOS.glob("*.jpg"))[:4]:
        photo = Image.open(path).convert("RGB")
        for left in (0, photo.width // 2):
            found.append(photo.crop((left, 40, left + 128, 168)))
    return found


def sharpened(image: Image.Image) -> Image.Image:
    return image.filter(ImageFilter.UnsharpMask(radius=2, percent=300, threshold=0))


def saturated(image: Image.Image) -> Image.Image:
    return ImageEnhance.Color(image).enhance(2.5)


def blocky(image: Image.Image) -> Image.Image:
    """A faint 8-pixel grid, the kind of pattern a generator learns to please a reward with."""
    pixels = np.asarray(image, dtype=np.int16).copy()
    pixels[:, 3::8] += 12
    pixels[3::8, :] += 12
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def run(monitor: HackingMonitor, crops, change, reward_gain: float, steps: int = 8) -> dict[str, float]:
    """Baseline steps on the crops, then steps on changed crops with the reward raised by `reward_gain`."""
    spread = np.random.default_rng(0).normal(3.0, 0.3, len(crops))
    logs = {}
    for step in range(steps):
        late = step >= monitor.baseline_steps
        images = [change(image) if late else image for image in crops]
        logs = monitor.update(step, images, spread + (reward_gain if late else 0.0))
    return logs


@pytest.mark.parametrize(
    "change, statistic", [(sharpened, "high_frequency"), (saturated, "colourfulness"), (blocky, "blockiness")]
)
def test_each_hack_raises_its_statistic_and_a_warning(crops, change, statistic, caplog):
    monitor = HackingMonitor(baseline_steps=4)
    with caplog.at_level(logging.WARNING, logger="vq_reward.monitor"):
        logs = run(monitor, crops, change, reward_gain=0.5)
    assert logs[f"monitor/{statistic}_drift"] >= monitor.drift_threshold
    assert logs["monitor/warning"] == 1.0
    assert any(statistic in message for _, message in monitor.warnings)
    assert any(statistic in record.getMessage() for record in caplog.records)


def test_saturating_raises_the_saturation_statistic(crops):
    """Mean saturation rises too, though by less than one baseline std here: these eight crops range from grey to
    colourful, so colourfulness is the statistic that warns (above)."""
    monitor = HackingMonitor(baseline_steps=4)
    logs = run(monitor, crops, saturated, reward_gain=0.5)
    assert logs["monitor/saturation_drift"] > 0.3


def test_unchanged_images_do_not_warn_even_when_the_reward_rises(crops):
    monitor = HackingMonitor(baseline_steps=4)
    logs = run(monitor, crops, lambda image: image, reward_gain=0.5)
    assert logs["monitor/warning"] == 0.0 and monitor.warnings == []
    assert all(abs(logs[f"monitor/{name}_drift"]) < 1e-9 for name in STATISTICS)


def test_a_drift_without_a_reward_rise_does_not_warn(crops):
    monitor = HackingMonitor(baseline_steps=4)
    logs = run(monitor, crops, sharpened, reward_gain=0.0)
    assert logs["monitor/high_frequency_drift"] >= 1.0
    assert logs["monitor/warning"] == 0.0 and monitor.warnings == []


def test_a_fall_is_reported_but_not_warned(crops):
    """A denoiser or deblocker lowers these statistics honestly: a fall is logged as a negative drift only."""
    monitor = HackingMonitor(baseline_steps=4)
    logs = run(monitor, crops, lambda image: image.filter(ImageFilter.GaussianBlur(2)), reward_gain=0.5)
    assert logs["monitor/high_frequency_drift"] < -1.0
    assert logs["monitor/warning"] == 0.0


def test_clipping_is_counted(crops):
    bright = [ImageEnhance.Brightness(image).enhance(2.0) for image in crops]
    before, after = image_statistics(crops)["clipped"], image_statistics(bright)["clipped"]
    assert after.mean() > before.mean() + 0.05


def test_every_input_kind_gives_the_same_statistics(crops):
    import torch

    uint8 = np.stack([np.asarray(image) for image in crops])
    tensor = torch.from_numpy(uint8).permute(0, 3, 1, 2).float() / 255
    from_pil, from_numpy, from_torch = image_statistics(crops), image_statistics(uint8), image_statistics(tensor)
    for name in STATISTICS:
        np.testing.assert_allclose(from_pil[name], from_numpy[name], rtol=1e-9)
        np.testing.assert_allclose(from_torch[name], from_numpy[name], rtol=1e-5, atol=1e-7)
