"""The server client (`from_server`) against misbehaving peers, without vLLM: a server that trickles its answer,
answers 200 with a proxy's page, wants an API key, or was restarted with other weights. The peers here are fakes
on purpose: a real vLLM server never misbehaves this way on demand. What a real server does is tested in
tests/test_vllm.py under `-m vllm`.
"""

import http.server
import json
import pickle
import threading
import time
import warnings
from collections.abc import Callable, Iterator

import pytest
from conftest import noise_image

from vq_reward import VisualQualityScorer
from vq_reward.backends.server import ServerBackend, ServerError


OLD, NEW = "a" * 16, "b" * 16  # two weights fingerprints


class Peer:
    """An HTTP peer on a free local port: `/v1/models` lists `models` (checked against `key` when set); every other
    request is answered by `answer(handler, body)`."""

    def __init__(self, models: list[dict], answer: Callable, key: str | None = None) -> None:
        self.models, self.answer, self.key = models, answer, key
        self.seen_keys: list[str | None] = []
        peer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if peer.refused(self):
                    return
                data = json.dumps({"object": "list", "data": peer.models}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not peer.refused(self):
                    peer.answer(self, body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def refused(self, handler: http.server.BaseHTTPRequestHandler) -> bool:
        self.seen_keys.append(handler.headers.get("Authorization"))
        if self.key is None or handler.headers.get("Authorization") == f"Bearer {self.key}":
            return False
        reply(handler, 401, b'{"error": "Unauthorized"}')
        return True

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def reply(handler: http.server.BaseHTTPRequestHandler, status: int, data: bytes) -> None:
    handler.send_response(status)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def trickle(data: bytes, every: float = 0.3, limit: float = 20.0) -> Callable:
    """An answer that sends `data` one byte every `every` seconds, for `limit` seconds at most."""

    def answer(handler: http.server.BaseHTTPRequestHandler, body: dict) -> None:
        start = time.monotonic()
        try:
            for byte in data:
                if time.monotonic() - start > limit:
                    return
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
                time.sleep(every)
        except OSError:  # the client hung up: what it should do
            pass

    return answer


@pytest.fixture
def peers() -> Iterator[Callable[..., Peer]]:
    started: list[Peer] = []

    def start(*args, **kwargs) -> Peer:
        started.append(Peer(*args, **kwargs))
        return started[-1]

    yield start
    for peer in started:
        peer.close()


def plain(tiny_path) -> list[dict]:
    """The model list of a plain vLLM server serving the tiny checkpoint (no weights alias)."""
    return [{"id": "tiny", "root": str(tiny_path), "max_model_len": 4096}]


def published(tiny_path, weights: str) -> list[dict]:
    """The model list of `vq-reward serve`: the name and its weights alias."""
    return [*plain(tiny_path), {"id": f"tiny@{weights}", "root": str(tiny_path), "max_model_len": 4096}]


def connect(url: str, **kwargs) -> VisualQualityScorer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a plain server's "publishes no weights fingerprint"
        return VisualQualityScorer.from_server(url, **kwargs)


# -- a request's wall time is bounded -----------------------------------------------------------------------------

COMPLETION = json.dumps({"choices": [{"message": {"content": "3"}}]}).encode()
WHOLE = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(COMPLETION),
    COMPLETION,
)


def trickled_body(handler: http.server.BaseHTTPRequestHandler, body: dict) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(COMPLETION)))
    handler.end_headers()
    handler.wfile.flush()
    trickle(COMPLETION)(handler, body)


@pytest.mark.parametrize("answer", [trickle(WHOLE), trickled_body], ids=["from-the-status-line", "the-body"])
def test_a_trickling_server_is_cut_off_at_the_request_deadline(peers, tiny_path, answer):
    # One byte every 0.3 s: each socket read is quick, so only a deadline on the whole request ends it (0.2 waited
    # for the whole trickle).
    peer = peers(plain(tiny_path), answer)
    scorer = connect(peer.url, timeout=2, retries=1)
    start = time.monotonic()
    with pytest.raises(ServerError, match=rf"{peer.url} sent no whole answer within the 2 s timeout; gave up after 2"):
        scorer.score(noise_image(56, 56), readout="first-digit")
    assert time.monotonic() - start < 2 * 2 + 0.5 + 2.5  # two attempts of 2 s, the backoff, and slack


def test_a_200_answer_that_is_not_json_is_one_line_naming_the_url(peers, tiny_path):
    peer = peers(plain(tiny_path), lambda handler, body: reply(handler, 200, b"<html><body>proxy login</body></html>"))
    scorer = connect(peer.url, retries=3)
    with pytest.raises(ServerError) as caught:
        scorer.score(noise_image(56, 56), readout="first-digit")
    message = str(caught.value)
    assert message.startswith(f"{peer.url}/v1/chat/completions answered HTTP 200 with a body that is not a JSON")
    assert "<html><body>proxy login" in message and "\n" not in message


