"""The Ray server under failure (slow: a Ray instance of its own): a replica killed mid-batch fails its request
with a clear 503 and is replaced, and a request over the deadline gets a clear 504."""

import io
import os
import pickle
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import free_port, noise_image, post

from vq_reward.serving.launcher import wait_healthy


pytest.importorskip("ray.serve")
pytestmark = pytest.mark.slow


def jpeg_body(count: int, size: int = 224) -> bytes:
    files = []
    for seed in range(count):
        buffer = io.BytesIO()
        noise_image(size, size, seed=seed % 16).save(buffer, format="JPEG", quality=50)
        files.append(buffer.getvalue())
    return pickle.dumps({"images": files})


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def one_by_one(tiny_path):
    """1 replica scoring one image per forward (so a big request lasts) with a 5 s deadline."""
    from ray import serve

    from vq_reward.serving import launcher
    from vq_reward.serving.ray_app import ServeConfig

    port, config = free_port(), ServeConfig(model=str(tiny_path), name="tiny", max_batch_size=1, request_timeout_s=5)
    run = launcher.start_ray(None, num_cpus=2)
    try:
        launcher.deploy(config, {"num_replicas": 1, "ray_actor_options": {"num_cpus": 1}}, "127.0.0.1", port)
        url = f"http://127.0.0.1:{port}"
        launcher.wait_healthy(url, 120)
        yield url, serve.get_deployment_handle("ScorerReplica", app_name=config.app_name)
    finally:
        launcher.stop(run, config.app_name)


def test_a_request_over_the_deadline_gets_a_clear_504(one_by_one):
    url, _ = one_by_one
    started = time.monotonic()
    status, answer = post(url + "/score", jpeg_body(1000))
    assert status == 504, answer
    assert "deadline of 5 s" in pickle.loads(answer)["error"]
    assert time.monotonic() - started < 60


def test_a_replica_killed_mid_batch_fails_its_request_and_is_replaced(one_by_one):
    url, handle = one_by_one
    wait_healthy(url, 120)  # the previous test's request may still be draining
    pid, _ = handle.place.remote().result()
    result: dict[str, tuple[int, bytes]] = {}
    sender = threading.Thread(target=lambda: result.setdefault("answer", post(url + "/score", jpeg_body(300))))
    before = cpu_seconds(pid)
    sender.start()
    while cpu_seconds(pid) - before < 0.5:  # the replica is busy with the request's forwards
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    sender.join(timeout=120)
    status, answer = result["answer"]
    assert status == 503, answer
    assert "died mid-batch" in pickle.loads(answer)["error"]
    wait_healthy(url, 180)  # Serve starts a new replica
    assert handle.place.remote().result()[0] != pid
    status, answer = post(url + "/score", jpeg_body(2))
    assert status == 200 and len(pickle.loads(answer)["scores"]) == 2
