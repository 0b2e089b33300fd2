"""Rewards for other people's training loops, made from a `VisualQualityScorer`.

- `QualityReward` (`scorer.as_reward()`): DDPO / Flow-GRPO / DanceGRPO, `fn(images, prompts, metadata) ->
  (np.float32[N], info)`.
- `DifferentiableQualityReward` (`scorer.as_differentiable_reward()`): DRaFT / AlignProp / ReFL,
  `fn(images) -> Tensor[N]` whose graph reaches the pixels.
- `TrlQualityReward` (`scorer.as_trl_reward()`): `trl.GRPOTrainer`, `fn(prompts, completions, completion_ids,
  **columns) -> list[float | None]`, named "visual_quality".

All three are plain callable classes, never `nn.Module` (TRL would take a module for a text reward model). They
pickle without weights: a copy of the scorer is loaded lazily, from the model id `from_pretrained` recorded, in the
process that unpickles them (TRL's async GRPO ships rewards to a worker process this way). Calls from several
threads are safe: each call holds the scorer's lock while it scores.
"""

import importlib.util
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from vq_reward.differentiable import QwenImageLayout, pixel_inputs, text_inputs
from vq_reward.images import MIN_SIDE, ImageInputError, Images
from vq_reward.scorer import DIGITS, VisualQualityScorer


REWARD_NAME = "visual_quality"


def default_device() -> torch.device:
    """Where a lazily loaded scorer goes: this process's accelerate device (one copy per process), else CPU.

    Example:
        >>> default_device()  # doctest: +SKIP
        device(type='cuda', index=3)
    """
    if importlib.util.find_spec("accelerate") is None:
        return torch.device("cpu")
    from accelerate import PartialState

    return PartialState().device


