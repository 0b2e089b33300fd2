"""`vq-reward serve MODEL --engine ray`: the in-process HF scorer on Ray Serve, replicas with dynamic batching.

    vq-reward serve taught --engine ray --port 8000                                 # this machine, local Ray
    vq-reward serve TianheWu/VisualQuality-R1-7B --engine ray --replicas 8 --host 0.0.0.0   # 8 GPUs, one each
    vq-reward serve MODEL --engine ray --address auto --replicas 16 --proxy-every-node    # an existing cluster
    # elsewhere: VisualQualityScorer.from_server(URL); verl-omni: POST URL/score; Flow-GRPO: POST URL/

It reads the exact number readout in one forward per batch (vLLM needs 49 requests per image for it). Without
`--address` it starts a Ray instance of its own on this machine (no dashboard, its own temporary folder, this
machine's cores and GPUs) and stops it on exit; with `--address` it deploys onto that cluster (replicas spread over
its nodes, `--num-gpus 1` each by default when the cluster has GPUs) and deletes its application on exit. The
URL is printed once every replica has loaded the model and `/health` answers 200. SIGINT, SIGTERM and SIGHUP stop
everything it started. The application and its routes: `vq_reward.serving.ray_app`.
"""

import argparse
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from vq_reward.cli.options import positive_int


if TYPE_CHECKING:
    from vq_reward.serving.ray_app import ServeConfig


class _Stop(BaseException):
    """Raised in the main thread by SIGINT, SIGTERM or SIGHUP, so a start-up in progress is abandoned too."""


def add_arguments(serve: argparse.ArgumentParser) -> None:
    """The `--engine ray` options of `vq-reward serve` (the model, host, port, pixel budget and dtype are shared)."""
    ray = serve.add_argument_group("--engine ray (Ray Serve)")
    ray.add_argument(
        "--address", default=None, help="deploy onto this Ray cluster (auto, HEAD:6379) instead of a local Ray"
    )
    ray.add_argument("--replicas", type=positive_int, default=1, help="scorer replicas (default 1)")
    ray.add_argument(
        "--num-gpus", type=float, default=None, help="GPUs per replica (default: 1 when the cluster has GPUs, else 0)"
    )
    ray.add_argument(
        "--num-cpus",
        type=float,
        default=None,
        help="CPUs per replica = its torch threads (default: 1 with GPUs, else CPUs / replicas)",
    )
    ray.add_argument(
        "--autoscale",
        default=None,
        metavar="MIN:MAX",
        help="let Serve scale between MIN and MAX replicas on load (instead of --replicas)",
    )
    ray.add_argument("--max-replicas-per-node", type=positive_int, default=None, help="spread replicas over nodes")
    ray.add_argument(
        "--proxy-every-node",
        action="store_true",
        help="an HTTP proxy on every node of the cluster (default: the head node only)",
    )
    ray.add_argument(
        "--max-batch-size",
        type=positive_int,
        default=32,
        help="images per forward at most, from all requests together (default 32)",
    )
    ray.add_argument(
        "--batch-wait-ms",
        type=float,
        default=50.0,
        help="how long a batch waits for more images before it runs (default 50)",
    )
    ray.add_argument(
        "--readout",
        default="number",
        choices=["number", "first-digit"],
        help="the default readout (project clients may ask for the other per request)",
    )
    ray.add_argument(
        "--prompt-style",
        default="visualquality-r1",
        choices=["visualquality-r1", "q-insight"],
        help="which model family's prompt the replicas score with",
    )
    ray.add_argument(
        "--request-timeout",
        type=float,
        default=120.0,
        help="a request not scored after this many seconds gets a 504 (default 120)",
    )
    ray.add_argument("--max-body-mb", type=float, default=256.0, help="larger request bodies get a 413 (default 256)")


