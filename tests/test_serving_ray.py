"""The scorer on a real Ray Serve (a local Ray instance, the tiny model): each protocol through a client written from
its description (urllib and pickle), scores equal to in-process `score()` on the same decoded pixels, and one bad or
malicious request failing alone. One application is shared by the module (about 30-60 s of Ray start-up here)."""

import base64
import io
import json
import pickle
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from conftest import free_port, noise_image
from PIL import Image

from vq_reward import VisualQualityScorer
from vq_reward.backends.server import ServerError


pytest.importorskip("ray.serve")

API_KEY = "test-key"
MAX_BODY = 2 << 20


def post(url: str, body: bytes, key: str | None = API_KEY) -> tuple[int, bytes]:
    """One POST; (status, body) whether it succeeded or not."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def get(url: str, key: str | None = API_KEY) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def decoded(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


@pytest.fixture(scope="module")
def server(tiny_path):
    """A local Ray instance serving the tiny model: 1 replica, the project's API key, a 2 MiB body limit."""
    from vq_reward.serving import launcher
    from vq_reward.serving.ray_app import ServeConfig

    port = free_port()
    config = ServeConfig(model=str(tiny_path), name="tiny", max_body_bytes=MAX_BODY, api_key=API_KEY)
    run = launcher.start_ray(None, num_cpus=2)
    try:
        launcher.deploy(config, {"num_replicas": 1, "ray_actor_options": {"num_cpus": 1}}, "127.0.0.1", port)
        launcher.wait_healthy(f"http://127.0.0.1:{port}", 60)
        yield f"http://127.0.0.1:{port}"
    finally:
        launcher.stop(run, config.app_name)


@pytest.fixture(scope="module")
def images():
    return [noise_image(96 + 16 * i, 80, seed=i) for i in range(4)]


def test_health_and_identity_name_the_weights(server, scorer):
    assert get(server + "/health", key=None) == (200, b"ok\n")  # health needs no key
    assert get(server + "/v1/models", key=None)[0] == 401
    assert get(server + "/v1/models", key="wrong")[0] == 401
    status, body = get(server + "/v1/models")
    models = json.loads(body)["data"]
    fingerprint = scorer.backend.fingerprint()
    assert [entry["id"] for entry in models] == ["tiny", f"tiny@{fingerprint}"]
    assert models[0]["engine"] == "ray" and models[0]["fingerprint"] == fingerprint
    assert (models[0]["min_pixels"], models[0]["max_pixels"]) == (scorer.min_pixels, scorer.max_pixels)


def test_verl_omni_protocol(server, scorer, images):
    """verl-omni's HTTP scorer: pickled {"images": [PNG or JPEG bytes], "prompts", "metadata"} -> {"scores"}."""
    files = [encoded(images[0], "PNG"), encoded(images[1], "JPEG", quality=75)]
    body = pickle.dumps({"images": files, "prompts": ["a", "b"], "metadata": {"step": 1}})
    status, answer = post(server + "/score", body)
    assert status == 200, answer
    scores = pickle.loads(answer)["scores"]
    expected = scorer.score([decoded(data) for data in files]).tolist()
    assert scores == pytest.approx(expected, abs=1e-6)
    assert all(isinstance(score, float) for score in scores)


