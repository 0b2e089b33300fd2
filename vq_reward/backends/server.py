"""The server backend: the scorer's readouts and generation over vLLM's OpenAI-compatible chat-completions API.

    scorer = VisualQualityScorer.from_server("http://gpu-node:8000")           # one server
    scorer = VisualQualityScorer.from_server(["http://a:8000", "http://b:8000"])  # data parallel over servers
    reward_fn = scorer.as_reward()  # or .as_trl_reward(...): the reward of a training loop on other GPUs

Start a server with `vq-reward serve MODEL` (`vq_reward.cli.serve`: vLLM's own server with the settings the
readouts need). HTTP goes through the standard library.

How it reads. Each branch of a readout is one chat-completion request: the user turn holds the prepared image as
a lossless PNG data URL and the prompt text; the assistant turn holds the forced answer prefix (plus the branch's
digits, e.g. "<answer>3.1") and is continued (`continue_final_message`) for one token, whose full-vocabulary
log-probabilities of the digits and "." come back through vLLM's `logprob_token_ids`. 1 request per image for
"first-digit", 49 for "number" (`readout.branch_continuations`); all branches of an image go to the same server,
whose prefix and multimodal caches make the 48 extra branches cheap. `readout.details_from_branches` turns the
log-probabilities into a `ScoreDetails` exactly as the other backends do.

What is checked, so that a server never scores with something other than what the HF backend would:
- the weights, on every request: the client names the weights alias `vq-reward serve` publishes (`NAME@<fingerprint>`,
  `backends.served`) in every request, so a server restarted with other weights fails the call with one line instead
  of returning the other weights' scores. `fingerprint()` is that weights fingerprint, so `vq-reward score --server
  URL --output F` does not resume a file started with other weights. A plain vLLM server is identified by its model
  id and root only (a warning says so);
- at connection: every URL answers `/v1/models` and serves the same model (id, root and weights), the one asked for;
- the first time a prompt is used: the server's prompt token ids (`return_token_ids`) equal the local ones
  (chat template, answer prefix, branch digits and the image's token count);
- on every response: the prompt's token count equals the local one (a server started with another pixel budget
  resizes the image again and is refused).

Requests run in a thread pool (many in flight; the scorer does not serialise callers of a server backend).
The HTTP (keep-alive connections, the per-request `timeout` deadline, retries with backoff across the servers, the
API key of `vq-reward serve --api-key`, read from `api_key=` or `VQ_REWARD_API_KEY`) is `backends.transport`.

The Ray engine (`vq-reward serve MODEL --engine ray`, `vq_reward.serving`) lists `"engine": "ray"` in
`/v1/models` and reads the HF scorer in one forward: a batch goes as one `POST /v1/score` per server (lossless PNG
images at the model's size, the prompt, the weights alias) and every figure of `ScoreDetails` comes back; the
server refuses another prompt or pixel budget than its own. It serves no generation (thinking mode needs vLLM).
"""

import hashlib
import itertools
import json
import os
import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

import torch
from PIL import Image
from transformers import ProcessorMixin

from vq_reward.backends import BackendSource
from vq_reward.backends.chat import chat_messages, digit_answer, png_data_url, text_parts
from vq_reward.backends.common import prompt_ids, sampling_settings
from vq_reward.backends.served import ServedModel, choose_model, connect, served_models
from vq_reward.backends.transport import (
    API_KEY_ENV,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    HttpClient,
    ServerError,
    normalise_url,
)
from vq_reward.hub import resolve_model
from vq_reward.loading import load_processor
from vq_reward.readout import (
    NumberTokens,
    Request,
    ScoreDetails,
    branch_continuations,
    branch_token_ids,
    details_from_branches,
    token_inputs,
)


__all__ = [
    "API_KEY_ENV",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "ServedModel",
    "ServerBackend",
    "ServerError",
    "chat_messages",
    "choose_model",
    "normalise_url",
    "png_data_url",
    "served_models",
]