class _ScorerSource:
    """A scorer, or how to load one: pickles as the recipe only, loads on first use in the unpickling process."""

    def __init__(
        self,
        scorer: VisualQualityScorer | str | os.PathLike,
        device: str | torch.device | None = None,
        load_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.device = device
        if isinstance(scorer, VisualQualityScorer):
            if load_kwargs:
                raise ValueError(
                    f"load_kwargs={load_kwargs} only apply when the reward loads the scorer from a model id; this "
                    "scorer is loaded already. Pass them to VisualQualityScorer.from_pretrained instead."
                )
            self._scorer: VisualQualityScorer | None = scorer
            self.load_args = scorer._load_args
        else:
            self._scorer = None
            self.load_args = (str(scorer), dict(load_kwargs or {}))
        self._loading = threading.Lock()

    def get(self) -> VisualQualityScorer:
        if self._scorer is None:
            with self._loading:
                if self._scorer is None:
                    model_id, kwargs = self.load_args
                    device = self.device if self.device is not None else default_device()
                    self._scorer = VisualQualityScorer.from_pretrained(model_id, device=device, **kwargs)
        return self._scorer

    def __getstate__(self) -> dict[str, Any]:
        if self.load_args is None:
            raise TypeError(
                "This reward's scorer was built from a model object, so it cannot be pickled without its weights. "
                "Build it with VisualQualityScorer.from_pretrained(...) (a hub id or a local folder), or pass the "
                "model id to the reward class, e.g. TrlQualityReward('TianheWu/VisualQuality-R1-7B')."
            )
        return {"device": self.device, "load_args": self.load_args}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.device, self.load_args = state["device"], state["load_args"]
        self._scorer = None
        self._loading = threading.Lock()


class QualityReward:
    """`fn(images, prompts=None, metadata=None) -> (scores, info)` for DDPO / Flow-GRPO / DanceGRPO loops.

    Args:
        scorer: a loaded scorer, or a hub id / folder to load lazily on first call.
        input_range: value range of float inputs: (0, 1) for diffusers `output_type="pt"` / `"np"`, (-1, 1) for a
            raw `vae.decode(...).sample`.
        rescale: map the 1..5 score to [0, 1], for loops that hard-code a reward scale.
        device: where a lazily loaded scorer goes; `None` = `default_device()`.
        load_kwargs: `VisualQualityScorer.from_pretrained` arguments for a lazily loaded scorer (`dtype`,
            `max_pixels`, `attn_implementation`, ...).

    Returns (per call):
        `scores`: numpy float32 `(N,)`, one per image, in input order (1..5, or 0..1 with `rescale`).
        `info`: `{"probs": (N, 5) float32, "digit_mass": (N,) float32}`, see `ScoreDetails`.

    Example (Flow-GRPO: register it in `multi_score`'s scorer dict; DDPO: pass it as `reward_function`):
        >>> reward_fn = scorer.as_reward()  # doctest: +SKIP
        >>> scores, info = reward_fn(torch.rand(4, 3, 512, 512), prompts, metadata)  # doctest: +SKIP
        >>> scores.dtype, scores.shape
        (dtype('float32'), (4,))
    """

    def __init__(
        self,
        scorer: VisualQualityScorer | str | os.PathLike,
        input_range: tuple[float, float] = (0.0, 1.0),
        rescale: bool = False,
        device: str | torch.device | None = None,
        load_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.source = _ScorerSource(scorer, device, load_kwargs)
        self.input_range = _check_range(input_range)
        self.rescale = rescale
        self.__name__ = REWARD_NAME

    def __call__(
        self, images: Images, prompts: Sequence[Any] | None = None, metadata: Sequence[Any] | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        scorer = self.source.get()
        with scorer._lock:  # one call at a time: the processor and the model are shared with every other caller
            details = scorer.score_details(images, input_range=self.input_range)
        scores = details.scores.numpy().astype(np.float32)
        if self.rescale:
            scores = _to_unit(scores)
        info = {"probs": details.probs.numpy().astype(np.float32), "digit_mass": details.digit_mass.numpy()}
        return scores, info


class DifferentiableQualityReward:
    """`fn(images) -> Tensor[N]`: expected scores in [1, 5] with a graph back to `images` (DRaFT, AlignProp, ReFL).

    The pixels go through `vq_reward.differentiable` (smart resize with bicubic antialias `F.interpolate`, the
    processor's normalisation, Qwen's patch layout) into one forward of the frozen model. On an image whose size
    already conforms (sides multiples of 28 inside the pixel budget) and whose values are multiples of 1/255, the
    score equals `scorer.score()`; otherwise it differs by the resize filter and by `score()`'s uint8 rounding.
    Values outside `input_range` are clamped (their gradient is zero), as diffusion loops do with VAE output.

    Args:
        scorer: a loaded scorer (its weights stay frozen), or a hub id / folder to load lazily.
        input_range: (0, 1) for pipeline `output_type="pt"`, (-1, 1) for raw VAE output.
        gradient_checkpointing: recompute activations in the backward pass (non-reentrant checkpointing; the model
            runs in training mode during the call, which changes nothing else for Qwen2.5-VL: it has no dropout).
        device: where a lazily loaded scorer goes; `None` = `default_device()`.
        load_kwargs: `VisualQualityScorer.from_pretrained` arguments for a lazily loaded scorer.

    The call also accepts and ignores `prompts` (the scorer is no-reference), so it fits `fn(images, prompts)` loops.

    Memory: the frozen weights get no gradient or optimizer state, so the cost is the bf16 weights (about 7.5 GB for
    the 3B, 16.6 GB for the 7B; bf16 is the default on CUDA) plus the activations kept for the backward pass, which
    grow linearly with the image tokens (`H * W / 784` per image, plus ~100 prompt tokens). Measured by counting the
    tensors autograd saves, at the real widths with 1-2 layers, extrapolated to the real depths (28 text layers for
    the 7B, 36 for the 3B, 32 vision blocks), bf16, one 504x504 image (324 image tokens):

    | model | no checkpointing | `gradient_checkpointing=True` |
    |---|---:|---:|
    | 7B | ~3.6 GiB per image (65 MiB per text layer, 57 MiB per vision block) | ~0.2 GiB per image |
    | 3B | ~3.1 GiB per image (38 MiB per text layer, 57 MiB per vision block) | ~0.2 GiB per image |

    (`vq-reward bench-rewards --activation-memory` recounts it on CPU; a GPU's fused attention keeps slightly less.)
    Checkpointing adds one layer's activations at a time during the backward, and a second forward pass. To fit
    more, cap the pixels (`from_pretrained(..., max_pixels=512 * 512)`) and score fewer images per step.

    Example (DRaFT-1: gradient through the last denoising step only):
        >>> reward_fn = scorer.as_differentiable_reward(input_range=(-1, 1))  # doctest: +SKIP
        >>> loss = -reward_fn(vae.decode(latents / vae.config.scaling_factor).sample).mean()  # doctest: +SKIP
        >>> loss.backward()  # reaches the policy through the pixels; the scorer's weights get no gradient
    """

    def __init__(
        self,
        scorer: VisualQualityScorer | str | os.PathLike,
        input_range: tuple[float, float] = (0.0, 1.0),
        gradient_checkpointing: bool = False,
        device: str | torch.device | None = None,
        load_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.source = _ScorerSource(scorer, device, load_kwargs)
        self.input_range = _check_range(input_range)
        self.gradient_checkpointing = gradient_checkpointing
        self.__name__ = REWARD_NAME

    def __call__(
        self, images: torch.Tensor | Sequence[torch.Tensor], prompts: Sequence[Any] | None = None
    ) -> torch.Tensor:
        scorer = self.source.get()
        unit = [self._to_unit_range(image) for image in _tensor_list(images)]
        batch = unit[0] if isinstance(images, torch.Tensor) else unit
        output_device = unit[0].device
        pixel_values, grid = pixel_inputs(batch, QwenImageLayout.from_processor(scorer.processor))
        model = scorer.model
        with scorer._lock:
            tokens = text_inputs(scorer.processor, scorer._prompt(thinking=False) + scorer.answer_prefix, grid)
            inputs = {
                **tokens.to(scorer.device),
                "pixel_values": pixel_values.to(scorer.device, model.dtype),
                "image_grid_thw": grid.to(scorer.device),
            }
            was_training = model.training
            if self.gradient_checkpointing:
                _enable_checkpointing(model)
                model.train()  # transformers checkpoints only in training mode
            try:
                logits = model(**inputs, logits_to_keep=1, use_cache=False).logits[:, -1]
            finally:
                model.train(was_training)
        digit_logits = logits[:, scorer.digit_ids]
        probs = digit_logits.to(torch.promote_types(digit_logits.dtype, torch.float32)).softmax(-1)
        scores = probs @ torch.arange(1.0, len(DIGITS) + 1.0, dtype=probs.dtype, device=probs.device)
        return scores.to(output_device)

    def _to_unit_range(self, images: torch.Tensor) -> torch.Tensor:
        low, high = self.input_range
        return ((images - low) / (high - low)).clamp(0.0, 1.0)


class TrlQualityReward:
    """A `trl.GRPOTrainer` reward: `(prompts, completions, completion_ids=None, **columns) -> list[float | None]`.

    Args:
        scorer: a loaded scorer, or a hub id / folder to load lazily on first call (on `default_device()`: under
            `accelerate launch` each process loads its own copy on its own GPU).
        image_key: the dataset or `rollout_func` column holding one image per completion (PIL, path, array or
            tensor; `None` for a row scores `None`). Not used when `image_fn` is given.
        image_fn: turns completions into images, e.g. a text-to-image pipeline rendering the prompts an LLM writes.
            Called once per batch as `image_fn(prompts=prompts, completions=texts, **columns)` with the completion
            texts (plain strings), returning one image or `None` (cannot render) per completion.
        device: where a lazily loaded scorer goes; `None` = `default_device()`.
        load_kwargs: `VisualQualityScorer.from_pretrained` arguments for a lazily loaded scorer, e.g.
            `{"dtype": torch.bfloat16, "max_pixels": 512 * 512}`.

    A completion whose image is `None` gets `None` (TRL gives a row that every reward skips an advantage of 0).
    The same image object in several rows (G completions of one dataset image) is scored once. When TRL passes
    `log_metric`, the mean digit probability mass is logged as "visual_quality/digit_mass" (a health figure).

    Example:
        >>> reward = scorer.as_trl_reward(image_key=None, image_fn=render)  # doctest: +SKIP
        >>> trainer = GRPOTrainer(model=policy, reward_funcs=[reward], train_dataset=data)  # doctest: +SKIP
        >>> reward(prompts=["p"], completions=[[{"role": "assistant", "content": "a red fox"}]])  # doctest: +SKIP
        [3.1416]
    """

    def __init__(
        self,
        scorer: VisualQualityScorer | str | os.PathLike,
        image_key: str | None = "image",
        image_fn: Callable[..., Sequence[Any]] | None = None,
        device: str | torch.device | None = None,
        load_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if image_key is None and image_fn is None:
            raise ValueError("TrlQualityReward needs image_key (a dataset/rollout column) or image_fn; both are None.")
        self.source = _ScorerSource(scorer, device, load_kwargs)
        self.image_key = image_key
        self.image_fn = image_fn
        self.__name__ = REWARD_NAME

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        images = self._images(prompts, completions, kwargs)
        unique: dict[int, Any] = {}
        for image in images:
            if image is not None:
                unique.setdefault(id(image), image)
        rewards: list[float | None] = [None] * len(images)
        if not unique:
            return rewards
        scorer = self.source.get()
        with scorer._lock:
            details = scorer.score_details(list(unique.values()))
        by_id = dict(zip(unique, details.scores.tolist(), strict=True))
        rewards = [None if image is None else by_id[id(image)] for image in images]
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            log_metric(f"{REWARD_NAME}/digit_mass", details.digit_mass.mean().item())
        return rewards

    def _images(self, prompts: Sequence[Any], completions: Sequence[Any], columns: dict[str, Any]) -> list[Any]:
        if self.image_fn is not None:
            name = getattr(self.image_fn, "__name__", type(self.image_fn).__name__)
            texts = [completion_text(completion) for completion in completions]
            images = list(self.image_fn(prompts=prompts, completions=texts, **columns))
            source = f"image_fn {name!r}"
        else:
            if self.image_key not in columns:
                available = sorted(key for key in columns if key not in ("trainer_state", "log_extra", "log_metric"))
                raise KeyError(
                    f"image_key={self.image_key!r} is not among the columns TRL passed to the reward: {available}. "
                    "Pass the column that holds the images, or image_fn= to make images from the completions."
                )
            images = [_single_image(row, self.image_key, index) for index, row in enumerate(columns[self.image_key])]
            source = f"column {self.image_key!r}"
        if len(images) != len(completions):
            raise ValueError(
                f"{source} gave {len(images)} images for {len(completions)} completions; it must give exactly one "
                "image (or None) per completion."
            )
        return images


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a plain string, or the last message of a conversational completion.

    Example:
        >>> completion_text([{"role": "assistant", "content": "a red fox"}])
        'a red fox'
    """
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def _single_image(row: Any, key: str, index: int) -> Any:
    if isinstance(row, (list, tuple)):
        if len(row) == 1:
            return row[0]
        raise ImageInputError(
            f"column {key!r} row {index} holds {len(row)} images; the quality reward scores one image per completion. "
            "Pass image_fn= to pick the image to score."
        )
    return row


def _tensor_list(images: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    batch = [images] if isinstance(images, torch.Tensor) else list(images)
    if not batch:
        raise ImageInputError("No images given: pass a float tensor (N, 3, H, W) or a list of (3, H, W) tensors.")
    for index, image in enumerate(batch):
        name = "images" if isinstance(images, torch.Tensor) else f"images[{index}]"
        expected = 4 if isinstance(images, torch.Tensor) else 3
        if not isinstance(image, torch.Tensor) or not image.is_floating_point():
            kind = type(image).__name__ if not isinstance(image, torch.Tensor) else f"tensor of {image.dtype}"
            raise ImageInputError(
                f"{name} is a {kind}; the differentiable reward takes float tensors (N, 3, H, W), since uint8 "
                "pixels or PIL images carry no gradient. Use scorer.as_reward() for those."
            )
        if image.ndim != expected or image.shape[-3] != 3:
            raise ImageInputError(
                f"{name} has shape {tuple(image.shape)}; expected {'(N, 3, H, W)' if expected == 4 else '(3, H, W)'} "
                "RGB, channels first (use .permute(0, 3, 1, 2) for NHWC)."
            )
        if min(image.shape[-2:]) < MIN_SIDE:
            raise ImageInputError(f"{name} has sides {tuple(image.shape[-2:])}; both must be at least {MIN_SIDE}.")
        if not torch.isfinite(image).all():
            raise ImageInputError(f"{name} contains NaN or infinite values; check the model output that produced it.")
    return batch


def _enable_checkpointing(model: torch.nn.Module) -> None:
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24
        if not model.is_activation_checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False})
    elif not model.is_gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _check_range(input_range: tuple[float, float]) -> tuple[float, float]:
    low, high = (float(value) for value in input_range)
    if not high > low:
        raise ValueError(f"input_range={input_range} must be (low, high) with low < high, e.g. (0, 1) or (-1, 1).")
    return low, high


def _to_unit(scores: np.ndarray) -> np.ndarray:
    low, high = VisualQualityScorer.score_range
    return ((scores - low) / (high - low)).astype(np.float32)
