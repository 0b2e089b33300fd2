"""Resuming training: which checkpoint to resume from, and loading its weights completely or not at all.

Choosing (`checkpoint_to_resume`, `finished_run`): `last` is the newest *complete* `checkpoint-N` (a save cut short
by a kill or a full disk is skipped, and the log says so), and a run whose checkpoint already reached the run's end is
left as it is (transformers would train one step past `max_steps` when the run ended mid-epoch, and save again).

Loading (`load_checkpoint_weights`): transformers 5 saves Qwen2.5-VL under the legacy key layout (`model.layers.*`,
`visual.*`) while the model's own keys are `model.language_model.*` and `model.visual.*`; `Trainer`'s resume loads the
file non-strictly, so all but `lm_head.weight` would silently keep their current values. This loader maps every saved
key to the model's key with transformers' own save-time conversion, and refuses a checkpoint that does not cover the
model exactly.
"""

import json
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file


if TYPE_CHECKING:
    from transformers import PreTrainedModel


CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")  # the folders Trainer saves into: checkpoint-<global step>
TRAINER_STATE = "trainer_state.json"  # written last by Trainer's save: without it the save was cut short
FINAL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")


def checkpoint_to_resume(output_dir: str | Path, requested: str | None, log: Callable[[str], None]) -> Path | None:
    """The checkpoint folder `--resume_from_checkpoint` names, checked complete; None for a fresh run.

    `requested` is a folder, or "last" (also "true") for the newest complete `checkpoint-N` in `output_dir`: newer
    incomplete ones are skipped and `log` gets one line naming them and the one chosen. Raises `ValueError` (one line)
    when there is nothing complete to resume from.
    """
    if requested is None or requested.lower() == "false":
        return None
    if requested.lower() not in ("last", "true"):
        folder = Path(requested)
        if not folder.is_dir():
            raise ValueError(f"--resume_from_checkpoint {folder}: no such checkpoint folder.")
        problem = incomplete_because(folder)
        if problem:
            raise ValueError(f"cannot resume from {folder}: {problem}. Pass an earlier checkpoint, or `last`.")
        return folder
    found = [path for path in Path(output_dir).glob("checkpoint-*") if CHECKPOINT_NAME.fullmatch(path.name)]
    newest_first = sorted(found, key=lambda path: int(path.name.split("-")[1]), reverse=True)
    if not [path for path in newest_first if path.is_dir()]:
        raise ValueError(f"--resume_from_checkpoint last: {output_dir} holds no checkpoint-N folder to resume from.")
    skipped: list[str] = []
    for folder in (path for path in newest_first if path.is_dir()):
        problem = incomplete_because(folder)
        if problem is None:
            if skipped:
                log(f"resuming from {folder}, the newest complete checkpoint; skipped {'; '.join(skipped)}")
            return folder
        skipped.append(f"{folder.name} ({problem})")
    raise ValueError(f"no complete checkpoint to resume from in {output_dir}: {'; '.join(skipped)}.")


def incomplete_because(folder: Path) -> str | None:
    """Why `folder` cannot be resumed from (its save was cut short), or None when every file it holds is whole."""
    try:
        state = json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {TRAINER_STATE}: its save was cut short"
    except (OSError, ValueError):
        return f"{TRAINER_STATE} is unreadable"
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return f"{TRAINER_STATE} has no global_step"
    for path in sorted(folder.rglob("*")):
        problem = _torn_file(path)
        if problem:
            return f"{path.relative_to(folder)} {problem}"
    return None


def finished_run(checkpoint: Path, output_dir: str | Path, max_steps: int, num_train_epochs: float) -> str | None:
    """A sentence saying that `checkpoint` already reached the run's end (`max_steps` when positive, else
    `num_train_epochs`) and where the final model is, or None when there is training left."""
    state = json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))
    step, epoch = state["global_step"], float(state.get("epoch") or 0.0)
    if max_steps > 0 and step >= max_steps:
        reached = f"step {step}, and max_steps is {max_steps}"
    elif max_steps <= 0 and epoch >= num_train_epochs - 1e-9:
        reached = f"epoch {epoch:g}, and num_train_epochs is {num_train_epochs:g}"
    else:
        return None
    saved = any((Path(output_dir) / name).is_file() for name in FINAL_WEIGHTS)
    where = f"{output_dir} keeps its final model" if saved else f"its final weights are in {checkpoint}"
    return (
        f"the run has finished ({checkpoint.name} is at {reached}): nothing to train, nothing written; {where}. "
        "Raise --max_steps (or --num_train_epochs) to train on."
    )


def _torn_file(path: Path) -> str | None:
    """Why the file at `path` is cut short, for the formats a resume reads (safetensors, torch's zip files)."""
    if not path.is_file():
        return None
    if path.suffix == ".safetensors":
        try:
            with safe_open(path, "pt"):  # checks the header and that the data cover the file exactly
                return None
        except (SafetensorError, OSError):
            return "is cut short (not a whole safetensors file)"
    if path.suffix in (".pt", ".pth", ".bin"):
        with path.open("rb") as file:
            zipped = file.read(4) == b"PK\x03\x04"  # torch.save's format; a cut one has no central directory
        if path.stat().st_size == 0 or (zipped and not zipfile.is_zipfile(path)):
            return "is cut short"
    return None


def load_checkpoint_weights(model: "PreTrainedModel", folder: str | Path) -> None:
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


def saved_key_names(model: "PreTrainedModel") -> dict[str, str]:
    """For every key of `model.state_dict()`, the key `save_pretrained` stores that tensor under."""
    state = model.state_dict()
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # a transformers without key conversions saves the model's own keys
        return {key: key for key in state}
    reverted = revert_weight_conversion(model, dict(state))
    by_identity = {id(tensor): name for name, tensor in reverted.items()}
    names: dict[str, str] = {}
    for key, tensor in state.items():
        name = by_identity.get(id(tensor))
        if name is None:
            raise RuntimeError(f"cannot tell under which key {key} is saved; its conversion is not a renaming.")
        names[key] = name
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