RAY_FIGURES = ("scores", "std", "probs", "digit_mass", "dot_mass")  # the Ray engine's answer: ScoreDetails' figures


class ServerBackend:
    """vLLM OpenAI-compatible servers serving one model; complete when built. Thread-safe: callers need no lock.

    Args:
        urls: one URL or several (data parallel: images are spread over them).
        model: the served model to use (its id, root, or `NAME@<fingerprint>` to insist on those weights); `None`
            takes the one model the servers serve.
        processor: where the processor (tokenizer, chat template, pixel budget) comes from: a processor, a local
            folder or a hub id. `None`: the served model's root folder when it exists on this machine, else its id
            (a smoke name, or a hub id: only processor files are fetched).
        min_pixels / max_pixels: the pixel budget, when the server was started with another than the checkpoint's
            (a server that resizes differently is refused).
        timeout: seconds one request may take in all: connecting, sending and reading the whole answer
            (default 120).
        retries: attempts after the first, for 429/5xx answers, connection errors and timeouts (default 2).
        backoff: seconds before the first retry; doubled for each next one.
        max_workers: requests in flight at most; default 32 per server.
        api_key: the server's API key (`vq-reward serve --api-key`); default: the `VQ_REWARD_API_KEY` variable.
            Never part of `source()`: copies made from it read the variable.
    """

    name = "server"
    concurrent = True

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        model: str | None = None,
        processor: ProcessorMixin | str | os.PathLike | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = 0.5,
        max_workers: int | None = None,
        api_key: str | None = None,
    ) -> None:
        http = self.http = HttpClient(urls, timeout=timeout, retries=retries, backoff=backoff, api_key=api_key)
        self.urls, self.timeout, self.retries, self.backoff = http.urls, http.timeout, http.retries, http.backoff
        self.max_workers = max_workers or 32 * len(self.urls)
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.served = connect(http, model)
        self.model_id, self.root, self.max_model_len = self.served.id, self.served.root, self.served.max_model_len
        self.processor, self.processor_source = self._load_processor(processor)
        self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="vq-reward-server")
        self._turn = itertools.count()
        self._checked: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    # -- the backend protocol ------------------------------------------------------------------------------------

    def read_scores(
        self, request: Request, images: list[Image.Image], tokens: NumberTokens, readout: str
    ) -> ScoreDetails:
        if self.served.engine == "ray":
            return self._ray_scores(request, images, readout)
        branches = branch_continuations(tokens, readout)
        ids = branch_token_ids(tokens)
        prompt = prompt_ids(self.processor, request)
        texts = [self._branch_text(request, prompt, branch) for branch in branches]
        jobs = []
        for image in images:
            url = png_data_url(image)
            server = next(self._turn) % len(self.urls)  # all branches of an image on one server: its caches hit
            expected = self._image_prompt(request, image)
            for branch, text in zip(branches, texts, strict=True):
                body = {
                    "model": self.served.name,
                    "messages": chat_messages(request, url, request.answer_prefix + text),
                    "add_generation_prompt": False,
                    "continue_final_message": True,
                    "max_tokens": 1,
                    "temperature": 0.0,
                    "logprobs": True,
                    "top_logprobs": len(ids),
                    "logprob_token_ids": ids,
                    "return_tokens_as_token_ids": True,
                }
                jobs.append((server, body, expected + list(branch)))
        responses = self._run(jobs)
        servers = [self.urls[server] for server, _, _ in jobs]
        rows = [digit_answer(response, ids, url) for response, url in zip(responses, servers, strict=True)]
        logprobs = torch.tensor(rows, dtype=torch.float64).view(len(images), len(branches), len(ids))
        return details_from_branches(logprobs, tokens, readout)

    def generate(self, request: Request, images: list[Image.Image], settings: dict) -> list[str]:
        if self.served.engine == "ray":
            raise ServerError(
                f"{self.urls[0]} is a Ray server (vq-reward serve --engine ray), which serves the score readouts "
                "only; generate() and thinking mode need a vLLM server (vq-reward serve MODEL --engine vllm)."
            )
        sampling = sampling_settings(settings)
        jobs = []
        for image in images:
            body = {
                "model": self.served.name,
                "messages": chat_messages(request, png_data_url(image), request.answer_prefix),
                "add_generation_prompt": not request.answer_prefix,
                "continue_final_message": bool(request.answer_prefix),
                "skip_special_tokens": True,
                "return_token_ids": True,
                **sampling,
            }
            jobs.append((next(self._turn) % len(self.urls), body, self._image_prompt(request, image)))
        choices = [response["choices"][0] for response in self._run(jobs)]
        if any(choice.get("token_ids") is None for choice in choices):  # not vLLM's extension: the server's text
            return [choice["message"]["content"] or "" for choice in choices]
        completions = [choice["token_ids"] for choice in choices]
        return self.processor.batch_decode(completions, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def fingerprint(self) -> str:
        """The served weights' identity: the fingerprint `vq-reward serve` publishes; on a plain vLLM server, a hash
        of the model id and root (the path the server loaded it from)."""
        if self.served.weights:
            return f"server-{self.served.weights}"
        return "server-" + hashlib.sha256(f"{self.model_id}\n{self.root}".encode()).hexdigest()[:16]

    def source(self) -> BackendSource:
        """The URLs, the served model (its weights alias, so a copy refuses other weights) and the settings; never
        the API key (a copy reads `VQ_REWARD_API_KEY`)."""
        kwargs: dict[str, Any] = {
            "urls": list(self.urls),
            "model": self.served.name,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "timeout": self.timeout,
            "retries": self.retries,
            "backoff": self.backoff,
            "max_workers": self.max_workers,
        }
        if self.processor_source is not None:
            kwargs["processor"] = self.processor_source
        return BackendSource("server", self.model_id, kwargs)

    def _ray_scores(self, request: Request, images: list[Image.Image], readout: str) -> ScoreDetails:
        """The Ray engine's `POST /v1/score`: the images as lossless PNG, one request per server, with the prompt
        (the server refuses one that is not its own) and the weights alias; every figure comes back."""
        share = -(-len(images) // len(self.urls))
        chunks = [images[start : start + share] for start in range(0, len(images), share)]
        body = {"model": self.served.name, "readout": readout, "prompt": request.text + request.answer_prefix}
        futures = [
            self._pool.submit(self.http.post, next(self._turn) % len(self.urls), "/v1/score",
                              {**body, "images": [png_data_url(image).split(",", 1)[1] for image in chunk]})
            for chunk in chunks
        ]  # fmt: skip
        answers = []
        for future in futures:
            url, answer = future.result()
            if answer.get("fingerprint") != self.served.weights:
                raise ServerError(f"{url} scored with weights {answer.get('fingerprint')}, not {self.served.weights}.")
            answers.append(answer)
        figures = {name: [row for answer in answers for row in answer[name]] for name in RAY_FIGURES}
        dot_mass = None if figures["dot_mass"][0] is None else torch.tensor(figures["dot_mass"])
        return ScoreDetails(
            scores=torch.tensor(figures["scores"]), std=torch.tensor(figures["std"]),
            probs=torch.tensor(figures["probs"]), digit_mass=torch.tensor(figures["digit_mass"]),
            dot_mass=dot_mass, readout=readout,
        )  # fmt: skip

    # -- the processor -------------------------------------------------------------------------------------------

    def _load_processor(
        self, processor: ProcessorMixin | str | os.PathLike | None
    ) -> tuple[ProcessorMixin, str | None]:
        """The processor and, when it was given by name, that name (what `source()` passes on)."""
        if processor is not None and not isinstance(processor, (str, os.PathLike)):
            return processor, None
        budget = {key: value for key, value in (("min_pixels", self.min_pixels), ("max_pixels", self.max_pixels))
                  if value}  # fmt: skip
        given = os.fspath(processor) if processor is not None else None
        errors = []
        for name in [given] if given is not None else [name for name in (self.root, self.model_id) if name]:
            try:
                return load_processor(resolve_model(name), None, **budget), given
            except (OSError, ValueError) as error:
                errors.append(f"{name}: {' '.join(str(error).split())[:300]}")
        raise ServerError(
            f"cannot load the processor of the model served at {self.urls[0]} (id {self.model_id!r}, root "
            f"{self.root!r}) on this machine ({'; '.join(errors)}). Pass processor= (a local folder or hub id with "
            "the served model's tokenizer and chat template) and min_pixels=/max_pixels= as the server was started "
            "with."
        )

    # -- prompts and their checks --------------------------------------------------------------------------------

    def _branch_text(self, request: Request, prompt: list[int], branch: tuple[int, ...]) -> str:
        """The branch's digits as text, refusing a tokenizer that would not give back exactly the branch's ids."""
        if not branch:
            return ""
        text = self.processor.tokenizer.decode(list(branch))
        again = self.processor.tokenizer(request.text + request.answer_prefix + text, add_special_tokens=False)
        if again["input_ids"] != prompt + list(branch):
            raise ServerError(
                f"the tokenizer does not keep the answer prefix {request.answer_prefix!r} and the digits {text!r} "
                "apart, so a server reading the text would read other tokens than the HF backend."
            )
        return text

    def _image_prompt(self, request: Request, image: Image.Image) -> list[int]:
        """The prompt's ids with its image pad expanded to the image's token count, as the server must see them."""
        patch = self.processor.image_processor.patch_size
        grid = torch.tensor([[1, image.height // patch, image.width // patch]])
        return token_inputs(self.processor, [request.text + request.answer_prefix], grid)["input_ids"][0].tolist()

    # -- requests ------------------------------------------------------------------------------------------------

    def _run(self, jobs: list[tuple[int, dict, list[int]]]) -> list[dict]:
        """Post every job concurrently; the responses in job order. The first failure cancels the rest."""
        futures = [self._pool.submit(self._complete, server, body, expected) for server, body, expected in jobs]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        errors = [error for future in done if (error := future.exception()) is not None]
        if errors:
            for future in pending:
                future.cancel()
            raise errors[0]
        return [future.result() for future in futures]

    def _complete(self, server: int, body: dict, expected: list[int]) -> dict:
        key = (json.dumps(text_parts(body["messages"])), len(expected))
        with self._lock:
            check_ids = key not in self._checked
        if check_ids:
            body = {**body, "return_token_ids": True}
        url, response = self.http.post(server, "/v1/chat/completions", body)
        if check_ids:
            got = response.get("prompt_token_ids")
            if got is not None and got != expected:
                differ = [i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b]
                raise ServerError(
                    f"{url} tokenizes the prompt differently from the local processor ({len(got)} tokens, "
                    f"{len(expected)} expected; first difference at token {differ[0] if differ else len(got)}). It "
                    "serves another chat template, tokenizer or pixel budget than the processor loaded here; pass "
                    "processor= (the served model's folder or hub id) and the server's min_pixels/max_pixels."
                )
            with self._lock:
                self._checked.add(key)
        counted = (response.get("usage") or {}).get("prompt_tokens")
        if counted is not None and counted != len(expected):
            raise ServerError(
                f"{url} read {counted} prompt tokens where {len(expected)} were expected: it resizes the images into "
                "another pixel budget than this scorer's. Pass from_server(..., min_pixels=..., max_pixels=...) as "
                "the server was started with (vq-reward serve --min-pixels/--max-pixels), or restart it with this "
                "budget."
            )
        return response
