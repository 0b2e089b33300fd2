"""The server backend: the scorer's readouts and generation over vLLM's OpenAI-compatible chat-completions API.

    scorer = VisualQualityScorer.from_server("http://gpu-node:8000")           # one server
    scorer = VisualQualityScorer.from_server(["http://a:8000", "http://b:8000"])  # data parallel over servers
    reward_fn = scorer.as_reward()  # or .as_trl_reward(...): the reward of a training loop on other GPUs

Start a server with `vq-reward serve MODEL` (`vq_reward.cli.serve`: vLLM's own server with the settings the
readouts need). This module needs only the standard library for HTTP.

How it reads. Each branch of a readout is one chat-completion request: the user turn holds the prepared image as
a lossless PNG data URL and the prompt text; the assistant turn holds the forced answer prefix (plus the branch's
digits, e.g. "<answer>3.1") and is continued (`continue_final_message`) for one token, whose full-vocabulary
log-probabilities of the digits and "." come back through vLLM's `logprob_token_ids`. 1 request per image for
"first-digit", 49 for "number" (`readout.branch_continuations`); all branches of an image go to the same server,
whose prefix and multimodal caches make the 48 extra branches cheap. `readout.details_from_branches` turns the
log-probabilities into a `ScoreDetails` exactly as the other backends do.

What is checked, so that a server never scores something other than what the HF backend would:
- at connection: every URL answers `/v1/models` and serves the same model (id and root), the one asked for;
- the first time a prompt is used: the server's prompt token ids (`return_token_ids`) equal the local ones
  (chat template, answer prefix, branch digits and the image's token count);
- on every response: the prompt's token count equals the local one (a server started with another pixel budget
  resizes the image again and is refused).

Requests run in a thread pool (many in flight; the scorer does not serialise callers of a server backend), with a
timeout, and retries with exponential backoff on 429/5xx answers and connection errors, moving to the next
server of the list on each retry. A server that stays down ends the call with a `ServerError` naming its URL.
"""

import base64
import hashlib
import http.client
import io
import itertools
import json
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any
from urllib.parse import urlsplit

import torch
from PIL import Image

from vq_reward.backends.vllm import sampling_settings
from vq_reward.readout import (
    NumberTokens,
    Request,
    ScoreDetails,
    branch_continuations,
    branch_token_ids,
    details_from_branches,
)


RETRY_STATUS = (429, 500, 502, 503, 504)


class ServerError(RuntimeError):
    """A server that cannot be used: down, answering errors, serving another model, or reading differently."""


