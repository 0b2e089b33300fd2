"""Model names: the offline smoke checkpoints ("tiny"), local folders and Hugging Face hub ids.

"tiny" is the random smoke checkpoint (`vq_reward.smoke`), built on first use into the cache folder
(`$VQ_REWARD_CACHE`, else `~/.cache/vq_reward`) and reused after; its scores mean nothing. Every name the CLI
accepts works the same in Python (`VisualQualityScorer.from_pretrained("tiny")`).
"""

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from vq_reward.smoke import build_tiny_checkpoint


# Bumped whenever a builder changes what it writes, so an old cached copy is never mistaken for the new one.
SMOKE_VERSION = 1


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where smoke checkpoints are cached: `cache_dir`, else `$VQ_REWARD_CACHE`, else `~/.cache/vq_reward`."""
    return Path(cache_dir or os.environ.get("VQ_REWARD_CACHE") or Path.home() / ".cache" / "vq_reward")


def tiny_checkpoint(cache_dir: str | os.PathLike | None = None) -> Path:
    """The tiny random checkpoint in the cache folder, built on first use."""
    return _cached(cache_root(cache_dir) / f"tiny-qwen2.5-vl-v{SMOKE_VERSION}", build_tiny_checkpoint)


SMOKE_MODELS: dict[str, Callable[[], Path]] = {"tiny": tiny_checkpoint}


def resolve_model(name: str | os.PathLike) -> str:
    """A smoke name becomes its cached folder, a local folder its absolute path; anything else is a hub id, as is.

    Example:
        >>> resolve_model("TianheWu/VisualQuality-R1-7B")
        'TianheWu/VisualQuality-R1-7B'
    """
    text = os.fspath(name)
    if text in SMOKE_MODELS:
        return str(SMOKE_MODELS[text]())
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path.resolve())
    return text


def canonical_name(name: str | os.PathLike) -> str:
    """A local folder as its absolute path (so the name works from any working directory); other names as they are.

    Unlike `resolve_model`, this builds nothing and looks nothing up.
    """
    path = Path(os.fspath(name)).expanduser()
    return str(path.resolve()) if path.is_dir() else os.fspath(name)


def _cached(path: Path, build: Callable[[Path], Path]) -> Path:
    if not (path / "model.safetensors").exists():
        # Build beside the target and rename, so a concurrent or interrupted build never leaves half a checkpoint.
        staging = path.with_name(f"{path.name}.partial-{os.getpid()}")
        build(staging)
        try:
            staging.rename(path)
        except OSError:  # another process finished first: its copy is identical, keep it
            shutil.rmtree(staging)
    return path
