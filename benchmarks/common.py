"""What the benchmark scripts share: synthetic images, a repeat timer, peak memory, fresh-process cells, crops of the
sample photos for the learning benchmarks, and markdown tables.

A plain module beside the scripts: `python benchmarks/SCRIPT.py` puts this folder on `sys.path`, so the scripts
`import common` as it is.
"""

import multiprocessing
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vq_reward.data.distorted_sets import DistortedImage, make_distorted_set
from vq_reward.distortions import DISTORTIONS
from vq_reward.images import load_image


REPO = Path(__file__).resolve().parents[1]
SAMPLE_PHOTOS = REPO / "examples" / "images"


# -- images --------------------------------------------------------------------------------------------------------


def synthetic_images(count: int, width: int = 512, height: int = 384) -> list[Image.Image]:
    """Deterministic photo-like test images: smooth gradients plus seeded noise of varying strength."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    images = []
    for i in range(count):
        base = np.stack([np.sin(3 * x + i), np.cos(4 * y - i), np.sin(2 * (x + y) + 0.5 * i)], axis=-1)
        pixels = 127.5 * (1 + base) + rng.normal(0, 8 + i % 16, base.shape)
        images.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))
    return images


def as_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """Same-sized PIL images as one float NCHW tensor in [0, 1]."""
    return torch.from_numpy(np.stack([np.asarray(image) for image in images])).permute(0, 3, 1, 2).float() / 255


# -- timing --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """Wall times of the timed repeats of one run, each processing `items` items (images, calls)."""

    seconds: tuple[float, ...]
    items: int = 1

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rate(self) -> float:
        """Items per second at the median time."""
        return self.items / self.median

    @property
    def rate_range(self) -> tuple[float, float]:
        """Items per second of the slowest and of the fastest repeat."""
        return self.items / max(self.seconds), self.items / min(self.seconds)

    def rate_text(self, digits: int = 1) -> str:
        """ "median (slowest-fastest)", e.g. "41.2 (38.0-42.5)"; just the median for a single repeat."""
        if len(self.seconds) == 1:
            return f"{self.rate:.{digits}f}"
        low, high = self.rate_range
        return f"{self.rate:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"

    def ms_text(self, digits: int = 1) -> str:
        """Median milliseconds per repeat, with the fastest-slowest range."""
        if len(self.seconds) == 1:
            return f"{self.median * 1e3:.{digits}f}"
        fastest, slowest = min(self.seconds) * 1e3, max(self.seconds) * 1e3
        return f"{self.median * 1e3:.{digits}f} ({fastest:.{digits}f}-{slowest:.{digits}f})"


def time_repeats(
    run: Callable[[], object],
    repeats: int = 5,
    *,
    items: int = 1,
    warmup: Callable[[], object] | None = None,
    device: torch.device | str | None = None,
) -> Timing:
    """Time `repeats` calls of `run` after one untimed warm-up call (`warmup`, else `run` itself).

    On a CUDA `device` the queue is drained before each clock reading, so the times are the work's, not the launch's.
    """
    (warmup or run)()
    synchronize(device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return Timing(tuple(seconds), items)


def synchronize(device: torch.device | str | None) -> None:
    """Wait for the CUDA queue of `device` (a no-op for CPU or `None`)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# -- memory --------------------------------------------------------------------------------------------------------


class PeakMemory:
    """Peak memory above the level at entry, in MiB: the CUDA allocator's peak on GPU, sampled RSS on CPU.

    On CPU a thread samples the resident set every 2 ms; memory the allocator keeps from before entry is not counted,
    so run each measurement in a fresh process (`run_in_fresh_process`) when earlier work could leave some behind.

        with PeakMemory(device) as memory:
            work()
        memory.peak_mib
    """

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.002) -> None:
        self.device = torch.device(device)
        self.interval = interval
        self.peak_mib = float("nan")

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = self._peak = resident_bytes()
            self._stop = threading.Event()
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, resident_bytes())

    def __exit__(self, *exc_info: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._sampler.join()
            peak = max(self._peak, resident_bytes())
        self.peak_mib = (peak - self._base) / 2**20


def resident_bytes() -> int:
    """This process's resident set size (Linux /proc)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- fresh processes -----------------------------------------------------------------------------------------------


def run_in_fresh_process(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`function(*args, **kwargs)` in a new spawned Python process, and its result.

    A spawned child imports nothing of this process's state: no allocator caches, no loaded model, no warm kernels,
    so each cell's memory and warm-up are its own. `function` must be importable (a module-level function).
    """
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        return child.submit(function, *args, **kwargs).result()


# -- crops of the sample photos (the learning benchmarks) ----------------------------------------------------------

HELD_OUT_PHOTOS = ("coffee", "rocket")  # never trained on
CROP = 112


def sample_photos(folder: Path = SAMPLE_PHOTOS) -> list[tuple[str, Image.Image]]:
    """(stem, RGB image) of every sample photo, sorted by name, loaded as the scorer loads files."""
    return [(path.stem, load_image(path)) for path in sorted(folder.glob("*.jpg"))]


def make_crops(photo: Image.Image, half: str, count: int, rng: np.random.Generator) -> list[Image.Image]:
    """`count` random CROPxCROP crops lying entirely in the left or right half of the photo (or anywhere: "all")."""
    low, high = {"left": (0, photo.width // 2 - CROP), "right": (photo.width // 2, photo.width - CROP)}.get(
        half, (0, photo.width - CROP)
    )
    crops = []
    for _ in range(count):
        left, top = int(rng.integers(low, high + 1)), int(rng.integers(0, photo.height - CROP + 1))
        crops.append(photo.crop((left, top, left + CROP, top + CROP)))
    return crops


def distorted_crops(
    crops: Sequence[tuple[str, Image.Image]], folder: Path, kinds: tuple[str, ...] = DISTORTIONS
) -> list[DistortedImage]:
    """Every crop clean and under every kind x severity 1..5, written into `folder` by `make_distorted_set`.

    The crops are first written as clean PNGs into `folder / "clean"` (each its own reference, named as given);
    the result lists, crop by crop in the order given, the clean image and then its kinds x severities.
    """
    clean = folder / "clean"
    clean.mkdir(parents=True, exist_ok=True)
    for name, crop in crops:
        crop.save(clean / f"{name}.png")
    rows = make_distorted_set(clean, folder, kinds=kinds)
    order = {name: index for index, (name, _) in enumerate(crops)}
    return sorted(rows, key=lambda row: order[row.reference])  # stable: each crop keeps clean, then kind x level


# -- tables --------------------------------------------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> str:
    """A markdown table; `align` has one letter per column, "l" or "r" (default: first left, the rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    if len(align) != len(header) or any(len(row) != len(header) for row in rows):
        raise ValueError("every row and the alignment need one entry per header column.")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
