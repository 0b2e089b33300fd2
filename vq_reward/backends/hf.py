"""The in-process backend: the HF transformers model, read with `vq_reward.readout` (the default backend).

It is the one backend that holds the model in this process, so it alone also reads scores with a graph back to the
pixels (the differentiable reward), moves between devices (`to`, `offload`, `onload`) and runs the Q-Insight
readouts.
"""

import contextlib
import hashlib
import importlib.util
import os
from collections.abc import Iterator, Mapping, Sequence

import torch
from PIL import Image
from transformers import PreTrainedModel, ProcessorMixin

from vq_reward import devices, qinsight
from vq_reward.backends import BackendSource
from vq_reward.hub import resolve_model
from vq_reward.loading import load_model, load_processor, pixel_budget
from vq_reward.readout import (
    NumberTokens,
    Request,
    ScoreDetails,
    generate_texts,
    model_inputs,
    read_scores,
    token_inputs,
)


class HFBackend:
    """A Qwen2.5-VL model in this process. Not thread-safe by itself: the scorer holds its lock around each call.

    Args:
        model: the model (the scorer freezes it).
        processor: its processor.
        source: how it was loaded (`load` sets it); `None` for a model object, which then has no `source()`.
    """

    name = "hf"
    concurrent = False

    def __init__(self, model: PreTrainedModel, processor: ProcessorMixin, source: BackendSource | None = None) -> None:
        self.model = model
        self.processor = processor
        self._source = source
        self._onload_device: torch.device | None = None

    @classmethod
    def load(
        cls,
        model: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        attn_implementation: str = "sdpa",
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        revision: str | None = None,
    ) -> "HFBackend":
        """Load a checkpoint ("tiny", a local folder or a hub id) with its processor, frozen, in eval mode.

        `device=None`: CUDA when available, else CPU (`devices.choose_device`). `dtype=None`: on CUDA the
        checkpoint's own (bfloat16 for the 7B), float32 elsewhere (`devices.default_dtype`). `min_pixels` /
        `max_pixels`: the pixel budget (`None`: the checkpoint's).
        """
        if attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise ImportError(
                "attn_implementation='flash_attention_2' needs flash-attn: pip install 'vq-reward[flash]' on a CUDA "
                "machine, or use attn_implementation='sdpa'."
            )
        path = resolve_model(model, revision)
        budget = pixel_budget(min_pixels, max_pixels)
        processor = load_processor(path, revision=revision, **budget)
        place = devices.choose_device(device)
        loaded = load_model(
            path,
            revision=revision,
            dtype=dtype or devices.default_dtype(place),
            attn_implementation=attn_implementation,
        )
        # `dtype` is recorded as given (None stays None), so a copy loaded on another device gets that device's.
        kwargs = {"dtype": dtype, "attn_implementation": attn_implementation, "revision": revision, **budget}
        devices.onload(loaded, place)
        return cls(loaded.eval().requires_grad_(False), processor, BackendSource("hf", path, kwargs))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def source(self) -> BackendSource:
        if self._source is None:
            raise TypeError(
                "This scorer was built from a model object, so there is no recipe to load a copy from: build it with "
                "VisualQualityScorer.from_pretrained(...) (a hub id, a local folder or 'tiny')."
            )
        return self._source

    def read_scores(
        self, request: Request, images: list[Image.Image], tokens: NumberTokens, readout: str
    ) -> ScoreDetails:
        with torch.inference_mode():
            inputs = model_inputs(self.processor, [request.text + request.answer_prefix] * len(images), images)
            return read_scores(self.model, inputs.to(self.device), tokens, readout)

    def read_pixel_scores(
        self,
        request: Request,
        pixel_values: torch.Tensor,
        image_grid_thw: torch.Tensor,
        tokens: NumberTokens,
        readout: str,
        gradient_checkpointing: bool = False,
    ) -> ScoreDetails:
        """`read_scores` for images already in the model's pixel layout (`vq_reward.rewards.pixels`), with the graph
        kept back to `pixel_values`; `gradient_checkpointing` recomputes activations in the backward pass."""
        texts = [request.text + request.answer_prefix] * len(image_grid_thw)
        inputs = {
            **token_inputs(self.processor, texts, image_grid_thw).to(self.device),
            "pixel_values": pixel_values.to(self.device, self.model.dtype),
            "image_grid_thw": image_grid_thw.to(self.device),
        }
        with self._checkpointing() if gradient_checkpointing else contextlib.nullcontext():
            return read_scores(self.model, inputs, tokens, readout)

    def generate(self, request: Request, images: list[Image.Image], settings: dict) -> list[str]:
        with torch.inference_mode():
            inputs = model_inputs(self.processor, [request.text + request.answer_prefix] * len(images), images)
            return generate_texts(self.model, self.processor, inputs.to(self.device), settings)

    def degradation(self, images: list[Image.Image], thinking: bool, settings: Mapping) -> list[qinsight.Degradation]:
        """Q-Insight degradation of prepared images: the closed-set readout, or (`thinking`) sampled reasoning."""
        with torch.inference_mode():
            if thinking:
                return qinsight.generate_degradation(self.model, self.processor, images, settings)
            return qinsight.read_degradation(self.model, self.processor, images)

    def compare(
        self, triples: Sequence[Sequence[Image.Image]], thinking: bool, settings: Mapping
    ) -> list[qinsight.Comparison]:
        """Q-Insight comparison of (reference, A, B) triples of prepared images; readout or sampled as above."""
        with torch.inference_mode():
            if thinking:
                return qinsight.generate_comparison(self.model, self.processor, triples, settings)
            return qinsight.read_comparison(self.model, self.processor, triples)

    def to(self, device: str | torch.device) -> None:
        devices.onload(self.model, device)

    def offload(self) -> None:
        """Move the model to CPU memory and free its accelerator memory (remembering where it was)."""
        self._onload_device = devices.offload(self.model) or self._onload_device

    def onload(self, device: str | torch.device | None = None) -> None:
        """Move the model back to where it was offloaded from, or to `device` when given."""
        devices.onload(self.model, device if device is not None else self._onload_device)
        self._onload_device = None

    def fingerprint(self, samples: int = 4096) -> str:
        """A short hash of the loaded weights: every tensor's name, shape, dtype and a strided sample of its values."""
        digest = hashlib.sha256()
        with torch.no_grad():
            for name, tensor in self.model.state_dict().items():
                flat = tensor.detach().reshape(-1)
                step = max(1, flat.numel() // samples)
                digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
                digest.update(flat[::step].float().cpu().numpy().tobytes())
        return digest.hexdigest()[:16]

    @contextlib.contextmanager
    def _checkpointing(self) -> Iterator[None]:
        """Activation checkpointing for this call only; the shared model is left as it was."""
        model = self.model
        if any(getattr(module, "gradient_checkpointing", False) for module in model.modules()):
            yield  # already on (the caller's choice): leave it
            return
        was_training = model.training
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24 (the older name warns there)
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()  # transformers checkpoints only in training mode
        try:
            yield
        finally:
            if hasattr(model, "activation_checkpointing_disable"):
                model.activation_checkpointing_disable()
            else:
                model.gradient_checkpointing_disable()
            model.train(was_training)
