"""`VisualQualityScorer`: a VisualQuality-R1 (or Q-Insight) checkpoint as a deterministic, batched image scorer.

The hot path (`score`): inputs checked and sized from their headers -> sorted by size and decoded a batch at a
time into RGB at Qwen's smart-resize size -> the model family's non-thinking prompt with its answer prefix forced
(`<answer>` for VisualQuality-R1) -> one left-padded batched forward -> the readout (`vq_reward.readout`). No
sampling, so an image always gets the same score.

`generate` is the reference "generate, then parse" path of the official code, and thinking mode, which also
returns the model's reasoning. The model runs in a backend (`vq_reward.backends`: HF in this process, vLLM, or
servers), built complete before the scorer gets it. Every score a call returns is a finite number in [1, 5];
anything else raises `NonFiniteScoreError`, naming the images (`vq_reward.scores`: what the calls return).

Beside the scorer: the reward adapters (`vq_reward.rewards`, which the `as_*` methods construct), and the HF
backend's own capabilities, which `degradation`, `compare` (the Q-Insight readouts, on prepared and batched
images), `to`, `offload` and `onload` hand over to it.
"""

import contextlib
import inspect
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import torch
from PIL import Image
from transformers import PreTrainedModel, ProcessorMixin

from vq_reward import prompts
from vq_reward.backends import Backend, BackendSource
from vq_reward.backends.build import build_backend
from vq_reward.backends.hf import HFBackend
from vq_reward.images import MAX_INPUT_PIXELS, Images, ImageSource, check_input_range, image_sources, resize_for_model
from vq_reward.readout import READOUTS, NumberTokens, Request, ScoreDetails, chat_text
from vq_reward.scores import (
    NO_REASONING_WARNING,
    SCORE_RANGE,
    NonFiniteScoreError,
    Rating,
    check_finite,
    in_input_order,
    mean_over_views,
)
from vq_reward.views import Views, as_views, source_view


if TYPE_CHECKING:
    from vq_reward.qinsight import Comparison, Degradation
    from vq_reward.rewards import DifferentiableQualityReward, QualityReward, TrlQualityReward


# The public names; Rating and NonFiniteScoreError are defined in vq_reward.scores and importable from here too.
__all__ = ["NonFiniteScoreError", "Rating", "ScorerRecipe", "VisualQualityScorer"]
T = TypeVar("T")


@dataclass(frozen=True)
class ScorerRecipe:
    """How to load a copy of a scorer: what reward adapters pickle instead of the weights.

    Attributes:
        model: an absolute local folder or a hub id (for a server scorer: the served model id); a recipe written by
            hand may use any name `from_pretrained` takes.
        load: the backend's arguments (`BackendSource.kwargs`): dtype, attention, revision and pixel budget; vLLM's
            engine arguments; a server's URLs and client settings. A hand-written recipe may mix in settings.
        settings: the scorer's settings at the time the recipe was taken (prompt, readout, batch size, ...).
        backend: "hf", "vllm" or "server".
    """

    model: str
    load: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    backend: str = "hf"

    def build(self, device: str | torch.device | None = None) -> "VisualQualityScorer":
        """Load the scorer this recipe describes (onto `device` for the HF backend; the others ignore it)."""
        settings, load = _split_settings(self.load)
        backend = build_backend(BackendSource(self.backend, self.model, load), device)
        return VisualQualityScorer(backend, **settings, **self.settings)