# -- API key ------------------------------------------------------------------------------------------------------


def test_the_api_key_goes_with_every_request_and_a_missing_one_says_what_to_do(peers, tiny_path, monkeypatch):
    monkeypatch.delenv("VQ_REWARD_API_KEY", raising=False)
    answered = lambda handler, body: reply(handler, 503, b"fake peer: no completions")  # noqa: E731
    peer = peers(published(tiny_path, OLD), answered, key="s3cret")
    with pytest.raises(ServerError, match=rf"{peer.url} answered HTTP 401: it needs an API key.*VQ_REWARD_API_KEY"):
        connect(peer.url)
    with pytest.raises(ServerError, match="refuses this scorer's API key"):
        connect(peer.url, api_key="wrong")
    scorer = connect(peer.url, api_key="s3cret", retries=0)
    with pytest.raises(ServerError, match="HTTP 503"):  # the chat request carried the key too (no 401)
        scorer.score(noise_image(56, 56), readout="first-digit")
    assert peer.seen_keys[-1] == "Bearer s3cret"

    # The key never travels in a pickle; a copy reads VQ_REWARD_API_KEY where it is built.
    source = scorer.backend.source()
    assert "s3cret" not in repr(source) and b"s3cret" not in pickle.dumps(scorer.as_reward())
    monkeypatch.setenv("VQ_REWARD_API_KEY", "s3cret")
    copy = ServerBackend(**source.kwargs)
    assert copy.source() == source and peer.seen_keys[-1] == "Bearer s3cret"


# -- the served identity is the weights -----------------------------------------------------------------------


def test_a_server_restarted_with_other_weights_is_refused_not_scored(peers, tiny_path):
    def answer(handler, body):  # as vLLM: 404 for a model name it does not serve
        if body["model"] not in [entry["id"] for entry in peer.models]:
            message = f"The model `{body['model']}` does not exist."
            reply(handler, 404, json.dumps({"error": {"message": message, "type": "NotFoundError"}}).encode())
        else:
            reply(handler, 503, b"fake peer: no completions")

    peer = peers(published(tiny_path, OLD), answer)
    scorer = connect(peer.url, retries=0)
    assert scorer.backend.fingerprint() == f"server-{OLD}" and scorer.backend.model_id == "tiny"
    source = scorer.backend.source()
    assert source.model == "tiny" and source.kwargs["model"] == f"tiny@{OLD}"

    peer.models = published(tiny_path, NEW)  # "restarted" with other weights under the same name and root
    with pytest.raises(ServerError) as caught:
        scorer.score(noise_image(56, 56), readout="first-digit")
    assert str(caught.value).startswith(f"{peer.url} now serves other weights than when this scorer connected")
    assert f"'tiny@{OLD}' is gone; it serves ['tiny', 'tiny@{NEW}']" in str(caught.value)
    with pytest.raises(ServerError, match=f"serves 'tiny' with other weights \\({NEW}\\) than 'tiny@{OLD}' names"):
        ServerBackend(**source.kwargs)  # a pickled reward's copy refuses them too
    assert connect(peer.url).backend.fingerprint() == f"server-{NEW}"  # connecting anew takes the new weights


def test_a_plain_vllm_server_still_works_with_a_note(peers, tiny_path):
    peer = peers(plain(tiny_path), lambda handler, body: reply(handler, 503, b""))
    with pytest.warns(UserWarning, match="publishes no weights fingerprint"):
        backend = ServerBackend(peer.url)
    assert backend.served.name == "tiny" and backend.fingerprint().startswith("server-")


def test_served_models_fold_each_weights_alias_into_its_model():
    from vq_reward.backends.served import ServedModel, choose_model, served_models

    entries = [
        {"id": "a", "root": "/a"},
        {"id": f"a@{OLD}", "root": "/a"},
        {"id": "b", "root": "/b"},
        {"id": f"b@{NEW}", "root": "/elsewhere"},  # another root: not b's alias, a model of its own
    ]
    models = served_models(entries)
    assert models == [
        ServedModel("a", "/a", OLD),
        ServedModel("b", "/b"),
        ServedModel(f"b@{NEW}", "/elsewhere"),
    ]
    assert choose_model(models, "/a", "U").name == f"a@{OLD}"
    assert choose_model(models, f"a@{OLD}", "U").name == f"a@{OLD}"
    with pytest.raises(ServerError, match="U serves 3 models"):
        choose_model(models, None, "U")
    with pytest.raises(ServerError, match=rf"U serves \['a', 'b', 'b@{NEW}'\], not 'c'"):
        choose_model(models, "c", "U")
