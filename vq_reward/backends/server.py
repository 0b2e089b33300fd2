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
- the weights, on every request: `vq-reward serve` publishes a fingerprint of the checkpoint's weights as a second
  served name, `NAME@<fingerprint>`; the client picks it when it connects and names it in every request, so a
  server restarted with other weights answers 404 and the call fails with one line ("... now serves other weights
  than when this scorer connected ...") instead of returning the other weights' scores. `fingerprint()` is that
  weights fingerprint, so `vq-reward score --server URL --output F` does not resume a file started with other
  weights. A plain vLLM server publishes no fingerprint: it is identified by its model id and root (the path it
  loaded), and a restart with other weights under the same name and path goes unnoticed (a warning says so);
- at connection: every URL answers `/v1/models` and serves the same model (id, root and weights), the one asked for;
- the first time a prompt is used: the server's prompt token ids (`return_token_ids`) equal the local ones
  (chat template, answer prefix, branch digits and the image's token count);
- on every response: the prompt's token count equals the local one (a server started with another pixel budget
  resizes the image again and is refused).

Requests run in a thread pool (many in flight; the scorer does not serialise callers of a server backend).
`timeout` bounds each request's wall time, connecting, sending and reading the answer together (a server or proxy
that trickles bytes is cut off at the deadline); 429/5xx answers, connection errors and timeouts are retried with
exponential backoff, each retry on the next server of the list. The defaults suit a training loop: 120 s per
request (a one-token readout takes well under a second on a GPU; a long thinking generation on a busy server fits)
and 2 retries, so a stalled server fails a call with a `ServerError` naming its URL after about 6 minutes
(3 x 120 s + 1.5 s of backoff) instead of hanging.

