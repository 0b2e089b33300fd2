"""Offline, CPU, one thread: shared fixtures build the tiny random Qwen2.5-VL once per session."""

import os
import socket
import urllib.error
import urllib.request


# Before torch is imported: multi-threaded runs on the shared CI machines are erratically slow.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from vq_reward import VisualQualityScorer  # noqa: E402
from vq_reward.smoke import build_tiny_checkpoint  # noqa: E402


torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-qwen2.5-vl")


@pytest.fixture(scope="session")
def scorer(tiny_path):
    return VisualQualityScorer.from_pretrained(tiny_path)


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A seeded RGB noise image: random-weight models need varied pixels to give varied scores."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now (for the servers the tests start)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(url: str, body: bytes) -> tuple[int, bytes]:
    """One POST; (status, body) whether it succeeded or not."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=300) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
