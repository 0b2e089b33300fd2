"""Where a scorer's model runs: in this process through HF transformers (`hf`, the default), in vLLM's offline
engine (`vllm`), or behind a server reached over HTTP (`server`).

Every backend reads the same numbers (the readouts of `vq_reward.readout`) from the same prompts; the scorer
prepares the images and the prompt, and a backend only runs the model. A backend is complete when it is built:
its constructor (or its `load` classmethod, which resolves a model name first) sets everything the scorer reads.
A backend provides:

- `name`: "hf", "vllm" or "server";
- `processor`: the processor whose tokenizer, chat template and pixel budget the prompts and images are made with;
- `concurrent`: True when calls may come from several threads at once (servers); the scorer locks the others;
- `read_scores(request, images, tokens, readout) -> ScoreDetails`: one batch of prepared images;
- `generate(request, images, settings) -> list[str]`: one completion per image, without special tokens;
- `fingerprint() -> str`: a short identity of the weights it serves (results files record it);
- `source() -> BackendSource`: how to build an equal backend in another process (what pickled rewards carry).

`vq_reward.backends.build.build_backend(source, device)` builds any of them from a `BackendSource` (in a module of
its own, which this one does not import, so that no backend module imports another). The HF backend alone holds the
model in this process, so it alone also reads scores with a graph back to the pixels, moves between devices and runs
the Q-Insight readouts.
"""

from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image
from transformers import ProcessorMixin

from vq_reward.readout import NumberTokens, Request, ScoreDetails


@dataclass(frozen=True)
class BackendSource:
    """How to build a backend equal to one that exists: no weights, only names and settings (it pickles small).

    Attributes:
        backend: "hf", "vllm" or "server".
        model: a local folder's absolute path or a hub id (any name `vq_reward.hub.resolve_model` takes, smoke
            names included); for a server, the served model's id.
        kwargs: the keyword arguments that build it again (the backend's `load`, or the server's constructor), less
            the device.
    """

    backend: str
    model: str
    kwargs: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    name: str
    processor: ProcessorMixin
    concurrent: bool

    def read_scores(
        self, request: Request, images: list[Image.Image], tokens: NumberTokens, readout: str
    ) -> ScoreDetails: ...

    def generate(self, request: Request, images: list[Image.Image], settings: dict) -> list[str]: ...

    def fingerprint(self) -> str: ...

    def source(self) -> BackendSource: ...
