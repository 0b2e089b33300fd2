"""`build_backend`: any backend from its `BackendSource`. Its own module, so that no backend module imports another
(`backends/__init__.py` does not import this one)."""

import torch

from vq_reward.backends import Backend, BackendSource
from vq_reward.backends.hf import HFBackend


def build_backend(source: BackendSource, device: str | torch.device | None = None) -> Backend:
    """The backend `source` describes; `device` places the HF model (`None`: CUDA when available, else CPU), the
    vLLM engine and servers place their own."""
    if source.backend == "hf":
        return HFBackend.load(source.model, device=device, **source.kwargs)
    if source.backend == "vllm":
        from vq_reward.backends.vllm import VllmBackend

        return VllmBackend.load(source.model, **source.kwargs)
    if source.backend == "server":
        from vq_reward.backends.server import ServerBackend

        return ServerBackend(**source.kwargs)
    raise ValueError(f"backend must be 'hf', 'vllm' or 'server', got {source.backend!r}.")
