"""`VisualQualityScorer`: VisualQuality-R1 as a deterministic, batched, one-forward image-quality scorer.

The hot path (`score`): canonical RGB images sized by Qwen's smart-resize rule -> the VisualQuality-R1
non-thinking prompt with the answer prefix `<answer>` forced -> one left-padded batched forward that keeps only the
last position's logits -> softmax over the digit tokens "1".."5" -> expected score in [1, 5]. No sampling, so an
image always gets the same score, whatever else is in its batch.

`generate` is the reference "generate, then parse" path of the official README, and thinking mode, which also
returns the model's reasoning. Both use the one parser in `vq_reward.parsing`.
"""

import importlib.util
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, PreTrainedModel, ProcessorMixin

from vq_reward import prompts
from vq_reward.images import MAX_INPUT_PIXELS, Images, resize_for_model, to_rgb_images
from vq_reward.parsing import parse_answer


if TYPE_CHECKING:
    from vq_reward.qinsight import Comparison, Degradation
    from vq_reward.rewards import DifferentiableQualityReward, QualityReward, TrlQualityReward


DIGITS = ("1", "2", "3", "4", "5")


@dataclass(frozen=True)
class ScoreDetails:
    """The single-token readout of a batch of images, in input order.

    Attributes:
        scores: `(N,)` expected score, `sum_k k * probs[:, k-1]`, in [1, 5].
        probs: `(N, 5)` softmax over the logits of the tokens "1".."5" only.
        digit_mass: `(N,)` the probability of those five tokens among *all* tokens. A fine-tuned checkpoint puts
            nearly all its mass there after `<answer>`; a low value means the prefix or checkpoint does not fit the
            readout (a health figure, not part of the score).
    """

    scores: torch.Tensor
    probs: torch.Tensor
    digit_mass: torch.Tensor


@dataclass(frozen=True)
class Rating:
    """One generated answer.

    Attributes:
        score: the parsed score clipped into [1, 5]; `None` when the answer holds no number (never made up).
        raw_score: the number as the model wrote it, before clipping (e.g. 7.0 or -1.0); `None` likewise.
        reasoning: the text of the last `<think>` block (thinking mode), else `None`.
        text: the whole decoded completion.
    """

    score: float | None
    raw_score: float | None
    reasoning: str | None
    text: str


