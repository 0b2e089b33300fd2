"""JSONL rows -> the dataset TRL's GRPOTrainer reads: a conversational `prompt`, a PIL `image`, and every row column.

Images are decoded lazily (a dataset transform) and resized by Qwen's smart-resize rule before TRL sees them, so
the processor's own resize is a no-op in the trainer and in vLLM alike. Each row's prompt comes from the builder of
its `task` (`PROMPT_BUILDERS`); a second task family registers its own builder.
"""

from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from vq_reward import prompts
from vq_reward.images import resize_for_model
from vq_reward.train import require_trl
from vq_reward.train.config import VQScriptArguments
from vq_reward.train.data import merge_rows, read_jsonl
from vq_reward.train.rewards import SCORE_TASK


require_trl()
from datasets import Dataset  # noqa: E402


def score_prompt(row: dict, args: VQScriptArguments) -> list[dict]:
    """The VisualQuality-R1 conversation for a "score" row; TRL puts the image before the text.

    Example:
        >>> score_prompt({}, VQScriptArguments(thinking=False))[-1]["content"].endswith("</answer> tags.")
        True
    """
    messages = [{"role": "system", "content": args.system_prompt}] if args.system_prompt is not None else []
    return messages + [{"role": "user", "content": prompts.quality_prompt(args.thinking, args.question)}]


PROMPT_BUILDERS: dict[str, Callable[[dict, VQScriptArguments], list[dict]]] = {SCORE_TASK: score_prompt}


def load_rows(files: Sequence[str | Path], max_samples: int | None = None) -> list[dict]:
    """Read and merge JSONL data files (ids renumbered, `dataset_name` kept), optionally keeping the first N rows."""
    if not files:
        raise ValueError(
            "no data files given: pass --train_files data/NAME_train.jsonl (from vq-reward prepare-data)."
        )
    rows = merge_rows([read_jsonl(path) for path in files])
    return rows[:max_samples] if max_samples else rows


def build_dataset(rows: Sequence[dict], args: VQScriptArguments, min_pixels: int, max_pixels: int) -> Dataset:
    """A TRL-ready dataset: `prompt` per row from its task's builder, images decoded and resized on access."""
    table = []
    for row in rows:
        task = row.get("task", SCORE_TASK)
        if task not in PROMPT_BUILDERS:
            raise ValueError(f"row id={row.get('id')} has task {task!r}; known tasks: {sorted(PROMPT_BUILDERS)}.")
        table.append({**row, "task": task, "prompt": PROMPT_BUILDERS[task](row, args)})
    dataset = Dataset.from_list(table)
    return dataset.with_transform(ImageLoader(min_pixels, max_pixels))


class ImageLoader:
    """Dataset transform: open the `image` paths as RGB and resize them for the model (picklable, for workers)."""

    def __init__(self, min_pixels: int, max_pixels: int) -> None:
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        return {**batch, "image": [self.load(path) for path in batch["image"]]}

    def load(self, path: str) -> Image.Image:
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except (FileNotFoundError, OSError) as error:
            raise FileNotFoundError(f"cannot open training image {path}: {error}. Re-run prepare-data.") from error
        return resize_for_model(rgb, self.min_pixels, self.max_pixels)


def with_answer_prefix(chat_template: str, prefix: str) -> str:
    """The chat template with `prefix` appended to its generation prompt (after `<|im_start|>assistant\\n`).

    TRL always renders prompts with `add_generation_prompt=True`; putting the prefix into that branch makes every
    prompt end with it, in generation and in the loss forward alike.

    Example:
        >>> with_answer_prefix("{% if add_generation_prompt %}<|im_start|>assistant\\n{% endif %}", "<answer>")
        '{% if add_generation_prompt %}<|im_start|>assistant\\n<answer>{% endif %}'
    """
    branch = chat_template.rfind("add_generation_prompt")
    for opener in ("<|im_start|>assistant\n", "<|im_start|>assistant\\n"):
        position = chat_template.find(opener, branch)
        if branch >= 0 and position >= 0:
            end = position + len(opener)
            return chat_template[:end] + prefix + chat_template[end:]
    raise ValueError(
        "cannot find the generation prompt '<|im_start|>assistant\\n' after 'add_generation_prompt' in this chat "
        "template, so the answer prefix cannot be placed; use a Qwen2.5-VL chat template or answer_prefix=False."
    )


def digit_token_ids(tokenizer) -> list[int]:
    """The ids of the single tokens "1".."5", which score() reads after the answer prefix."""
    ids = [tokenizer.encode(str(d), add_special_tokens=False) for d in range(1, 6)]
    if any(len(i) != 1 for i in ids):
        raise ValueError(f"the digits 1..5 must each be one token for digit_only sampling, got {ids}.")
    return [i[0] for i in ids]