def test_flow_grpo_protocol(server, scorer, images):
    """Flow-GRPO's reward server: POST / with pickled {"images": [JPEG bytes], "queries"} -> {"outputs"}."""
    files = [encoded(image, "JPEG", quality=90) for image in images]
    status, answer = post(server + "/", pickle.dumps({"images": files, "queries": [["q"]] * len(files)}))
    assert status == 200, answer
    expected = scorer.score([decoded(data) for data in files]).tolist()
    assert pickle.loads(answer)["outputs"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("readout", ["number", "first-digit"])
def test_project_protocol_returns_every_figure(server, scorer, images, readout):
    prepared = scorer.prepare(images)
    body = {"images": [base64.b64encode(encoded(image, "PNG")).decode() for image in prepared], "readout": readout}
    status, answer = post(server + "/v1/score", json.dumps(body).encode())
    assert status == 200, answer
    served = json.loads(answer)
    details = scorer.score_details(prepared, readout=readout)
    assert served["readout"] == readout and served["fingerprint"] == scorer.backend.fingerprint()
    for name in ("scores", "std", "probs", "digit_mass"):
        assert np.allclose(served[name], getattr(details, name).numpy(), atol=1e-6, rtol=0), name
    assert (served["dot_mass"][0] is None) == (details.dot_mass is None)


def test_project_protocol_refuses_other_weights_and_unsized_images(server, images):
    png = base64.b64encode(encoded(images[0], "PNG")).decode()  # 96x80: not a size the pixel budget keeps
    status, answer = post(server + "/v1/score", json.dumps({"images": [png]}).encode())
    assert status == 400 and b"resized it with another budget" in answer
    body = {"images": [png], "model": "tiny@0123456789abcdef"}
    status, answer = post(server + "/v1/score", json.dumps(body).encode())
    assert status == 404 and b"does not exist here" in answer


def test_a_malicious_pickle_gets_a_400_and_runs_nothing(server, tmp_path):
    target = tmp_path / "pwned"

    class WritesAFile:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {target}",))

    for route in ("/score", "/"):
        status, answer = post(server + route, pickle.dumps({"images": [WritesAFile()]}))
        assert status == 400, answer
        assert not target.exists()
    assert b"opcode" in pickle.loads(post(server + "/score", pickle.dumps(WritesAFile()))[1])["error"].encode()


def test_one_bad_request_fails_alone_among_concurrent_ones(server, scorer, images):
    good = pickle.dumps({"images": [encoded(images[2], "PNG")]})
    bad = pickle.dumps({"images": [encoded(images[2], "PNG"), b"\x89PNG truncated"]})
    results: dict[int, tuple[int, bytes]] = {}

    def send(index: int) -> None:
        results[index] = post(server + "/score", bad if index == 3 else good)

    threads = [threading.Thread(target=send, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = scorer.score([images[2]]).tolist()
    for index, (status, answer) in results.items():
        if index == 3:
            assert status == 400 and "images[1]" in pickle.loads(answer)["error"]
        else:
            assert status == 200 and pickle.loads(answer)["scores"] == pytest.approx(expected, abs=1e-6)


def test_a_body_over_the_limit_gets_413_and_unknown_routes_404(server):
    status, answer = post(server + "/score", b"\0" * (MAX_BODY + 1))
    assert status == 413 and "limit" in pickle.loads(answer)["error"]
    status, answer = post(server + "/", b"\0" * (MAX_BODY + 1))
    assert status == 413 and b"limit" in answer  # Flow-GRPO's errors are plain text
    assert get(server + "/v2/anything")[0] == 404


@pytest.mark.parametrize("readout", ["number", "first-digit"])
def test_from_server_finds_the_ray_engine_and_scores_like_in_process(server, scorer, images, readout):
    client = VisualQualityScorer.from_server(server, api_key=API_KEY, readout=readout)
    assert client.backend.served.engine == "ray"
    assert client.backend.fingerprint() == f"server-{scorer.backend.fingerprint()}"
    details, expected = client.score_details(images), scorer.score_details(images, readout=readout)
    for name in ("scores", "std", "probs", "digit_mass"):
        assert torch.allclose(getattr(details, name), getattr(expected, name), atol=1e-6, rtol=0), name
    same_size = [image.resize((96, 80)) for image in images]
    rewards, _ = client.as_reward()(np.stack([np.asarray(image) for image in same_size]), [], [])
    assert rewards == pytest.approx(scorer.score(same_size, readout=readout).numpy(), abs=1e-6)
    with pytest.raises(ServerError, match="score readouts only"):
        client.generate(images[:1])


def test_a_client_with_another_prompt_is_refused(server, images):
    client = VisualQualityScorer.from_server(server, api_key=API_KEY, prompt_style="q-insight")
    with pytest.raises(ServerError, match="prompt differs"):
        client.score(images[:1])


def test_a_framework_on_ray_calls_the_deployment_handle(server, scorer, images):
    """No HTTP: the handle a Ray-based RL framework holds; a bad image fails its own call, not the batch it meets."""
    from ray import serve

    from vq_reward.images import ImageInputError

    handle = serve.get_deployment_handle("ScorerReplica", app_name="vq-reward")
    arrays = [np.asarray(image) for image in images]
    good = [handle.score.remote(arrays, "first-digit") for _ in range(3)]
    bad = handle.score.remote([arrays[0], np.zeros((4, 4, 3), np.uint8)])
    expected = scorer.score(images, readout="first-digit").tolist()
    for response in good:
        assert [row["scores"] for row in response.result()["rows"]] == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ImageInputError, match="at least 28"):
        bad.result()
