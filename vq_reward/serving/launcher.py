"""Start, deploy and stop: a local Ray instance of our own (or an existing cluster) running the scorer application.

Without an address, `start_ray` starts Ray in this process (no dashboard, a temporary folder of ours, the cores
and GPUs this machine has) and `stop` shuts it down with every process it started and removes the folder. A
watchdog process (`vq_reward.serving.watchdog`) does the same if this process dies without stopping (SIGKILL
included). With an address, `start_ray` connects to the cluster and `stop` deletes only our application from it
(an application of a launcher killed with SIGKILL stays on the cluster: `serve delete vq-reward` removes it).
"""

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from vq_reward.serving.ray_app import ServeConfig, build_app
from vq_reward.serving.watchdog import MARK_VARIABLE


@dataclass
class RayRun:
    """What `start_ray` started: for a local instance of ours, its folder and its watchdog."""

    address: str | None
    temp_dir: str | None = None
    watchdog: subprocess.Popen | None = None


def start_ray(address: str | None, num_cpus: int | None = None, num_gpus: int | None = None) -> RayRun:
    """Connect to the cluster at `address`, or start a local Ray instance of our own (see the module docstring)."""
    import ray

    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        return RayRun(address)
    temp_dir = tempfile.mkdtemp(prefix="vqr-ray-")  # short: Ray's socket paths live inside it
    mark = os.path.basename(temp_dir)
    watchdog = subprocess.Popen(
        [sys.executable, "-m", "vq_reward.serving.watchdog", mark, temp_dir],
        stdin=subprocess.PIPE,
        start_new_session=True,  # outside the terminal's process group: a Ctrl-C reaches the launcher only
    )
    os.environ[MARK_VARIABLE] = mark  # every Ray process started from here inherits it
    try:
        ray.init(
            num_cpus=num_cpus or len(os.sched_getaffinity(0)),
            num_gpus=num_gpus,
            include_dashboard=False,
            _temp_dir=temp_dir,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    except BaseException:  # a signal during start-up included: what started is stopped
        stop(RayRun(None, temp_dir, watchdog), app_name="")
        raise
    return RayRun(None, temp_dir, watchdog)


def deploy(
    config: ServeConfig,
    scorer_options: dict[str, Any],
    host: str,
    port: int,
    proxy_every_node: bool = False,
) -> None:
    """Start Serve's HTTP proxy and deploy the application; returns once every replica runs (model loaded)."""
    from ray import serve

    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # its INFO lines say what our own lines say
    serve.start(
        http_options={"host": host, "port": port, "location": "EveryNode" if proxy_every_node else "HeadOnly"},
        logging_config={"log_level": "WARNING"},
    )
    serve.run(
        build_app(config, scorer_options),
        name=config.app_name,
        route_prefix="/",
        logging_config={"log_level": "WARNING"},
    )


def wait_healthy(url: str, timeout: float) -> None:
    """Poll `GET url/health` until it answers 200; `TimeoutError` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}/health did not answer 200 within {timeout:g} s.")
        time.sleep(0.5)


def stop(run: RayRun, app_name: str) -> None:
    """Delete our application (on a cluster) or stop Serve and the whole local instance; never raises."""
    import ray
    from ray import serve

    try:
        if ray.is_initialized() and run.address:
            serve.delete(app_name)
        elif ray.is_initialized():
            serve.shutdown()
    except Exception as error:  # stopping goes on: Ray itself is shut down below
        logging.getLogger(__name__).warning("stopping Serve: %s", error)
    finally:
        ray.shutdown()
        if run.watchdog is not None:  # it stops what Ray left behind (its agents linger) and removes the folder
            run.watchdog.communicate(timeout=30)
        if run.temp_dir:
            shutil.rmtree(run.temp_dir, ignore_errors=True)
