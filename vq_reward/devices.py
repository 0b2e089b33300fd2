"""Which device a model goes to by default, and moving it between devices for RL loops that share a GPU between
the policy and the reward."""

import logging

import torch


logger = logging.getLogger("vq_reward")
_announced = False


def choose_device(device: str | torch.device | None = None) -> torch.device:
    """`device` when given; else CUDA when available, else CPU (the rule of `from_pretrained` and `vq-reward score`).

    The first time a device is chosen here, one line says which (the `vq_reward` logger, a warning so that it
    shows without logging set up; silence it with `logging.getLogger("vq_reward").setLevel(logging.ERROR)`).

    Example:
        >>> choose_device("cpu")
        device(type='cpu')
    """
    global _announced
    if device is not None:
        return torch.device(device)
    chosen = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not _announced:
        _announced = True
        reason = "CUDA is available" if chosen.type == "cuda" else "no CUDA GPU found"
        logger.warning("vq_reward: no device given, using %s (%s); device= (or --device) chooses.", chosen, reason)
    return chosen


def default_dtype(device: torch.device) -> torch.dtype | str:
    """The weights' dtype when none is given: on CUDA the checkpoint's own ("auto": bfloat16 for the released 7B
    checkpoints, float32 for the smoke models, whose hand-set front end does not survive bfloat16), else float32.

    Example:
        >>> default_dtype(torch.device("cpu")), default_dtype(torch.device("cuda"))
        (torch.float32, 'auto')
    """
    return "auto" if device.type == "cuda" else torch.float32


def offload(model: torch.nn.Module) -> torch.device | None:
    """Move `model` to CPU memory and free its accelerator memory; returns the device it came from (`None` if CPU).

    The dtype is kept (bf16 stays bf16).
    """
    device = next(model.parameters()).device
    if device.type == "cpu":
        return None
    model.to("cpu")
    empty_cache = getattr(getattr(torch, device.type, None), "empty_cache", None)  # torch.cuda, torch.xpu, ...
    if callable(empty_cache):
        empty_cache()
    return device


def onload(model: torch.nn.Module, device: str | torch.device | None) -> None:
    """Move `model` to `device` (a no-op for `None`)."""
    if device is not None:
        model.to(device)