def run(args: argparse.Namespace) -> int:
    """Start (or connect to) Ray, deploy, print the URL once healthy, and stop everything on a signal."""
    if args.autoscale:
        _autoscale_range(args.autoscale)  # what can be checked in a moment fails first (the port: cli.serve)
    from vq_reward.hub import canonical_name, resolve_model

    model = resolve_model(args.model, args.revision)
    _check_ray_installed()
    from vq_reward.serving import launcher

    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {number: signal.signal(number, _raise_stop) for number in stops}
    run_info, config, start = None, None, time.monotonic()
    try:
        print(f"vq-reward serve: starting Ray Serve for {args.model}", file=sys.stderr, flush=True)
        run_info = launcher.start_ray(args.address)
        for number in stops:  # Ray's core worker installs its own handlers in ray.init: ours again
            signal.signal(number, _raise_stop)
        _check_stop()
        config, options = _config(args, model, canonical_name(args.model))
        signal.signal(signal.SIGALRM, _startup_timed_out)
        signal.alarm(int(args.startup_timeout))  # SIGALRM ends a start-up that hangs
        launcher.deploy(config, options, args.host, args.port, args.proxy_every_node)
        _check_stop()
        url = _public_url(args.host, args.port)
        launcher.wait_healthy(_local_url(args.host, args.port), args.startup_timeout)
        _check_stop()
        signal.alarm(0)
        low, high = _autoscale_range(args.autoscale) if args.autoscale else (args.replicas, args.replicas)
        replicas = f"{low} replica{'s' * (low != 1)}" if low == high else f"{low} to {high} replicas, autoscaled"
        print(
            f"vq-reward serve: {url} serves {config.name} with Ray Serve ({replicas}; ready after "
            f"{time.monotonic() - start:.0f} s). Connect with VisualQualityScorer.from_server({url!r}); verl-omni: "
            f"POST {url}/score; Flow-GRPO: POST {url}/",
            flush=True,
        )
        while True:
            _check_stop()
            signal.pause()
    except _Stop as stop:
        if str(stop) == "timeout":
            raise RuntimeError(
                f"the Ray server was not ready within --startup-timeout {args.startup_timeout} s."
            ) from None
        print(f"vq-reward serve: {stop}: stopping Ray Serve", file=sys.stderr, flush=True)
        return 0
    except RuntimeError as error:  # Serve's deploy failures carry a replica's whole traceback: its last line
        raise RuntimeError(f"the Ray server did not start: {_last_line(error)}") from None
    finally:
        signal.alarm(0)
        for number in previous:
            signal.signal(number, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop short
        if run_info is not None:
            launcher.stop(run_info, config.app_name if config else "vq-reward")
        for number, handler in previous.items():
            signal.signal(number, handler)


def _config(args: argparse.Namespace, model: str, name: str) -> tuple["ServeConfig", dict[str, Any]]:
    """The replicas' config and `ScorerReplica.options(...)`, from the arguments and the cluster's resources."""
    import ray

    from vq_reward.serving.ray_app import ServeConfig

    resources = ray.cluster_resources()
    if args.num_gpus is not None:
        gpus = args.num_gpus
    else:  # --device auto|cpu|gpu, as for vLLM; auto: a GPU each when the cluster has GPUs
        gpus = 1.0 if args.device == "gpu" or (args.device == "auto" and resources.get("GPU", 0) > 0) else 0.0
    replicas = _autoscale_range(args.autoscale)[1] if args.autoscale else args.replicas
    cpus = args.num_cpus or (1.0 if gpus else max(1.0, float(int(resources.get("CPU", 1)) // replicas)))
    threads = max(1, int(cpus))
    budget = {key: value for key, value in (("min_pixels", args.min_pixels), ("max_pixels", args.max_pixels)) if value}
    scorer = {"readout": args.readout, "prompt_style": args.prompt_style, "revision": args.revision, **budget}
    config = ServeConfig(
        model=model,
        name=args.served_model_name or name,
        device="cuda" if gpus else "cpu",
        dtype=None if args.dtype == "auto" else args.dtype,
        threads=threads,
        scorer=tuple(scorer.items()),
        max_batch_size=args.max_batch_size,
        batch_wait_s=args.batch_wait_ms / 1000,
        request_timeout_s=args.request_timeout,
        max_body_bytes=int(args.max_body_mb * (1 << 20)),
        api_key=getattr(args, "api_key", None),
    )
    options: dict[str, Any] = {
        "ray_actor_options": {
            "num_cpus": cpus,
            "num_gpus": gpus,
            "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}},
        },
        "max_constructor_retry_count": 3,
    }
    if args.max_replicas_per_node:
        options["max_replicas_per_node"] = args.max_replicas_per_node
    if args.autoscale:
        low, high = _autoscale_range(args.autoscale)
        options["autoscaling_config"] = {
            "min_replicas": low,
            "max_replicas": high,
            "target_ongoing_requests": args.max_batch_size,
        }
    else:
        options["num_replicas"] = args.replicas
    return config, options


def _autoscale_range(text: str) -> tuple[int, int]:
    try:
        low, high = (int(part) for part in text.split(":"))
    except ValueError:
        raise ValueError(f"--autoscale {text!r}: pass MIN:MAX replicas, e.g. --autoscale 1:4.") from None
    if not 0 <= low <= high or high < 1:
        raise ValueError(f"--autoscale {text!r}: need 0 <= MIN <= MAX and MAX >= 1.")
    return low, high


def _check_ray_installed() -> None:
    try:
        import ray.serve  # noqa: F401
    except ImportError as error:
        raise RuntimeError(
            f"--engine ray needs Ray Serve ({error}): pip install 'vq-reward[serve]', or use --engine vllm."
        ) from None


# The signals received. Ray runs Python callbacks from its C++ core during start-up, and an exception raised there
# (by a signal arriving at that moment) is printed and ignored: a stop is also noted here and checked between steps.
_received: list[str] = []


def _raise_stop(number: int, _frame: object) -> None:
    _received.append(signal.Signals(number).name)
    raise _Stop(_received[-1])


def _check_stop() -> None:
    """Raise `_Stop` for a signal whose own exception was swallowed by Ray (see `_received`)."""
    if _received:
        raise _Stop(_received[0])


def _startup_timed_out(_number: int, _frame: object) -> None:
    raise _Stop("timeout")


def _local_url(host: str, port: int) -> str:
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '', '::') else host}:{port}"


def _public_url(host: str, port: int) -> str:
    import socket

    return f"http://{socket.gethostname() if host in ('0.0.0.0', '', '::') else host}:{port}"


def _last_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
