"""Scale-out on one machine (slow): two replicas on two Ray "nodes" (`ray.cluster_utils.Cluster`), deployed through
an address as onto a real cluster, score the Q-Insight style exactly like in-process."""

import io
import os
import pickle
import shutil
import tempfile

import pytest
from conftest import free_port, noise_image, post
from PIL import Image

from vq_reward import VisualQualityScorer


pytest.importorskip("ray.serve")


@pytest.mark.slow
def test_two_replicas_on_two_nodes_score_qinsight_like_in_process(tiny_path, monkeypatch):
    """A second Ray "node" on this machine (ray.cluster_utils.Cluster), one replica per node, deployed through
    --address as onto a real cluster; the Q-Insight prompt style."""
    from ray import serve
    from ray.cluster_utils import Cluster

    from vq_reward.serving import launcher
    from vq_reward.serving.ray_app import ServeConfig

    folder = tempfile.mkdtemp(prefix="vqr-ray-")  # short: Ray's socket paths live inside it
    # Cluster writes the head's address into $RAY_TMPDIR/ray whatever temp_dir says; keep it here, not in a
    # /tmp/ray that may not exist on a fresh machine (FileNotFoundError there) or may belong to another Ray.
    monkeypatch.setenv("RAY_TMPDIR", folder)
    os.makedirs(os.path.join(folder, "ray"))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "temp_dir": folder})  # fmt: skip
    cluster.add_node(num_cpus=1, temp_dir=folder)
    port = free_port()
    config = ServeConfig(model=str(tiny_path), name="tiny", scorer=(("prompt_style", "q-insight"),))
    run = launcher.start_ray(cluster.address)
    try:
        options = {"num_replicas": 2, "max_replicas_per_node": 1, "ray_actor_options": {"num_cpus": 1}}
        launcher.deploy(config, options, "127.0.0.1", port)
        url = f"http://127.0.0.1:{port}"
        launcher.wait_healthy(url, 120)
        handle = serve.get_deployment_handle("ScorerReplica", app_name=config.app_name)
        places = {handle.place.remote().result() for _ in range(40)}
        assert len({node for _, node in places}) == 2, places
        images = [noise_image(64 + 8 * i, 64, seed=i) for i in range(6)]
        files = []
        for image in images:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            files.append(buffer.getvalue())
        reference = VisualQualityScorer.from_pretrained(tiny_path, prompt_style="q-insight")
        expected = reference.score([Image.open(io.BytesIO(data)).convert("RGB") for data in files]).tolist()
        for _ in range(4):  # requests land on either replica
            status, answer = post(url + "/score", pickle.dumps({"images": files}))
            assert status == 200, answer
            assert pickle.loads(answer)["scores"] == pytest.approx(expected, abs=1e-6)
    finally:
        launcher.stop(run, config.app_name)
        cluster.shutdown()
        shutil.rmtree(folder, ignore_errors=True)
