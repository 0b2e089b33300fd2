"""The in-process backend: the HF transformers model, read with `vq_reward.readout` (the default backend)."""

import hashlib

import torch
from PIL import Image
from transformers import PreTrainedModel, ProcessorMixin

from vq_reward.readout import NumberTokens, Request, ScoreDetails, generate_texts, model_inputs, read_scores


class HFBackend:
    """A Qwen2.5-VL model in this process. Not thread-safe by itself: the scorer holds its lock around each call."""

    name = "hf"

    def __init__(self, model: PreTrainedModel, processor: ProcessorMixin) -> None:
        self.model = model
        self.processor = processor

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def read_scores(
        self, request: Request, images: list[Image.Image], tokens: NumberTokens, readout: str
    ) -> ScoreDetails:
        with torch.inference_mode():
            inputs = model_inputs(self.processor, [request.text + request.answer_prefix] * len(images), images)
            return read_scores(self.model, inputs.to(self.device), tokens, readout)

    def generate(self, request: Request, images: list[Image.Image], settings: dict) -> list[str]:
        with torch.inference_mode():
            inputs = model_inputs(self.processor, [request.text + request.answer_prefix] * len(images), images)
            return generate_texts(self.model, self.processor, inputs.to(self.device), settings)

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
