"""Moving a model between devices for RL loops that share a GPU between the policy and the reward."""

import torch


def offload(model: torch.nn.Module) -> torch.device | None:
    """Move `model` to CPU memory and free its accelerator memory; returns the device it came from (`None` if CPU).

    The dtype is kept (bf16 stays bf16).
    """
    device = next(model.parameters()).device
    if device.type == "cpu":
        return None
    model.to("cpu")
    backend = getattr(torch, device.type, None)
    if hasattr(backend, "empty_cache"):
        backend.empty_cache()
    return device


def onload(model: torch.nn.Module, device: str | torch.device | None) -> None:
    """Move `model` to `device` (a no-op for `None`)."""
    if device is not None:
        model.to(device)