def normalise_url(url: str) -> str:
    """`http://host:port` from `host:port`, `http://host:port/` or `http://host:port/v1`.

    Example:
        >>> normalise_url("localhost:8000/v1/")
        'http://localhost:8000'
    """
    text = url.strip().rstrip("/")
    if "://" not in text:
        text = "http://" + text
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
    """vLLM OpenAI-compatible servers serving one model. Thread-safe: callers need no lock.

    Args:
        urls: one URL or several (data parallel: images are spread over them).
        model: the served model id to use; `None` takes the one model the servers serve.
        timeout: seconds one HTTP request may take.
        retries: attempts after the first, for 429/5xx answers and connection errors.
        backoff: seconds before the first retry; doubled for each next one.
        max_workers: requests in flight at most; default 32 per server.
    """

    name = "server"
    concurrent = True

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        model: str | None = None,
        timeout: float = 600.0,
        retries: int = 4,
        backoff: float = 0.5,
        max_workers: int | None = None,
    ) -> None:
        self.urls = [normalise_url(url) for url in ([urls] if isinstance(urls, str) else list(urls))]
        if not self.urls:
            raise ValueError("from_server needs at least one URL.")
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)
        self.max_workers = max_workers or 32 * len(self.urls)
        self._local = threading.local()
        served = [(url, self._served(url, model)) for url in self.urls]
        first = served[0][1]
        for url, info in served[1:]:
            if (info["id"], info.get("root")) != (first["id"], first.get("root")):
                raise ServerError(
                    f"{url} serves {info['id']!r} (root {info.get('root')!r}) but {self.urls[0]} serves "
                    f"{first['id']!r} (root {first.get('root')!r}); every URL of a scorer must serve the same model."
                )
        self.model_id: str = first["id"]
        self.root: str | None = first.get("root")
        self.max_model_len: int | None = first.get("max_model_len")
        self.processor = None  # the scorer's, set by `attach`
        self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="vq-reward-server")
        self._turn = itertools.count()
        self._checked: set[tuple[str, int]] = set()
        self._lock = threading.Lock()

    def attach(self, processor: Any) -> None:
        """The processor whose tokenizer the prompts are checked against and completions decoded with."""
        self.processor = processor

    # -- the backend protocol ------------------------------------------------------------------------------------

    def read_scores(
        self, request: Request, images: list[Image.Image], tokens: NumberTokens, readout: str
    ) -> ScoreDetails:
        branches = branch_continuations(tokens, readout)
        ids = branch_token_ids(tokens)
        prompt = self._prompt_ids(request)
        texts = [self._branch_text(request, prompt, branch) for branch in branches]
        jobs = []
        for index, image in enumerate(images):
            url = self._data_url(image)
            server = next(self._turn) % len(self.urls)  # all branches of an image on one server: its caches hit
            expected = self._image_prompt(prompt, image)
            for branch, text in zip(branches, texts, strict=True):
                body = {
                    "model": self.model_id,
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
                jobs.append((index, server, body, expected + list(branch)))
        responses = self._run(jobs)
        servers = [self.urls[server] for _, server, _, _ in jobs]
        rows = [_digit_logprobs(response, ids, url) for response, url in zip(responses, servers, strict=True)]
        logprobs = torch.tensor(rows, dtype=torch.float64).view(len(images), len(branches), len(ids))
        return details_from_branches(logprobs, tokens, readout)

    def generate(self, request: Request, images: list[Image.Image], settings: dict) -> list[str]:
        sampling = sampling_settings(settings)
        prompt = self._prompt_ids(request)
        jobs = []
        for image in images:
            body = {
                "model": self.model_id,
                "messages": chat_messages(request, self._data_url(image), request.answer_prefix),
                "add_generation_prompt": not request.answer_prefix,
                "continue_final_message": bool(request.answer_prefix),
                "skip_special_tokens": True,
                "return_token_ids": True,
                **sampling,
            }
            jobs.append((0, next(self._turn) % len(self.urls), body, self._image_prompt(prompt, image)))
        choices = [response["choices"][0] for response in self._run(jobs)]
        if any(choice.get("token_ids") is None for choice in choices):  # not vLLM's extension: the server's text
            return [choice["message"]["content"] or "" for choice in choices]
        completions = [choice["token_ids"] for choice in choices]
        return self.processor.batch_decode(completions, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def fingerprint(self) -> str:
        """The served model's identity: its id and root (the path the server loaded it from)."""
        return "server-" + hashlib.sha256(f"{self.model_id}\n{self.root}".encode()).hexdigest()[:16]

    # -- prompts and their checks --------------------------------------------------------------------------------

    def _prompt_ids(self, request: Request) -> list[int]:
        return self.processor.tokenizer(request.text + request.answer_prefix, add_special_tokens=False)["input_ids"]

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

    def _image_prompt(self, prompt: list[int], image: Image.Image) -> list[int]:
        """The prompt's ids with its image pad expanded to the image's token count, as the server must see them."""
        image_processor = self.processor.image_processor
        side = image_processor.patch_size * image_processor.merge_size
        pad = int(self.processor.image_token_id)
        count = (image.height // side) * (image.width // side)
        at = prompt.index(pad)
        return prompt[:at] + [pad] * count + prompt[at + 1 :]

    def _data_url(self, image: Image.Image) -> str:
        return png_data_url(image)

    # -- HTTP ----------------------------------------------------------------------------------------------------

    def _run(self, jobs: list[tuple[int, int, dict, list[int]]]) -> list[dict]:
        """Post every job concurrently; the responses in job order. The first failure cancels the rest."""
        futures = [self._pool.submit(self._complete, server, body, expected) for _, server, body, expected in jobs]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [future for future in done if future.exception() is not None]
        if failed:
            for future in pending:
                future.cancel()
            raise failed[0].exception()
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
            except (OSError, http.client.HTTPException) as error:
                last = f"{url} does not answer ({type(error).__name__}: {error})"
            else:
                if status == 200:
                    return url, json.loads(payload)
                text = payload.decode("utf-8", "replace")[:500]
                last = f"{url}{path} answered HTTP {status}: {text}"
                if status not in RETRY_STATUS:
                    raise ServerError(last)
            if attempt < self.retries:
                time.sleep(self.backoff * 2**attempt)
        raise ServerError(
            f"{last}; gave up after {self.retries + 1} attempts. Is the server running (vq-reward serve MODEL) and "
            "reachable from here?"
        )

    def _served(self, url: str, model: str | None) -> dict:
        """The model `url` serves (`/v1/models`), checked against `model`."""
        try:
            status, payload = self._http(url, "GET", "/v1/models", None)
        except (OSError, http.client.HTTPException) as error:
            raise ServerError(
                f"{url} does not answer ({type(error).__name__}: {error}); start it with `vq-reward serve MODEL "
                "--host HOST --port PORT` and pass its URL."
            ) from None
        if status != 200:
            raise ServerError(f"{url}/v1/models answered HTTP {status}; is it a vLLM OpenAI-compatible server?")
        try:
            models = json.loads(payload)["data"]
        except (ValueError, KeyError, TypeError):
            raise ServerError(f"{url}/v1/models did not answer a model list; is it a vLLM server?") from None
        ids = [entry["id"] for entry in models]
        if model is not None:
            match = [entry for entry in models if entry["id"] == model or entry.get("root") == model]
            if not match:
                raise ServerError(f"{url} serves {ids}, not {model!r}; pass model= one of those, or the right URL.")
            return match[0]
        if len(models) != 1:
            raise ServerError(f"{url} serves {len(models)} models ({ids}); pass model= the one to score with.")
        return models[0]

    def _http(self, url: str, method: str, path: str, data: bytes | None) -> tuple[int, bytes]:
        """One request on this thread's keep-alive connection to `url`; a failed connection is dropped."""
        connections = self._local.__dict__.setdefault("connections", {})
        connection = connections.get(url)
        if connection is None:
            parts = urlsplit(url)
            kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
            connection = kind(parts.hostname, parts.port, timeout=self.timeout)
            connections[url] = connection
        prefix = urlsplit(url).path
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            connection.request(method, prefix + path, body=data, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        except BaseException:
            connection.close()
            connections.pop(url, None)
            raise


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
        by_id = {int(entry["token"].split(":", 1)[1]): entry["logprob"] for entry in top}
    except (KeyError, IndexError, TypeError, ValueError):
        raise ServerError(f"{url} answered without token log-probabilities; is it a vLLM server?") from None
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ServerError(
            f"{url} returned no log-probability for token ids {missing}; start it with --max-logprobs {len(ids)} or "
            "more (vq-reward serve does)."
        )
    return [float(by_id[i]) for i in ids]
