"""Where a scorer's model runs: in this process through HF transformers (`hf`, the default), in vLLM's offline
engine (`vllm`), or behind a vLLM OpenAI-compatible server (`server`).

Every backend reads the same numbers (the readouts of `vq_reward.readout`) from the same prompts; the scorer
prepares the images and the prompt, and a backend only runs the model. A backend provides:

- `read_scores(request, images, tokens, readout) -> ScoreDetails`: one batch of prepared images;
- `generate(request, images, settings) -> list[str]`: one completion per image, without special tokens;
- `fingerprint() -> str`: a short identity of the weights it serves (results files record it);
- `name`: "hf", "vllm" or "server".
"""

from typing import Protocol

from PIL import Image

from vq_reward.readout import NumberTokens, Request, ScoreDetails


class Backend(Protocol):
    name: str

    def read_scores(
        self, request: Request, images: list[Image.Image], tokens: NumberTokens, readout: str
    ) -> ScoreDetails: ...

    def generate(self, request: Request, images: list[Image.Image], settings: dict) -> list[str]: ...

    def fingerprint(self) -> str: ...