class VisualQualityScorer:
    """Score image quality from 1 (very poor) to 5 (excellent) with a VisualQuality-R1 or Q-Insight checkpoint.

    The constructor takes a ready model and processor (or a built backend) and touches no network;
    `from_pretrained` and `from_server` do the loading. It puts a model in eval mode and freezes its weights
    (`requires_grad_(False)`): the scorer never trains it, and the differentiable reward must not accumulate
    gradients in it. Pass `copy.deepcopy(model)` to keep yours trainable; a warning says so when the model you pass
    had trainable weights.

    Args:
        model: a Qwen2.5-VL image-text-to-text model (the VisualQuality-R1 and Q-Insight checkpoints are), or a
            backend (`vq_reward.backends`), which holds its own processor.
        processor: the model's processor; its pixel budget (`image_processor.size`) is the one images are resized
            to. Not needed with a backend.
        prompt_style: "visualquality-r1" (default) or "q-insight": which family's prompts, answer prefix and
            sampling defaults `score` and `generate` use (`prompts.STYLES`).
        question: the question text; the style's own by default (wrapped in the VisualQuality-R1 answer template
            for that style, used as it is for Q-Insight).
        system: a system prompt; `None` keeps the style's (the chat template's default for VisualQuality-R1, as in
            its official training).
        answer_prefix: text forced after the assistant turn starts, so the next token is the score's first digit;
            `None` keeps the style's.
        readout: "number" (default): the exact expected value of the model's two-decimal answer, read in the same
            single forward; "first-digit": the expectation over the first digit "1".."5" alone, the cheapest read
            (`vq_reward.readout`). `score(..., readout=...)` overrides it per call.
        batch_size: images per forward pass, unless a call says otherwise.
        add_vision_id: label images "Picture 1: " (the official README does, the official training does not).
        max_input_pixels: larger inputs are refused before decoding (decompression-bomb guard).
        exif_transpose: turn inputs with an EXIF orientation upright (default); False scores the stored pixels as
            they are, as the official code does.

    Example:
        >>> scorer = VisualQualityScorer.from_pretrained("tiny")
        >>> scorer.score(torch.rand(2, 3, 56, 56)).shape
        torch.Size([2])
    """

    score_range = SCORE_RANGE
    higher_is_better = True

    def __init__(
        self,
        model: PreTrainedModel | Backend,
        processor: ProcessorMixin | None = None,
        *,
        prompt_style: Literal["visualquality-r1", "q-insight"] = "visualquality-r1",
        question: str | None = None,
        system: str | None = None,
        answer_prefix: str | None = None,
        readout: Literal["number", "first-digit"] = "number",
        batch_size: int = 8,
        add_vision_id: bool = False,
        max_input_pixels: int = MAX_INPUT_PIXELS,
        exif_transpose: bool = True,
    ) -> None:
        if prompt_style not in prompts.STYLES:
            raise ValueError(f"prompt_style must be one of {sorted(prompts.STYLES)}, got {prompt_style!r}.")
        _check_readout(readout)
        _check_batch_size(batch_size)
        if isinstance(model, torch.nn.Module):
            if processor is None:
                raise TypeError("VisualQualityScorer(model, processor): a model object needs its processor.")
            if any(parameter.requires_grad for parameter in model.parameters()):
                warnings.warn(
                    "VisualQualityScorer froze the model you passed (requires_grad_(False)) and put it in eval mode; "
                    "pass copy.deepcopy(model) to keep yours trainable.",
                    stacklevel=2,
                )
            model = HFBackend(model.eval().requires_grad_(False), processor)
        elif processor is not None and processor is not model.processor:
            raise ValueError(
                f"the {model.name} backend holds its own processor; pass the backend alone, or build the backend with "
                "the processor you want."
            )
        self.backend: Backend = model
        style = prompts.STYLES[prompt_style]
        self.prompt_style = prompt_style
        self.question = question if question is not None else style.question
        self.system = system if system is not None else style.system
        self.answer_prefix = answer_prefix if answer_prefix is not None else style.answer_prefix
        self.readout = readout
        self.batch_size = batch_size
        self.add_vision_id = add_vision_id
        self.max_input_pixels = max_input_pixels
        self.exif_transpose = exif_transpose
        self.tokens = NumberTokens.of(self.processor.tokenizer)
        # Reward loops call from worker threads: one batch at a time through the processor and the model.
        self.lock = threading.RLock()
        self._requests: dict[tuple, Request] = {}

    @classmethod
    def from_pretrained(
        cls,
        model_id_or_path: str | os.PathLike,
        *,
        backend: Literal["hf", "vllm"] = "hf",
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        attn_implementation: str = "sdpa",
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        revision: str | None = None,
        **kwargs: Any,
    ) -> "VisualQualityScorer":
        """Load a checkpoint: "tiny" (the offline smoke model), a local folder, or a Hugging Face hub id.

        Args:
            model_id_or_path: e.g. "TianheWu/VisualQuality-R1-7B", a folder written by `save_pretrained` or by
                training, or "tiny".
            backend: "hf" (default): the transformers model in this process; "vllm": vLLM's offline engine in this
                process (`vq_reward.backends.vllm`; needs vLLM installed), same prompts, pixel budget and readouts.
            device: where the HF model runs; `None`: CUDA when available, else CPU (as `vq-reward score`; the
                first choice made is logged once). vLLM picks its own devices.
            dtype: `None` means the checkpoint's own on CUDA (bfloat16 for the 7B; float32 for the smoke models) and
                float32 elsewhere.
            attn_implementation: "sdpa" (default, everywhere), "flash_attention_2" (CUDA, `pip install
                'vq-reward[flash]'`; the tree readouts still run the language model on SDPA) or "eager". HF only.
            min_pixels / max_pixels: the pixel budget images are resized into; `None` keeps the checkpoint's
                (3136 / 12845056 for the 7B checkpoints).
            revision: a hub revision (branch, tag or commit).
            **kwargs: constructor settings (`question`, `readout`, `batch_size`, ...); with `backend="vllm"` the
                others are `vllm.LLM` engine arguments (`tensor_parallel_size`, `gpu_memory_utilization`,
                `max_model_len`, `kv_cache_memory_bytes`, `enable_prefix_caching`, `seed`, `enforce_eager`, ...).
        """
        settings, engine = _split_settings(kwargs)
        load = {"dtype": dtype, "min_pixels": min_pixels, "max_pixels": max_pixels, "revision": revision}
        if backend == "hf":
            if engine:
                raise TypeError(
                    f"from_pretrained() got unexpected keyword arguments {sorted(engine)} (engine arguments apply to "
                    "backend='vllm' only)."
                )
            load["attn_implementation"] = attn_implementation
        elif backend != "vllm":  # vLLM picks its own attention
            raise ValueError(f"backend must be 'hf' or 'vllm' (servers: from_server), got {backend!r}.")
        return cls(build_backend(BackendSource(backend, os.fspath(model_id_or_path), {**load, **engine}), device),
                   **settings)  # fmt: skip

    @classmethod
    def from_server(cls, url_or_urls: str | Sequence[str], **kwargs: Any) -> "VisualQualityScorer":
        """Score with the model behind vLLM OpenAI-compatible servers (`vq-reward serve MODEL`), e.g. the reward of
        a training loop on other GPUs. Same prompts, pixel budget, readouts and results as `from_pretrained`.

        Args:
            url_or_urls: "http://host:port", or a list of URLs serving the same model: images are spread over
                them, all requests of one image to one server (data parallel across servers).
            **kwargs: constructor settings (`question`, `readout`, `batch_size`, ...), and the client's arguments
                (`vq_reward.backends.server.ServerBackend`, where their defaults are): `model` (the served model
                id; `None` takes the one model served), `processor` (a processor, local folder or hub id; `None`:
                the served model's own), `min_pixels` / `max_pixels` (the server's pixel budget, when it was started
                with another than the checkpoint's), `timeout` (seconds one request may take), `retries`,
                `max_workers` (requests in flight) and `api_key`.

        Example (not run here: it needs a server):
            >>> scorer = VisualQualityScorer.from_server("http://localhost:8000")  # doctest: +SKIP
            >>> reward_fn = scorer.as_reward()  # doctest: +SKIP
        """
        from vq_reward.backends.server import ServerBackend

        settings, client_kwargs = _split_settings(kwargs)
        return cls(ServerBackend(url_or_urls, **client_kwargs), **settings)

    @property
    def model(self) -> PreTrainedModel:
        """The in-process HF model (the "hf" backend only: vLLM's engine and servers hold theirs elsewhere)."""
        return self.hf_backend().model

    @property
    def processor(self) -> ProcessorMixin:
        """The backend's processor: its tokenizer, chat template and pixel budget make the prompts and images."""
        return self.backend.processor

    def hf_backend(self) -> HFBackend:
        """The HF backend, which the differentiable reward, the Q-Insight readouts and device moves need."""
        if not isinstance(self.backend, HFBackend):
            raise TypeError(
                f"this scorer runs on the {self.backend.name} backend, which has no in-process model; the "
                "differentiable reward, the Q-Insight readouts and device moves need "
                "from_pretrained(..., backend='hf')."
            )
        return self.backend

    @property
    def device(self) -> torch.device:
        return self.backend.device if isinstance(self.backend, HFBackend) else torch.device("cpu")

    @property
    def min_pixels(self) -> int:
        return int(self.processor.image_processor.size["shortest_edge"])

    @property
    def max_pixels(self) -> int:
        return int(self.processor.image_processor.size["longest_edge"])

    def settings(self) -> dict[str, Any]:
        """The constructor settings as they are now (changed attributes included), e.g. for a copy."""
        return {name: getattr(self, name) for name in SETTINGS}

    def recipe(self) -> ScorerRecipe:
        """How to load a copy that scores exactly like this scorer (current settings, absolute model path).

        Raises `TypeError` for a scorer built from a model object, which has no recipe but its weights.
        """
        source = self.backend.source()
        return ScorerRecipe(model=source.model, load=dict(source.kwargs), settings=self.settings(),
                            backend=source.backend)  # fmt: skip

    def prompt(self, thinking: bool = False) -> str:
        """The chat-templated prompt (assistant turn opened) for one image; the readouts append `answer_prefix`."""
        return self.request(thinking).text

    def readout_prompt(self) -> str:
        """The text the score readouts read after: the non-thinking prompt plus the forced answer prefix."""
        return self.prompt(thinking=False) + self.answer_prefix

    def request(self, thinking: bool = False, forced: bool = True) -> Request:
        """What a batch asks the model: the chat, its rendered text, and (with `forced`) the answer prefix."""
        key = (thinking, self.prompt_style, self.question, self.system, self.add_vision_id)
        if key not in self._requests:  # rendering the chat template costs more than a batch's bookkeeping
            text = prompts.STYLES[self.prompt_style].user_text(self.question, thinking)
            messages = prompts.image_message(text, self.system)
            rendered = chat_text(self.processor, messages, add_vision_id=self.add_vision_id)
            self._requests[key] = Request(messages=messages, text=rendered)
        return replace(self._requests[key], answer_prefix=self.answer_prefix if forced else "")

    def prepare(self, images: Images, input_range: tuple[float, float] = (0.0, 1.0)) -> list[Image.Image]:
        """The canonical form of `images`: RGB PIL images at the size the model sees (see `vq_reward.images`)."""
        return [self._resized(source) for source in self._sources(images, input_range)]

    def score(
        self,
        images: Images,
        batch_size: int | None = None,
        input_range: tuple[float, float] = (0.0, 1.0),
        readout: Literal["number", "first-digit"] | None = None,
        views: int | Views = 1,
    ) -> torch.Tensor:
        """Expected quality score of each image, a float32 CPU tensor of shape `(N,)` in [1, 5].

        Args:
            images: a path, PIL image, numpy HWC/NHWC array, torch NCHW/CHW tensor, or a list mixing these.
            batch_size: images per forward pass (the scorer's default when `None`). Images are sorted by size
                inside the call so batches pad little; results come back in input order.
            input_range: value range of float arrays and tensors, (0, 1) or (-1, 1) for raw VAE output.
            readout: "number" or "first-digit"; the scorer's `readout` when `None`.
            views: K > 1 scores the mean over K deterministic views of each image at the model's size (view 0 the
                image itself, then seeded crops and rescales, `vq_reward.views`), so an artifact tuned to one exact
                view earns less. Costs K forwards per image. A `Views` also sets the crops, scales and a JPEG trip.

        Example:
            >>> scorer.score(torch.rand(2, 3, 56, 56)).shape
            torch.Size([2])
        """
        return self.score_details(images, batch_size, input_range, readout, views).scores

    __call__ = score

    def score_details(
        self,
        images: Images,
        batch_size: int | None = None,
        input_range: tuple[float, float] = (0.0, 1.0),
        readout: Literal["number", "first-digit"] | None = None,
        views: int | Views = 1,
    ) -> ScoreDetails:
        """Like `score`, with the digit distribution, the score's standard deviation and the health figures.

        With `views=K > 1` the figures describe the mixture of the K views' answers: mean score, probs and health
        figures over the views, and the mixture's std (`vq_reward.views.view_mixture`).

        Raises `NonFiniteScoreError` when a score comes out NaN or infinite (broken weights, float16 overflow, a
        server answering NaN): it names those images, and carries the figures of the whole call.

        Example:
            >>> details = scorer.score_details(torch.rand(2, 3, 56, 56))
            >>> details.probs.shape, details.digit_mass.shape
            (torch.Size([2, 5]), torch.Size([2]))
        """
        name = readout if readout is not None else self.readout
        _check_readout(name)
        spec = as_views(views)
        sources = self._sources(images, input_range)
        # Each image's views are consecutive; view 0 is the image itself, so views=1 scores exactly the sources.
        scored = [source_view(source, k, spec, self.min_pixels, self.max_pixels) for source in sources
                  for k in range(spec.count)]  # fmt: skip
        request = self.request(thinking=False)
        parts = self._each_batch(
            scored, batch_size, lambda batch: self.backend.read_scores(request, batch, self.tokens, name)
        )
        details = in_input_order(parts, len(scored), name)
        if spec.count > 1:
            details = mean_over_views(details, spec.count)
        check_finite(details.scores, [source.name for source in sources], self.backend.name, details)
        return details

    def generate(
        self,
        images: Images,
        thinking: bool = False,
        *,
        batch_size: int | None = None,
        do_sample: bool | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        max_new_tokens: int | None = None,
        input_range: tuple[float, float] = (0.0, 1.0),
    ) -> list[Rating]:
        """Generate an answer per image and parse it: the official "generate, then parse" path, and thinking mode.

        The defaults are the model family's official ones (`prompts.STYLES[...].generation`): for VisualQuality-R1
        sampling with top_k=50, top_p=1 and the checkpoint's temperature, up to 2048 new tokens with thinking and
        512 without. A keyword given here overrides its default; `do_sample=False` decodes greedily. Unlike `score`,
        a sampled answer changes from call to call; use it for reasoning, or for parity with the official numbers.

        Returns:
            One `Rating` per image, in input order. An answer without a number has `score=None`.
        """
        settings = self.generation_settings(thinking, do_sample=do_sample, temperature=temperature, top_k=top_k,
                                            top_p=top_p, max_new_tokens=max_new_tokens)  # fmt: skip
        sources = self._sources(images, input_range)
        request = self.request(thinking, forced=False)
        texts = self._each_batch(sources, batch_size, lambda batch: self.backend.generate(request, batch, settings))
        ratings = [Rating.from_text(text) for text in _ordered(texts, len(sources))]
        if thinking and any(rating.reasoning is None for rating in ratings):
            warnings.warn(NO_REASONING_WARNING, stacklevel=2)
        return ratings

    def generation_settings(self, thinking: bool, **overrides: Any) -> dict[str, Any]:
        """`model.generate` keywords: the family's official defaults, then every override that is not `None`."""
        settings = prompts.STYLES[self.prompt_style].generation_settings(thinking)
        settings.update({key: value for key, value in overrides.items() if value is not None})
        if not settings.get("do_sample", True):
            settings = {k: v for k, v in settings.items() if k not in ("temperature", "top_k", "top_p")}
        return settings

    def degradation(self, images: Images, thinking: bool = False, **generate_kwargs: Any) -> "list[Degradation]":
        """Q-Insight degradation perception: distortion class and severity of each image (see `vq_reward.qinsight`).

        `thinking=False` is the deterministic one-forward readout over the closed set of answers; `thinking=True`
        samples the model's reasoning with Q-Insight's settings (`generate_kwargs` override them). The images are
        prepared and batched by size here and read by the HF backend (`HFBackend.degradation`); other backends
        raise `TypeError`.

        Example:
            >>> from vq_reward.qinsight import DEGRADATION_CLASSES
            >>> found = scorer.degradation(torch.rand(1, 3, 56, 56))[0]
            >>> found.distortion_class in DEGRADATION_CLASSES + ("null",)
            True
        """
        backend, sources = self.hf_backend(), self._sources(images, (0.0, 1.0))
        settings = {**prompts.STYLES["q-insight"].generation_settings(True), **generate_kwargs}
        found = self._each_batch(sources, None, lambda batch: backend.degradation(batch, thinking, settings))
        return _ordered(found, len(sources))

    def compare(
        self, reference: Images, image_a: Images, image_b: Images, thinking: bool = False, **generate_kwargs: Any
    ) -> "list[Comparison]":
        """Q-Insight comparison: is enhanced image A or B better, given the degraded reference, or are they similar?

        One result per (reference, A, B) triple, as "Image A", "Image B" or "Similar"; readout or generate path as
        in `degradation`, read by the HF backend (`HFBackend.compare`) `batch_size` triples at a time.
        """
        backend = self.hf_backend()
        given = {"reference": reference, "image_a": image_a, "image_b": image_b}
        columns = {name: self.prepare(images) for name, images in given.items()}
        if len({len(column) for column in columns.values()}) != 1:
            counts = ", ".join(f"{name}: {len(column)}" for name, column in columns.items())
            raise ValueError(f"compare() needs as many references as A and B images; got {counts}.")
        triples = [list(triple) for triple in zip(*columns.values(), strict=True)]
        settings = {**prompts.STYLES["q-insight"].generation_settings(True), **generate_kwargs}
        results = []
        for start in range(0, len(triples), self.batch_size):
            with self.lock:
                results += backend.compare(triples[start : start + self.batch_size], thinking, settings)
        return results

    def to(self, device: str | torch.device) -> "VisualQualityScorer":
        """Move the model to `device` and return the scorer."""
        with self.lock:
            self.hf_backend().to(device)
        return self

    def offload(self) -> "VisualQualityScorer":
        """Move the model to CPU memory and free its accelerator memory; `onload()` brings it back.

        For RL loops that share a GPU between the policy and the reward: offload while the policy trains, onload
        before scoring. The dtype is kept (bf16 stays bf16). A no-op for a model already on CPU.
        """
        with self.lock:
            self.hf_backend().offload()
        return self

    def onload(self, device: str | torch.device | None = None) -> "VisualQualityScorer":
        """Move the model back to the device it was offloaded from, or to `device` when given."""
        with self.lock:
            self.hf_backend().onload(device)
        return self

    def as_reward(
        self,
        input_range: tuple[float, float] = (0.0, 1.0),
        rescale: bool = False,
        mode: Literal["score", "win-rate"] = "score",
        views: int | Views = 1,
    ) -> "QualityReward":
        """A DDPO / Flow-GRPO / DanceGRPO reward, `fn(images, prompts, metadata) -> (np.float32[N], info)`.

        See `vq_reward.rewards.QualityReward` (`mode="win-rate"`: each image's win rate within its prompt group;
        `views=K`: the mean score over K views, K forwards per image).
        """
        from vq_reward.rewards import QualityReward  # the shortcut's one upward import (tests/test_layers.py)

        return QualityReward(self, input_range=input_range, rescale=rescale, mode=mode, views=views)

    def as_differentiable_reward(
        self,
        input_range: tuple[float, float] = (0.0, 1.0),
        gradient_checkpointing: bool = False,
        views: int | Views = 1,
    ) -> "DifferentiableQualityReward":
        """A DRaFT / AlignProp / ReFL reward, `fn(images: Tensor[N, 3, H, W]) -> Tensor[N]` with a graph to the pixels.

        See `vq_reward.rewards.DifferentiableQualityReward` (`views=K`: the mean over K differentiable views).
        """
        from vq_reward.rewards import DifferentiableQualityReward  # the shortcut's one upward import

        return DifferentiableQualityReward(
            self, input_range=input_range, gradient_checkpointing=gradient_checkpointing, views=views
        )

    def as_trl_reward(
        self,
        image_key: str | None = "image",
        image_fn: Callable[..., Sequence[Any]] | None = None,
        mode: Literal["score", "win-rate"] = "score",
        views: int | Views = 1,
        group_key: str | None = None,
    ) -> "TrlQualityReward":
        """A `trl.GRPOTrainer` reward function named "visual_quality"; see `vq_reward.rewards.TrlQualityReward`."""
        from vq_reward.rewards import TrlQualityReward  # the shortcut's one upward import

        return TrlQualityReward(self, image_key=image_key, image_fn=image_fn, mode=mode, views=views,
                                group_key=group_key)  # fmt: skip

    def _backend_lock(self) -> contextlib.AbstractContextManager:
        """The scorer's lock around a backend call; none for a backend that takes concurrent calls (servers)."""
        return contextlib.nullcontext() if self.backend.concurrent else self.lock

    def _sources(self, images: Images, input_range: tuple[float, float]) -> list[ImageSource]:
        return image_sources(images, check_input_range(input_range), self.max_input_pixels, self.exif_transpose)

    def _resized(self, source: ImageSource) -> Image.Image:
        return resize_for_model(source.load(), self.min_pixels, self.max_pixels)

    def _each_batch(
        self, sources: Sequence[ImageSource], batch_size: int | None, call: Callable[[list[Image.Image]], T]
    ) -> list[tuple[list[int], T]]:
        """`call` on size-sorted batches of `sources` (so batches pad little), each decoded at the model's size only
        when its turn comes and run under the backend's lock; each result with its images' input positions."""
        size = self.batch_size if batch_size is None else batch_size
        _check_batch_size(size)
        order = sorted(range(len(sources)), key=lambda i: sources[i].width * sources[i].height, reverse=True)
        parts = []
        for indices in (order[start : start + size] for start in range(0, len(order), size)):
            batch = [self._resized(sources[i]) for i in indices]
            with self._backend_lock():
                parts.append((indices, call(batch)))
        return parts


def _ordered(parts: list[tuple[list[int], list[T]]], count: int) -> list[T]:
    """The batches' results (each with its input positions) as one list in input order."""
    placed = {i: result for indices, results in parts for i, result in zip(indices, results, strict=True)}
    return [placed[i] for i in range(count)]


# The constructor's settings (each kept as the attribute of its name): what `settings()` returns and a recipe carries.
SETTINGS = tuple(inspect.signature(VisualQualityScorer.__init__).parameters)[3:]  # after self, model, processor


def _split_settings(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keyword arguments split into the constructor's settings and the rest (a backend's loading arguments)."""
    return ({k: v for k, v in kwargs.items() if k in SETTINGS}, {k: v for k, v in kwargs.items() if k not in SETTINGS})


def _check_readout(name: str) -> None:
    if name not in READOUTS:
        raise ValueError(f"readout must be one of {READOUTS}, got {name!r}.")


def _check_batch_size(size: int) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"batch_size must be a whole number of at least 1, got {size!r}.")
