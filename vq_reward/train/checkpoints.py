"""Loading a training checkpoint's weights back into the model it came from, completely or not at all.

transformers 5 saves Qwen2.5-VL under the legacy key layout (`model.layers.*`, `visual.*`) while the model's own
keys are `model.language_model.*` and `model.visual.*`; `Trainer`'s resume loads the file non-strictly, so all but
`lm_head.weight` would silently keep their current values. This loader maps every saved key to the model's key with
transformers' own save-time conversion, and refuses a checkpoint that does not cover the model exactly.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file


def load_checkpoint_weights(model: torch.nn.Module, folder: str | Path) -> None:
    """Copy the weights saved in `folder` (model.safetensors, or shards with an index) into `model`, strictly.

    Raises `RuntimeError` naming the missing and unexpected keys when the checkpoint and the model differ.
    """
    folder = Path(folder)
    saved = _saved_tensors(folder)
    names = saved_key_names(model)  # model key -> the key save_pretrained writes it under
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    missing = sorted(key for key, name in names.items() if name not in saved and key not in tied)
    unexpected = sorted(set(saved) - set(names.values()))
    if missing or unexpected:
        raise RuntimeError(
            f"the checkpoint {folder} does not match the model: {len(missing)} missing tensors "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}), {len(unexpected)} unexpected "
            f"({', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''}). Resume with the model and "
            "options (freeze_vision, use_peft) the checkpoint was trained with."
        )
    state = {key: saved[name] for key, name in names.items() if name in saved}
    model.load_state_dict(state, strict=not tied)


def saved_key_names(model: torch.nn.Module) -> dict[str, str]:
    """For every key of `model.state_dict()`, the key `save_pretrained` stores that tensor under."""
    state = model.state_dict()
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # a transformers without key conversions saves the model's own keys
        return {key: key for key in state}
    reverted = revert_weight_conversion(model, dict(state))
    by_identity = {id(tensor): name for name, tensor in reverted.items()}
    names = {key: by_identity.get(id(tensor)) for key, tensor in state.items()}
    unmapped = [key for key, name in names.items() if name is None]
    if unmapped:
        raise RuntimeError(f"cannot tell under which key {unmapped[0]} is saved; its conversion is not a renaming.")
    return names


def _saved_tensors(folder: Path) -> dict[str, torch.Tensor]:
    single = folder / "model.safetensors"
    if single.is_file():
        return load_file(single)
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{folder} holds no model.safetensors (or shards with an index) to resume from.")
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    tensors: dict[str, torch.Tensor] = {}
    for shard in shards:
        tensors.update(load_file(folder / shard))
    return tensors