The Ray engine (`vq-reward serve MODEL --engine ray`, `vq_reward.serving`) lists `"engine": "ray"` in
`/v1/models` and reads the HF scorer in one forward: a batch goes as one `POST /v1/score` per server (lossless PNG
images at the model's size, the prompt, the weights alias) and every figure of `ScoreDetails` comes back; the
server refuses another prompt or pixel budget than its own. It serves no generation (thinking mode needs vLLM).

API key. A server started with `vq-reward serve --api-key KEY` (vLLM's `--api-key`) answers 401 without it: pass
`api_key=`, or set `VQ_REWARD_API_KEY`, which is also where copies of a pickled reward read it (the key itself is
never part of a backend's `source()`, so it is not written into pickles or checkpoints).
"""

import base64
import hashlib
import http.client
import io
import itertools
import json
import os
import re
import socket
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import torch
from PIL import Image
from transformers import ProcessorMixin

from vq_reward.backends import BackendSource
from vq_reward.backends.common import digit_logprobs, prompt_ids, sampling_settings
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


RETRY_STATUS = (429, 500, 502, 503, 504)
RAY_FIGURES = ("scores", "std", "probs", "digit_mass", "dot_mass")  # the Ray engine's answer: ScoreDetails' figures
DEFAULT_TIMEOUT = 120.0
DEFAULT_RETRIES = 2
API_KEY_ENV = "VQ_REWARD_API_KEY"
# `vq-reward serve` serves NAME and NAME@<weights fingerprint> (`backends.vllm.weights_fingerprint`: 16 hex digits).
WEIGHTS_ALIAS = re.compile(r"(?P<name>.+)@(?P<weights>[0-9a-f]{16})")


class ServerError(RuntimeError):
    """A server that cannot be used: down, answering errors, serving another model, or reading differently."""


@dataclass(frozen=True)
class ServedModel:
    """One model a server lists in `/v1/models`.

    Attributes:
        id: its served name.
        root: the path or hub id the server loaded it from.
        weights: the weights fingerprint its `NAME@<fingerprint>` alias publishes; None on a plain vLLM server.
        max_model_len: the server's context length, if it says.
        engine: "vllm", or "ray" for `vq-reward serve --engine ray` (the HF scorer on Ray Serve).
    """

    id: str
    root: str | None
    weights: str | None = None
    max_model_len: int | None = None
    engine: str = "vllm"

    @property
    def name(self) -> str:
        """The name requests use: the weights alias when there is one, so only these weights ever answer."""
        return f"{self.id}@{self.weights}" if self.weights else self.id


def served_models(entries: list[dict]) -> list[ServedModel]:
    """The models of a `/v1/models` list, each weights alias folded into the model it names (same root).

    Example:
        >>> [m.name for m in served_models([{"id": "m", "root": "/m"}, {"id": "m@0123456789abcdef", "root": "/m"}])]
        ['m@0123456789abcdef']
    """
    listed = {(entry["id"], entry.get("root")) for entry in entries}
    weights, aliases = {}, set()
    for entry in entries:
        match = WEIGHTS_ALIAS.fullmatch(entry["id"])
        if match and (match["name"], entry.get("root")) in listed:
            weights[(match["name"], entry.get("root"))] = match["weights"]
            aliases.add(entry["id"])
    return [
        ServedModel(
            entry["id"],
            entry.get("root"),
            weights.get((entry["id"], entry.get("root"))),
            entry.get("max_model_len"),
            entry.get("engine", "vllm"),
        )
        for entry in entries
        if entry["id"] not in aliases
    ]


def choose_model(models: list[ServedModel], model: str | None, url: str) -> ServedModel:
    """The model to score with: the only one, or the one `model` names (its id, root or weights alias)."""
    names = [served.id for served in models]
    if model is None:
        if len(models) != 1:
            raise ServerError(f"{url} serves {len(models)} models ({names}); pass model= the one to score with.")
        return models[0]
    pinned = WEIGHTS_ALIAS.fullmatch(model)
    for served in models:
        if model in (served.id, served.root, served.name):
            return served
        if pinned and served.id == pinned["name"]:
            raise ServerError(
                f"{url} serves {served.id!r} with other weights ({served.weights or 'no fingerprint'}) than "
                f"{model!r} names: it was restarted with another checkpoint. Connect with model={served.id!r} to "
                "score with the weights it serves now, or restart it with the checkpoint asked for."
            )
    raise ServerError(f"{url} serves {names}, not {model!r}; pass model= one of those, or the right URL.")


def normalise_url(url: str) -> str:
    """`http://host:port` from `host:port`, `http://host:port/` or `http://host:port/v1`.

    Example:
        >>> normalise_url("localhost:8000/v1/")
        'http://localhost:8000'
    """
    text = url.strip().rstrip("/")
    if "://" not in text:
        text = "http://" + text
    if not urlsplit(text).hostname:
        raise ValueError(f"{url!r} is not a server URL; pass http://HOST:PORT.")
    return text.removesuffix("/v1")


def png_data_url(image: Image.Image) -> str:
    """A lossless PNG data URL of an RGB image (never JPEG: the server must see the very pixels HF sees).

    Example:
        >>> png_data_url(Image.new("RGB", (28, 28))).startswith("data:image/png;base64,")
        True
    """
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def chat_messages(request: Request, image_url: str, assistant: str) -> list[dict]:
    """The request's chat in the OpenAI format: each `{"type": "image"}` part becomes the image URL, and a
    non-empty `assistant` text is the assistant turn the server continues."""
    messages = []
    for message in request.messages:
        content = message["content"]
        if isinstance(content, list):
            content = [
                {"type": "image_url", "image_url": {"url": image_url}} if part.get("type") == "image" else part
                for part in content
            ]
        messages.append({**message, "content": content})
    if assistant:
        messages.append({"role": "assistant", "content": assistant})
    return messages


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
        self.urls = [normalise_url(url) for url in ([urls] if isinstance(urls, str) else list(urls))]
        if not self.urls:
            raise ValueError("a server backend needs at least one URL.")
        if timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout}.")
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)
        self.max_workers = max_workers or 32 * len(self.urls)
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self._api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        self._local = threading.local()
        self.served = self._connect(model)
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
        rows = [_digit_logprobs(response, ids, url) for response, url in zip(responses, servers, strict=True)]
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
            self._pool.submit(self._post, next(self._turn) % len(self.urls), "/v1/score",
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

    # -- connecting ----------------------------------------------------------------------------------------------

    def _connect(self, model: str | None) -> ServedModel:
        """The model every URL serves, the same one (id, root, weights) everywhere."""
        served = [(url, choose_model(served_models(self._models(url)), model, url)) for url in self.urls]
        first = served[0][1]
        for url, other in served[1:]:
            if (other.id, other.root, other.weights) != (first.id, first.root, first.weights):
                raise ServerError(
                    f"{url} serves {other.name!r} (root {other.root!r}) but {self.urls[0]} serves {first.name!r} "
                    f"(root {first.root!r}); every URL of a scorer must serve the same model and weights."
                )
        if first.weights is None:
            warnings.warn(
                f"{self.urls[0]} publishes no weights fingerprint (a plain vLLM server, not vq-reward serve): if it "
                f"is restarted with other weights under the name {first.id!r}, this scorer cannot tell.",
                stacklevel=3,
            )
        return first

    def _models(self, url: str) -> list[dict]:
        """`url`'s `/v1/models` list."""
        try:
            status, payload = self._http(url, "GET", "/v1/models", None)
        except (OSError, http.client.HTTPException) as error:
            raise ServerError(
                f"{url} does not answer ({type(error).__name__}: {error}); start it with `vq-reward serve MODEL "
                "--host HOST --port PORT` and pass its URL."
            ) from None
        if status in (401, 403):
            raise self._refused(url, status)
        if status != 200:
            raise ServerError(f"{url}/v1/models answered HTTP {status}; is it a vLLM OpenAI-compatible server?")
        try:
            models = json.loads(payload)["data"]
            if not all(isinstance(entry["id"], str) for entry in models):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise ServerError(f"{url}/v1/models did not answer a model list; is it a vLLM server?") from None
        return models

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

    # -- HTTP ----------------------------------------------------------------------------------------------------

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
        key = (json.dumps(_text_parts(body["messages"])), len(expected))
        with self._lock:
            check_ids = key not in self._checked
        if check_ids:
            body = {**body, "return_token_ids": True}
        url, response = self._post(server, "/v1/chat/completions", body)
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

    def _post(self, server: int, path: str, body: dict) -> tuple[str, dict]:
        """POST with retries; each retry goes to the next server of the list. Returns (url, decoded JSON)."""
        data = json.dumps(body).encode()
        last = ""
        for attempt in range(self.retries + 1):
            url = self.urls[(server + attempt) % len(self.urls)]
            try:
                status, payload = self._http(url, "POST", path, data)
            except TimeoutError:
                last = f"{url} sent no whole answer within the {self.timeout:g} s timeout"
            except (OSError, http.client.HTTPException) as error:
                last = f"{url} does not answer ({type(error).__name__}: {error})"
            else:
                if status == 200:
                    return url, _json(payload, url + path)
                if status in (401, 403):
                    raise self._refused(url, status)
                if status == 404:
                    raise self._gone(url, payload)
                last = f"{url}{path} answered HTTP {status}: {_one_line(payload)}"
                if status not in RETRY_STATUS:
                    raise ServerError(last)
            if attempt < self.retries:
                time.sleep(self.backoff * 2**attempt)
        raise ServerError(
            f"{last}; gave up after {self.retries + 1} attempts. Is the server running (vq-reward serve MODEL) and "
            "reachable from here?"
        )

    def _refused(self, url: str, status: int) -> ServerError:
        if self._api_key is None:
            return ServerError(
                f"{url} answered HTTP {status}: it needs an API key (it was started with --api-key). Pass "
                f"from_server(..., api_key=KEY) or set {API_KEY_ENV} (vq-reward score reads the variable)."
            )
        return ServerError(
            f"{url} answered HTTP {status}: it refuses this scorer's API key (from api_key= or {API_KEY_ENV}); "
            "pass the key the server was started with."
        )

    def _gone(self, url: str, payload: bytes) -> ServerError:
        """A 404 on a request naming the served model: the server now serves other weights, or the path is wrong."""
        try:
            now = self._models(url)
        except ServerError:
            now = []
        if any(entry["id"] == self.served.name for entry in now):  # still served: a 404 for another reason
            return ServerError(f"{url} answered HTTP 404: {_one_line(payload)}")
        return ServerError(
            f"{url} now serves other weights than when this scorer connected ({self.served.name!r} is gone; it "
            f"serves {[entry['id'] for entry in now]}): it was restarted with another checkpoint, and no score of "
            "other weights is returned. Connect again (from_server) to score with the weights it serves now, or "
            "restart it with the checkpoint this scorer connected to."
        )

    def _http(self, url: str, method: str, path: str, data: bytes | None) -> tuple[int, bytes]:
        """One request on this thread's keep-alive connection to `url`, within `timeout` seconds in all (connect,
        send, answer); a failed connection is dropped."""
        deadline = time.monotonic() + self.timeout
        connections = self._local.__dict__.setdefault("connections", {})
        connection = connections.get(url)
        if connection is None:
            parts = urlsplit(url)
            kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
            connection = kind(str(parts.hostname), parts.port)
            connection.response_class = _TimedResponse
            connections[url] = connection
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        try:
            if connection.sock is None:
                connection.timeout = _time_left(deadline)
                connection.connect()
            connection.sock.settimeout(_time_left(deadline))  # sendall: the whole send within the time left
            connection.request(method, urlsplit(url).path + path, body=data, headers=headers)
            connection.sock.settimeout(_time_left(deadline))  # what _TimedResponse reads the answer against
            response = connection.getresponse()
            return response.status, response.read()
        except BaseException:
            connection.close()
            connections.pop(url, None)
            raise


class _DeadlineReader(io.RawIOBase):
    """A socket's reader whose every read waits at most for the time left until `deadline` (then TimeoutError)."""

    def __init__(self, raw: io.RawIOBase, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self.raw, self.sock, self.deadline = raw, sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        self.sock.settimeout(_time_left(self.deadline))
        return self.raw.readinto(buffer)

    def close(self) -> None:
        self.raw.close()
        super().close()


class _TimedResponse(http.client.HTTPResponse):
    """An answer read against its request's deadline, status line and headers included. The socket's timeout,
    when the response is made, is the time left (`ServerBackend._http` sets it)."""

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        deadline = time.monotonic() + (sock.gettimeout() or 0.0)
        # http.client's reader waits up to the socket's timeout on each read, so a trickle never ends it: its raw
        # stream (which holds the socket open) is read here against the deadline instead.
        self.fp = io.BufferedReader(_DeadlineReader(self.fp.detach(), sock, deadline))


def _time_left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the request's deadline passed")
    return left


def _json(payload: bytes, where: str) -> dict:
    """A 200 answer's JSON object, or one line naming `where` (a proxy's HTML page is not a completion)."""
    try:
        decoded = json.loads(payload)
    except ValueError:
        decoded = None
    if not isinstance(decoded, dict):
        raise ServerError(
            f"{where} answered HTTP 200 with a body that is not a JSON object ({_one_line(payload)[:120]!r}); is "
            "the URL a vLLM server (vq-reward serve), not a proxy's page?"
        )
    return decoded


def _one_line(payload: bytes) -> str:
    return " ".join(payload.decode("utf-8", "replace").split())[:500]


def _text_parts(messages: list[dict]) -> list:
    """The messages without their image data: what decides a prompt's tokens besides the image size."""
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = [part for part in content if part.get("type") != "image_url"]
        out.append((message["role"], content))
    return out


def _digit_logprobs(response: dict, ids: list[int], url: str) -> list[float]:
    """The log-probabilities of `ids` at the one generated position (the sampled token may be listed too)."""
    try:
        top = response["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        by_id = {int(entry["token"].split(":", 1)[1]): float(entry["logprob"]) for entry in top}
    except (KeyError, IndexError, TypeError, ValueError):
        raise ServerError(f"{url} answered without token log-probabilities; is it a vLLM server?") from None
    fix = f"start it with --max-logprobs {len(ids)} or more (vq-reward serve does)."
    return digit_logprobs(by_id, ids, url, fix, ServerError)
