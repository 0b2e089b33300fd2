"""JSONL rows -> the dataset TRL's GRPOTrainer reads: a conversational `prompt`, PIL images, and every row column.

Images are decoded lazily (a dataset transform) and resized by Qwen's smart-resize rule before TRL sees them, so
the processor's own resize is a no-op in the trainer and in vLLM alike. Each row's prompt comes from the builder of
its `task` (`PROMPT_BUILDERS`): VisualQuality-R1's score prompt, or with prompt_style="q-insight" Q-Insight's
score, degradation and comparison prompts, the very messages the scorer's readouts use.

Images reach TRL in one of its two columns: `image` (one per row: TRL puts it before the prompt's text) when every
row has one image, else `images` for every row (a list; a score or degradation row's single image becomes a list
of one). Q-Insight prompts carry explicit `{"type": "image"}` blocks, which TRL fills in order, so a comparison
prompt keeps its layout: intro, reference, "Image A:", A, "Image B:", B, question.
"""

from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from vq_reward import prompts
from vq_reward.data.rows import COMPARISON_TASK, DEGRADATION_TASK, SCORE_TASK, merge_rows, read_jsonl
from vq_reward.images import load_image, resize_for_model
from vq_reward.train import require_trl
from vq_reward.train.config import VQScriptArguments


require_trl()
from datasets import Dataset  # noqa: E402


def score_prompt(row: dict, args: VQScriptArguments) -> list[dict]:
    """The conversation for a "score" row: VisualQuality-R1's (TRL puts the image before the text) or Q-Insight's.

    Example:
        >>> score_prompt({}, VQScriptArguments(thinking=False))[-1]["content"].endswith("</answer> tags.")
        True
        >>> score_prompt({}, VQScriptArguments(prompt_style="q-insight"))[-1]["content"][0]
        {'type': 'image'}
    """
    if args.prompt_style == "q-insight":
        return prompts.image_message(prompts.QINSIGHT_SCORE_QUESTION, system=prompts.QINSIGHT_SYSTEM)
    messages = [{"role": "system", "content": args.system_prompt}] if args.system_prompt is not None else []
    return messages + [{"role": "user", "content": prompts.quality_prompt(args.thinking, args.question)}]


def degradation_prompt(row: dict, args: VQScriptArguments) -> list[dict]:
    """Q-Insight's degradation conversation: its system prompt, then the image and the question."""
    return prompts.degradation_messages()


def comparison_prompt(row: dict, args: VQScriptArguments) -> list[dict]:
    """Q-Insight's comparison conversation: reference, image A and image B, each introduced by its label."""
    if len(row["images"]) != 3:
        raise ValueError(
            f"comparison row id={row.get('id')} has {len(row['images'])} images; it needs exactly 3: the reference, "
            "image A and image B, in that order."
        )
    return prompts.comparison_messages()


PROMPT_BUILDERS: dict[str, Callable[[dict, VQScriptArguments], list[dict]]] = {
    SCORE_TASK: score_prompt,
    DEGRADATION_TASK: degradation_prompt,
    COMPARISON_TASK: comparison_prompt,
}


def load_rows(files: Sequence[str | Path], max_samples: int | None = None) -> list[dict]:
    """Read and merge JSONL data files (ids renumbered, `dataset_name` kept), optionally keeping the first N rows."""
    if not files:
        raise ValueError(
            "no data files given: pass --train_files data/NAME_train.jsonl (from vq-reward prepare-data)."
        )
    rows = merge_rows([read_jsonl(path, check_images=True) for path in files])  # every row, before step 1
    return rows[:max_samples] if max_samples else rows


def build_dataset(rows: Sequence[dict], args: VQScriptArguments, min_pixels: int, max_pixels: int) -> Dataset:
    """A TRL-ready dataset: `prompt` per row from its task's builder, images decoded and resized on access.

    Rows of several tasks mix freely under prompt_style="q-insight"; a row with several images (`images`) turns
    every row's image into an `images` list (TRL reads one of the two columns for the whole batch).
    """
    table = []
    for row in rows:
        task = row.get("task", SCORE_TASK)
        if task not in PROMPT_BUILDERS:
            raise ValueError(f"row id={row.get('id')} has task {task!r}; known tasks: {sorted(PROMPT_BUILDERS)}.")
        if task != SCORE_TASK and args.prompt_style != "q-insight":
            raise ValueError(
                f"row id={row.get('id')} is a {task} row, a Q-Insight task; set prompt_style: q-insight so every row "
                "gets Q-Insight's prompts (VisualQuality-R1's score prompt cannot share a batch with them)."
            )
        table.append({**row, "task": task, "prompt": PROMPT_BUILDERS[task](row, args)})
    if any("images" in row for row in table):
        for row in table:
            if "images" not in row:
                row["images"] = [row.pop("image")]
            row.pop("image", None)
    # Dataset.from_list takes its columns from the first row only: give every row every column (None where absent).
    columns = list(dict.fromkeys(key for row in table for key in row))
    dataset = Dataset.from_list([{key: row.get(key) for key in columns} for row in table])
    return dataset.with_transform(ImageLoader(min_pixels, max_pixels))


class ImageLoader:
    """Dataset transform: open the `image` (or `images`) paths as RGB and resize them for the model (picklable)."""

    def __init__(self, min_pixels: int, max_pixels: int) -> None:
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out = dict(batch)
        if "image" in batch:
            out["image"] = [self.load(path) for path in batch["image"]]
        if "images" in batch:
            out["images"] = [[self.load(path) for path in paths] for paths in batch["images"]]
        return out

    def load(self, path: str) -> Image.Image:
        # The scorer's loader: transparency, 16-bit and EXIF rotation handled exactly as at scoring time. The rows
        # were checked before training; a file that changed since fails here with the loader's own message.
        return resize_for_model(load_image(path), self.min_pixels, self.max_pixels)


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
