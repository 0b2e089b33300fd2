"""`HackingMonitor`: watch a training loop for a quality reward being gamed, from cheap image statistics.

Generators exploit quality rewards in recognisable ways: over-sharpening and invented texture, over-saturation and
clipped highlights, grid artifacts. The monitor tracks the reward beside statistics that such hacking moves and that
the reward model does not compute itself (pure numpy; measured 14 ms per 224x224 image on a shared, busy core):

| statistic | what it is | hacking moves it |
|---|---|---|
| `high_frequency` | log10 of the mean squared Laplacian of luminance | up: over-sharpening, invented texture, noise |
| `saturation` | mean HSV saturation, (max - min) / max over the channels | up: over-saturated colour |
| `clipped` | fraction of channel values at 0 or 255 (within 1/255) | up: blown highlights, crushed shadows |
| `blockiness` | mean step at the strongest column/row phase mod 8 over the other phases' | up: 8-pixel grids |
| `colourfulness` | Hasler and Suesstrunk's colourfulness (opponent channels, 0..1 scale) | up: garish colour |

The first `baseline_steps` updates set the baseline: each statistic's mean and per-image standard deviation over
all their images (and the reward's). After that, each update computes every statistic's drift in baseline
standard deviations, `(batch mean - baseline mean) / max(baseline std, minimum std)`, with a per-statistic minimum
std (`MIN_STD`) so a statistic that did not vary at first (no clipped pixels) does not alarm at its first move. A
statistic **drifts** when its drift is at least `drift_threshold` (default 1.0: the batch mean moved by a whole
baseline spread of single images, about 2.8 standard errors of a batch of 8). Only rises count: hacking raises
these statistics, while honest improvements can lower them (a denoiser lowers `high_frequency`, a deblocker
`blockiness`); falls are reported, not warned. The monitor **warns** when a statistic drifts while the reward has
risen by at least `reward_threshold` (default 0.25) baseline standard deviations (the reward's minimum std: 0.01):
a `logging` warning on the "vq_reward.monitor" logger the first time each statistic drifts, and
`"monitor/warning": 1.0` in the returned dict every step one does.

It cannot tell hacking from a legitimate change the reward likes: a warning means "look at the samples".

Example:
    >>> monitor = HackingMonitor(baseline_steps=2)
    >>> images = np.random.default_rng(0).uniform(0.2, 0.8, (4, 64, 64, 3))
    >>> for step in range(3):
    ...     logs = monitor.update(step, images, rewards=[3.0, 3.1, 2.9, 3.0])
    >>> logs["monitor/warning"], round(logs["monitor/high_frequency_drift"], 3)
    (0.0, 0.0)
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image


logger = logging.getLogger("vq_reward.monitor")

STATISTICS = ("high_frequency", "saturation", "clipped", "blockiness", "colourfulness")
# The smallest baseline spread each statistic's drift is measured in (its units: log10, fraction, ratio, 0..1).
MIN_STD = {
    "high_frequency": 0.05,
    "saturation": 0.02,
    "clipped": 0.005,
    "blockiness": 0.02,
    "colourfulness": 0.02,
    "reward": 0.01,
}
_BLOCK = 8  # JPEG's block size: grid artifacts of generators and codecs repeat every 8 pixels


def image_statistics(images: "np.ndarray | torch.Tensor | Sequence[Image.Image]") -> dict[str, np.ndarray]:
    """Each statistic of `STATISTICS` for each image: `{name: (N,) float32}`.

    Args:
        images: float torch `(N, 3, H, W)` in [0, 1], numpy `(N, H, W, 3)` uint8 or float in [0, 1], or a list of
            PIL images.

    Example:
        >>> flat = np.full((1, 32, 32, 3), 0.5)
        >>> {name: round(float(value[0]), 3) for name, value in image_statistics(flat).items()}
        {'high_frequency': -8.0, 'saturation': 0.0, 'clipped': 0.0, 'blockiness': 1.0, 'colourfulness': 0.0}
    """
    per_batch = [_statistics(pixels) for pixels in _float_nhwc_batches(images)]
    return {name: np.concatenate([values[name] for values in per_batch]) for name in STATISTICS}


def _statistics(pixels: np.ndarray) -> dict[str, np.ndarray]:
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    luminance = 0.299 * red + 0.587 * green + 0.114 * blue
    laplacian = (
        luminance[:, :-2, 1:-1] + luminance[:, 2:, 1:-1] + luminance[:, 1:-1, :-2] + luminance[:, 1:-1, 2:]
        - 4 * luminance[:, 1:-1, 1:-1]
    )  # fmt: skip
    brightest, darkest = pixels.max(axis=-1), pixels.min(axis=-1)
    saturation = np.where(brightest > 0, (brightest - darkest) / np.maximum(brightest, 1e-12), 0.0)
    clipped = ((pixels <= 0.5 / 255) | (pixels >= 254.5 / 255)).mean(axis=(1, 2, 3))
    red_green, yellow_blue = red - green, 0.5 * (red + green) - blue
    colourfulness = np.sqrt(red_green.var(axis=(1, 2)) + yellow_blue.var(axis=(1, 2))) + 0.3 * np.sqrt(
        red_green.mean(axis=(1, 2)) ** 2 + yellow_blue.mean(axis=(1, 2)) ** 2
    )
    return {
        "high_frequency": np.log10(np.square(laplacian).mean(axis=(1, 2)) + 1e-8),
        "saturation": saturation.mean(axis=(1, 2)),
        "clipped": clipped,
        "blockiness": (_blockiness(luminance, axis=2) + _blockiness(luminance, axis=1)) / 2,
        "colourfulness": colourfulness,
    }


@dataclass
class HackingMonitor:
    """Feed it each step's images and rewards; it returns a dict to log and warns when hacking looks likely.

    See the module docstring for the statistics and the rule. Thresholds:

    Args:
        baseline_steps: updates that set the baseline (no warnings during them).
        drift_threshold: a statistic drifts when its batch mean rose by this many baseline per-image stds.
        reward_threshold: the reward counts as risen when its batch mean rose by this many baseline per-image stds.

    Use: `logs = monitor.update(step, images, rewards)` every step (or every few), then
    `writer.add_scalars(...)` / `wandb.log(logs, step=step)`. `monitor.warnings` keeps every warning as
    `(step, message)`, the first time each statistic drifts.
    """

    baseline_steps: int = 5
    drift_threshold: float = 1.0
    reward_threshold: float = 0.25
    warnings: list[tuple[int, str]] = field(default_factory=list)
    _baseline: dict[str, list[np.ndarray]] = field(default_factory=dict, repr=False)
    _warned: set[str] = field(default_factory=set, repr=False)
    _seen: int = field(default=0, repr=False)

    def update(
        self,
        step: int,
        images: "np.ndarray | torch.Tensor | Sequence[Image.Image]",
        rewards: "np.ndarray | torch.Tensor | Sequence[float]",
    ) -> dict[str, float]:
        """Record one step; returns `{"monitor/reward_mean", "monitor/reward_std", "monitor/<statistic>",
        "monitor/<statistic>_drift", "monitor/warning"}` (drifts are 0 during the baseline steps)."""
        values = {name: np.asarray(value, dtype=np.float64) for name, value in image_statistics(images).items()}
        values["reward"] = np.asarray(torch.as_tensor(rewards).detach().double().cpu().reshape(-1))
        logs = {"monitor/reward_mean": float(values["reward"].mean()),
                "monitor/reward_std": float(values["reward"].std())}  # fmt: skip
        logs.update({f"monitor/{name}": float(values[name].mean()) for name in STATISTICS})
        self._seen += 1
        if self._seen <= self.baseline_steps:
            for name, value in values.items():
                self._baseline.setdefault(name, []).append(value)
            logs.update({f"monitor/{name}_drift": 0.0 for name in (*STATISTICS, "reward")})
            logs["monitor/warning"] = 0.0
            return logs
        drifts = {name: self._drift(name, values[name]) for name in (*STATISTICS, "reward")}
        logs.update({f"monitor/{name}_drift": drift for name, drift in drifts.items()})
        rising = drifts["reward"] >= self.reward_threshold
        drifting = {name for name in STATISTICS if drifts[name] >= self.drift_threshold} if rising else set()
        for name in sorted(drifting - self._warned):
            message = (
                f"step {step}: possible reward hacking: the reward rose by {drifts['reward']:.2f} baseline stds "
                f"while {name} rose by {drifts[name]:.2f} (mean {logs[f'monitor/{name}']:.4g}); look at the samples."
            )
            logger.warning(message)
            self.warnings.append((step, message))
        self._warned |= drifting
        logs["monitor/warning"] = float(bool(drifting))
        return logs

    def _drift(self, name: str, value: np.ndarray) -> float:
        baseline = np.concatenate(self._baseline[name])
        spread = max(float(baseline.std()), MIN_STD[name])
        return float((value.mean() - baseline.mean()) / spread)


def _blockiness(luminance: np.ndarray, axis: int) -> np.ndarray:
    """Per image: the mean absolute step between neighbours at the strongest position mod 8 along `axis`, over the
    mean at the other seven positions (about 1 for natural images, above 1 for an 8-pixel grid at any phase)."""
    steps = np.abs(np.diff(luminance, axis=axis))
    length = steps.shape[axis] // _BLOCK * _BLOCK
    steps = np.take(steps, np.arange(length), axis=axis)
    phases = np.moveaxis(steps, axis, -1).reshape(len(steps), -1, length // _BLOCK, _BLOCK).mean(axis=(1, 2))
    strongest = phases.max(axis=1)
    others = (phases.sum(axis=1) - strongest) / (_BLOCK - 1)
    return np.where(others > 1e-6, strongest / np.maximum(others, 1e-6), 1.0)


def _float_nhwc_batches(images: "np.ndarray | torch.Tensor | Sequence[Image.Image]") -> list[np.ndarray]:
    """Float32 `(n, H, W, 3)` arrays in [0, 1] (half the time of float64, and precise enough): the batch itself, or
    one per PIL image (they may differ in size)."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images has shape {tuple(images.shape)}; the monitor takes torch (N, 3, H, W) in [0, 1]."
            )
        return [images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()]
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"images has shape {images.shape}; the monitor takes numpy (N, H, W, 3), uint8 or [0, 1]."
            )
        if images.dtype == np.uint8:
            return [images.astype(np.float32) / np.float32(255)]
        return [np.clip(images.astype(np.float32), 0, 1)]
    return [np.asarray(image.convert("RGB"), dtype=np.float32)[None] / np.float32(255) for image in images]
