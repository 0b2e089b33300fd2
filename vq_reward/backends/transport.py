"""HTTP to vq-reward servers: the server backend's transport (`backends.server`), over the standard library.

Each thread keeps one keep-alive connection per URL. `timeout` bounds each request's wall time, connecting, sending
and reading the answer together (a server or proxy that trickles bytes is cut off at the deadline); 429/5xx answers,
connection errors and timeouts are retried with exponential backoff, each retry on the next server of the list. The
defaults suit a training loop: 120 s per request (a one-token readout takes well under a second on a GPU; a long
thinking generation on a busy server fits) and 2 retries, so a stalled server fails a call with a `ServerError`
naming its URL after about 6 minutes (3 x 120 s + 1.5 s of backoff) instead of hanging.

API key. A server started with `vq-reward serve --api-key KEY` (vLLM's `--api-key`) answers 401 without it: pass
`api_key=`, or set `VQ_REWARD_API_KEY`, which is also where copies of a pickled reward read it (the key itself is
never part of a backend's `source()`, so it is not written into pickles or checkpoints).
"""

import http.client
import io
import json
import os
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit


RETRY_STATUS = (429, 500, 502, 503, 504)
DEFAULT_TIMEOUT = 120.0
DEFAULT_RETRIES = 2
API_KEY_ENV = "VQ_REWARD_API_KEY"


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
    if not urlsplit(text).hostname:
        raise ValueError(f"{url!r} is not a server URL; pass http://HOST:PORT.")
    return text.removesuffix("/v1")


class HttpClient:
    """JSON over HTTP to one or several servers. Thread-safe: each thread has its own connections.

    Args:
        urls: one URL or several (normalised by `normalise_url`).
        timeout: seconds one request may take in all: connecting, sending and reading the whole answer.
        retries: attempts after the first, for 429/5xx answers, connection errors and timeouts.
        backoff: seconds before the first retry; doubled for each next one.
        api_key: sent as a bearer token; default: the `VQ_REWARD_API_KEY` variable.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = 0.5,
        api_key: str | None = None,
    ) -> None:
        self.urls = [normalise_url(url) for url in ([urls] if isinstance(urls, str) else list(urls))]
        if not self.urls:
            raise ValueError("a server backend needs at least one URL.")
        if timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout}.")
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        self._local = threading.local()

    def models(self, url: str) -> list[dict]:
        """`url`'s `/v1/models` list."""
        try:
            status, payload = self.request(url, "GET", "/v1/models", None)
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

    def post(self, server: int, path: str, body: dict) -> tuple[str, dict]:
        """POST with retries; each retry goes to the next server of the list. Returns (url, decoded JSON)."""
        data = json.dumps(body).encode()
        last = ""
        for attempt in range(self.retries + 1):
            url = self.urls[(server + attempt) % len(self.urls)]
            try:
                status, payload = self.request(url, "POST", path, data)
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
                    raise self._gone(url, payload, body.get("model"))
                last = f"{url}{path} answered HTTP {status}: {_one_line(payload)}"
                if status not in RETRY_STATUS:
                    raise ServerError(last)
            if attempt < self.retries:
                time.sleep(self.backoff * 2**attempt)
        raise ServerError(
            f"{last}; gave up after {self.retries + 1} attempts. Is the server running (vq-reward serve MODEL) and "
            "reachable from here?"
        )

    def request(self, url: str, method: str, path: str, data: bytes | None) -> tuple[int, bytes]:
        """One request on this thread's keep-alive connection to `url`, within `timeout` seconds in all (connect,
        send, answer); a failed connection is dropped. Returns (status, body)."""
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
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
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

    def _refused(self, url: str, status: int) -> ServerError:
        if self.api_key is None:
            return ServerError(
                f"{url} answered HTTP {status}: it needs an API key (it was started with --api-key). Pass "
                f"from_server(..., api_key=KEY) or set {API_KEY_ENV} (vq-reward score reads the variable)."
            )
        return ServerError(
            f"{url} answered HTTP {status}: it refuses this scorer's API key (from api_key= or {API_KEY_ENV}); "
            "pass the key the server was started with."
        )

    def _gone(self, url: str, payload: bytes, model: str | None) -> ServerError:
        """A 404 on a request naming the served `model`: the server now serves other weights, or the path is wrong."""
        try:
            now = self.models(url)
        except ServerError:
            now = []
        if any(entry["id"] == model for entry in now):  # still served: a 404 for another reason
            return ServerError(f"{url} answered HTTP 404: {_one_line(payload)}")
        return ServerError(
            f"{url} now serves other weights than when this scorer connected ({model!r} is gone; it "
            f"serves {[entry['id'] for entry in now]}): it was restarted with another checkpoint, and no score of "
            "other weights is returned. Connect again (from_server) to score with the weights it serves now, or "
            "restart it with the checkpoint this scorer connected to."
        )


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
    when the response is made, is the time left (`HttpClient.request` sets it)."""

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