class VisualQualityScorer:
    """Score image quality from 1 (very poor) to 5 (excellent) with a VisualQuality-R1 checkpoint.

    The constructor takes a ready model and processor and touches no network; `from_pretrained` does the loading.

    Args:
        model: a Qwen2.5-VL image-text-to-text model (the VisualQuality-R1 checkpoints are).
        processor: its processor. Its pixel budget (`image_processor.size`) is the one images are resized to.
        prompt_style: "visualquality-r1" (default) or "q-insight": which model's prompts and answer format `score`
            and `generate` use. Q-Insight checkpoints get Q-Insight's system prompt and score question, and the
            readout forces an empty `<think>` block and `<answer>\n{"rating": ` (see `vq_reward.qinsight`).
        question: the question text; the style's own by default (wrapped in the VisualQuality-R1 answer template
            for that style, used as it is for Q-Insight).
        system: a system prompt; `None` keeps the style's (the chat template's default for VisualQuality-R1, as in
            its official training).
        answer_prefix: text forced after the assistant turn starts, so the next token is the score's first digit;
            `None` keeps the style's.
        batch_size: images per forward pass, unless a call says otherwise.
        add_vision_id: label images "Picture 1: " (the official README does, the official training does not).
        max_input_pixels: larger inputs are refused before decoding (decompression-bomb guard).

    Example:
        >>> scorer = VisualQualityScorer.from_pretrained("TianheWu/VisualQuality-R1-7B")  # doctest: +SKIP
        >>> scorer.score(["a.png", "b.jpg"])  # doctest: +SKIP
        tensor([3.8125, 2.1406])
    """

    score_range = (1.0, 5.0)
    higher_is_better = True

    def __init__(
        self,
        model: PreTrainedModel,
        processor: ProcessorMixin,
        *,
        prompt_style: Literal["visualquality-r1", "q-insight"] = "visualquality-r1",
        question: str | None = None,
        system: str | None = None,
        answer_prefix: str | None = None,
        batch_size: int = 8,
        add_vision_id: bool = False,
        max_input_pixels: int = MAX_INPUT_PIXELS,
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        if prompt_style not in _STYLE_DEFAULTS:
            raise ValueError(f"prompt_style must be one of {sorted(_STYLE_DEFAULTS)}, got {prompt_style!r}.")
        defaults = _STYLE_DEFAULTS[prompt_style]
        self.prompt_style = prompt_style
        self.question = question if question is not None else defaults["question"]
        self.system = system if system is not None else defaults["system"]
        self.answer_prefix = answer_prefix if answer_prefix is not None else defaults["answer_prefix"]
        self.batch_size = batch_size
        self.add_vision_id = add_vision_id
        self.max_input_pixels = max_input_pixels
        self.digit_ids = digit_token_ids(processor.tokenizer)
        # Reward loops call from worker threads; one forward at a time keeps the model's state consistent.
        self._lock = threading.RLock()
        self._prompt_cache: dict[bool, str] = {}
        # How `from_pretrained` loaded this scorer (model id and arguments, no device): reward adapters pickle this
        # instead of the weights and load a copy lazily in the process that unpickles them.
        self._load_args: tuple[str, dict[str, Any]] | None = None
        self._onload_device: torch.device | None = None

    @classmethod
    def from_pretrained(
        cls,
        model_id_or_path: str | os.PathLike,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        attn_implementation: str = "sdpa",
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        revision: str | None = None,
        **scorer_kwargs,
    ) -> "VisualQualityScorer":
        """Load a checkpoint from the Hugging Face hub or a local folder.

        Args:
            model_id_or_path: e.g. "TianheWu/VisualQuality-R1-7B", or a folder written by `save_pretrained` or
                `vq-reward make-tiny`.
            device: where the model runs; you choose, nothing is picked for you.
            dtype: `None` means bfloat16 on CUDA and float32 elsewhere.
            attn_implementation: "sdpa" (default, everywhere), "flash_attention_2" (CUDA, `pip install
                'vq-reward[flash]'`) or "eager".
            min_pixels / max_pixels: the pixel budget images are resized into; `None` keeps the checkpoint's
                (3136 / 12845056 for the 7B checkpoints).
            revision: a hub revision (branch, tag or commit).
            **scorer_kwargs: passed to the constructor (`question`, `batch_size`, ...).
        """
        if attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise ImportError(
                "attn_implementation='flash_attention_2' needs flash-attn: pip install 'vq-reward[flash]' on a CUDA "
                "machine, or use attn_implementation='sdpa'."
            )
        # Recorded before the defaults resolve, so a lazily loaded copy on another device gets that device's dtype.
        load_kwargs = {"dtype": dtype, "attn_implementation": attn_implementation, "revision": revision}
        device = torch.device(device)
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        budget = {key: value for key, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if value}
        processor = AutoProcessor.from_pretrained(model_id_or_path, revision=revision, padding_side="left", **budget)
        # Hub configs can silently override a `size` argument; make sure the budget asked for is the one in force.
        size = processor.image_processor.size
        for key, edge in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
            if key in budget and size[edge] != budget[key]:
                raise RuntimeError(f"asked for {key}={budget[key]} but the processor uses {size[edge]}")
        model = AutoModelForImageTextToText.from_pretrained(
            model_id_or_path, revision=revision, dtype=dtype, attn_implementation=attn_implementation
        ).to(device)
        scorer = cls(model, processor, **scorer_kwargs)
        scorer._load_args = (str(model_id_or_path), {**load_kwargs, **budget, **scorer_kwargs})
        return scorer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def min_pixels(self) -> int:
        return int(self.processor.image_processor.size["shortest_edge"])

    @property
    def max_pixels(self) -> int:
        return int(self.processor.image_processor.size["longest_edge"])

    def to(self, device: str | torch.device) -> "VisualQualityScorer":
        """Move the model to `device` and return the scorer."""
        with self._lock:
            self.model.to(device)
        return self

    def offload(self) -> "VisualQualityScorer":
        """Move the model to CPU memory and free its accelerator memory; `onload()` brings it back.

        For RL loops that share a GPU between the policy and the reward: offload while the policy trains, onload
        before scoring. The dtype is kept (bf16 stays bf16). A no-op for a model already on CPU.

        Example:
            >>> scorer.offload()  # doctest: +SKIP
            >>> ...  # policy update with the freed GPU memory
            >>> scores = scorer.onload().score(images)  # doctest: +SKIP
        """
        with self._lock:
            device = self.device
            if device.type != "cpu":
                self._onload_device = device
                self.model.to("cpu")
                backend = getattr(torch, device.type, None)
                if hasattr(backend, "empty_cache"):
                    backend.empty_cache()
        return self

    def onload(self, device: str | torch.device | None = None) -> "VisualQualityScorer":
        """Move the model back to the device it was offloaded from, or to `device` when given."""
        with self._lock:
            target = device if device is not None else self._onload_device
            if target is not None:
                self.model.to(target)
                self._onload_device = None
        return self

    def as_reward(self, input_range: tuple[float, float] = (0.0, 1.0), rescale: bool = False) -> "QualityReward":
        """A DDPO / Flow-GRPO / DanceGRPO reward: `fn(images, prompts, metadata) -> (np.float32[N], info)`.

        Takes diffusers `output_type="pt"` tensors (NCHW in [0, 1]), raw VAE output with `input_range=(-1, 1)`,
        numpy NHWC or PIL lists; thread-safe; `rescale=True` maps the 1..5 score to [0, 1]. See
        `vq_reward.rewards.QualityReward`.

        Example:
            >>> reward_fn = scorer.as_reward()  # doctest: +SKIP
            >>> scores, info = reward_fn(pipe(prompts, output_type="pt").images, prompts, metadata)  # doctest: +SKIP
        """
        from vq_reward.rewards import QualityReward

        return QualityReward(self, input_range=input_range, rescale=rescale)

    def as_differentiable_reward(
        self, input_range: tuple[float, float] = (0.0, 1.0), gradient_checkpointing: bool = False
    ) -> "DifferentiableQualityReward":
        """A DRaFT / AlignProp / ReFL reward: `fn(images: Tensor[N, 3, H, W]) -> Tensor[N]` with a graph to the pixels.

        The model stays frozen; see `vq_reward.rewards.DifferentiableQualityReward` for the memory notes.

        Example:
            >>> reward_fn = scorer.as_differentiable_reward(input_range=(-1, 1))  # doctest: +SKIP
            >>> loss = -reward_fn(vae.decode(latents / scale).sample).mean()  # doctest: +SKIP
        """
        from vq_reward.rewards import DifferentiableQualityReward

        return DifferentiableQualityReward(
            self, input_range=input_range, gradient_checkpointing=gradient_checkpointing
        )

    def as_trl_reward(
        self, image_key: str | None = "image", image_fn: Callable[..., Sequence[Any]] | None = None
    ) -> "TrlQualityReward":
        """A `trl.GRPOTrainer` reward function, named "visual_quality"; see `vq_reward.rewards.TrlQualityReward`.

        Images come from the dataset or rollout column `image_key`, or from `image_fn(prompts=..., completions=[text,
        ...], **columns)`, which turns completions into images (returning `None` for any it cannot render).

        Example:
            >>> reward = scorer.as_trl_reward(image_key=None, image_fn=render)  # doctest: +SKIP
            >>> trainer = GRPOTrainer(model=policy, reward_funcs=[reward], ...)  # doctest: +SKIP
        """
        from vq_reward.rewards import TrlQualityReward

        return TrlQualityReward(self, image_key=image_key, image_fn=image_fn)

    def prepare(self, images: Images, input_range: tuple[float, float] = (0.0, 1.0)) -> list[Image.Image]:
        """The canonical form of `images`: RGB PIL images at the size the model sees (see `vq_reward.images`)."""
        rgb = to_rgb_images(images, input_range=input_range, max_input_pixels=self.max_input_pixels)
        return [resize_for_model(image, self.min_pixels, self.max_pixels) for image in rgb]

    def score(
        self, images: Images, batch_size: int | None = None, input_range: tuple[float, float] = (0.0, 1.0)
    ) -> torch.Tensor:
        """Expected quality score of each image, a float32 CPU tensor of shape `(N,)` in [1, 5].

        Args:
            images: a path, PIL image, numpy HWC/NHWC array, torch NCHW/CHW tensor, or a list mixing these.
            batch_size: images per forward pass (the scorer's default when `None`). Images are sorted by size
                inside the call so batches pad little; results come back in input order.
            input_range: value range of float arrays and tensors, (0, 1) or (-1, 1) for raw VAE output.

        Example:
            >>> scorer.score(torch.rand(2, 3, 224, 224))  # doctest: +SKIP
            tensor([2.9731, 3.0112])
        """
        return self.score_details(images, batch_size=batch_size, input_range=input_range).scores

    __call__ = score

    def score_details(
        self, images: Images, batch_size: int | None = None, input_range: tuple[float, float] = (0.0, 1.0)
    ) -> ScoreDetails:
        """Like `score`, with the digit distribution and its probability mass (see `ScoreDetails`)."""
        prepared = self.prepare(images, input_range=input_range)
        logits = torch.empty(len(prepared), len(self.digit_ids))
        mass = torch.empty(len(prepared))
        for indices in self._size_sorted_batches(prepared, batch_size):
            last = self._last_logits([prepared[i] for i in indices])
            logits[indices] = last[:, self.digit_ids].cpu()
            mass[indices] = last.softmax(-1)[:, self.digit_ids].sum(-1).cpu()
        probs = logits.softmax(-1)
        scores = probs @ torch.arange(1.0, len(DIGITS) + 1.0)
        return ScoreDetails(scores=scores, probs=probs, digit_mass=mass)

    def generate(
        self,
        images: Images,
        thinking: bool = False,
        *,
        batch_size: int | None = None,
        do_sample: bool = True,
        temperature: float | None = None,
        top_k: int | None = 50,
        top_p: float | None = 1.0,
        max_new_tokens: int | None = None,
        input_range: tuple[float, float] = (0.0, 1.0),
    ) -> list[Rating]:
        """Generate an answer per image and parse it: the official README's path, and thinking mode.

        The defaults are the README's: sampling with top_k=50, top_p=1 and the checkpoint's temperature, up to 2048
        new tokens with thinking and 512 without. Pass `do_sample=False` for greedy decoding. Unlike `score`, a
        sampled answer changes from call to call; use it for reasoning, or for parity with the official numbers.

        Returns:
            One `Rating` per image, in input order. An answer without a number has `score=None`.
        """
        prepared = self.prepare(images, input_range=input_range)
        settings: dict = {"do_sample": do_sample, "max_new_tokens": max_new_tokens or (2048 if thinking else 512)}
        if do_sample:
            settings.update(
                {k: v for k, v in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p)) if v is not None}
            )
        texts: list[str] = [""] * len(prepared)
        for indices in self._size_sorted_batches(prepared, batch_size):
            batch = [prepared[i] for i in indices]
            for i, text in zip(indices, self._generate_texts(batch, thinking, settings), strict=True):
                texts[i] = text
        return [_rating(text) for text in texts]

    def _size_sorted_batches(self, images: list[Image.Image], batch_size: int | None) -> Iterator[list[int]]:
        size = self.batch_size if batch_size is None else batch_size
        if size < 1:
            raise ValueError(f"batch_size must be at least 1, got {size}.")
        order = sorted(range(len(images)), key=lambda i: images[i].width * images[i].height, reverse=True)
        for start in range(0, len(order), size):
            yield order[start : start + size]

    def degradation(self, images: Images, thinking: bool = False, **generate_kwargs) -> "list[Degradation]":
        """Q-Insight degradation perception: distortion class and severity of each image.

        `thinking=False` is the deterministic one-forward readout over the closed set of answers (probabilities
        of every class and severity); `thinking=True` samples the model's reasoning and parses its answer
        (`generate_kwargs` go to `model.generate`). Meaningful on Q-Insight-trained checkpoints; see
        `vq_reward.qinsight`.

        Example:
            >>> scorer.degradation("photo.jpg")[0].distortion_class  # doctest: +SKIP
            'blur'
        """
        from vq_reward import qinsight

        if thinking:
            return qinsight.generate_degradation(self, images, **generate_kwargs)
        return qinsight.read_degradation(self, images)

    def compare(
        self, reference: Images, image_a: Images, image_b: Images, thinking: bool = False, **generate_kwargs
    ) -> "list[Comparison]":
        """Q-Insight comparison: is enhanced image A or B better, given the degraded reference, or are they similar?

        One result per (reference, A, B) triple, as "Image A", "Image B" or "Similar"; readout or generate path as
        in `degradation`.

        Example:
            >>> scorer.compare("lq.png", "sr_a.png", "sr_b.png")[0].probs  # doctest: +SKIP
            {'Image A': 0.71, 'Image B': 0.18, 'Similar': 0.11}
        """
        from vq_reward import qinsight

        if thinking:
            return qinsight.generate_comparison(self, reference, image_a, image_b, **generate_kwargs)
        return qinsight.read_comparison(self, reference, image_a, image_b)

    def _prompt(self, thinking: bool) -> str:
        if thinking not in self._prompt_cache:
            text = (
                self.question if self.prompt_style == "q-insight" else prompts.quality_prompt(thinking, self.question)
            )
            message = prompts.image_message(text, self.system)
            self._prompt_cache[thinking] = self.processor.apply_chat_template(
                message, tokenize=False, add_generation_prompt=True, add_vision_id=self.add_vision_id
            )
        return self._prompt_cache[thinking]

    def _inputs(self, images: list[Image.Image], text: str) -> dict:
        # The processor's whole output goes to the model: transformers 5 needs `mm_token_type_ids` for M-RoPE
        # positions and silently computes wrong ones without it.
        batch = self.processor(
            text=[text] * len(images), images=images, padding=True, padding_side="left", return_tensors="pt"
        )
        return batch.to(self.device)

    def _last_logits(self, images: list[Image.Image]) -> torch.Tensor:
        inputs = self._inputs(images, self._prompt(thinking=False) + self.answer_prefix)
        with self._lock, torch.inference_mode():
            output = self.model(**inputs, logits_to_keep=1, use_cache=False)
        return output.logits[:, -1].float()

    def _generate_texts(self, images: list[Image.Image], thinking: bool, settings: dict) -> list[str]:
        inputs = self._inputs(images, self._prompt(thinking))
        with self._lock, torch.inference_mode():
            output = self.model.generate(**inputs, **settings)
        completions = output[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(completions, skip_special_tokens=True, clean_up_tokenization_spaces=False)


_STYLE_DEFAULTS: dict[str, dict[str, str | None]] = {
    "visualquality-r1": {"question": prompts.QUALITY_QUESTION, "system": None, "answer_prefix": prompts.ANSWER_PREFIX},
    "q-insight": {
        "question": prompts.QINSIGHT_SCORE_QUESTION,
        "system": prompts.QINSIGHT_SYSTEM,
        "answer_prefix": prompts.QINSIGHT_ANSWER_PREFIX + '{"rating": ',
    },
}


def _rating(text: str) -> Rating:
    parsed = parse_answer(text)
    low, high = VisualQualityScorer.score_range
    score = None if parsed.score is None else min(max(parsed.score, low), high)
    return Rating(score=score, raw_score=parsed.score, reasoning=parsed.reasoning, text=text)


def digit_token_ids(tokenizer) -> list[int]:
    """The ids of the tokens "1".."5" that the single-token readout reads; each digit must be one token."""
    ids = []
    for text in DIGITS:
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(
                f"The tokenizer splits {text!r} into {len(encoded)} tokens; the single-token readout needs each digit "
                "1-5 to be one token, as in Qwen2/Qwen2.5 tokenizers. Use a Qwen2.5-VL based checkpoint."
            )
        ids.extend(encoded)
    return ids
