"""`vq-reward serve MODEL`: vLLM's own OpenAI-compatible server, started with everything the readouts need.

    vq-reward serve TianheWu/VisualQuality-R1-7B --host 0.0.0.0 --port 8000          # one GPU
    vq-reward serve tiny --port 8000 --python ~/.cache/vq_reward/vllm-env-XXXX/bin/python  # CPU, offline smoke
    # elsewhere: VisualQualityScorer.from_server("http://HOST:8000"), or vq-reward score DIR --server URL

This is a launcher, not a server of our own: it runs `PYTHON -m vllm.entrypoints.openai.api_server` (PYTHON is
this interpreter unless `--python` names one with vLLM installed) with the checkpoint's pixel budget as
`--mm-processor-kwargs`, one image per prompt, `--max-logprobs` for the digit ids, prefix caching, a seed, the
served model name, and `--shutdown-timeout` so in-flight requests finish on a stop. On a machine without a GPU it
adds CPU settings: float32, eager mode, a small KV cache (`--kv-cache-memory-bytes`). It prints the URL once
`/health` answers, and on SIGINT/SIGTERM stops vLLM and every process vLLM started (they run in a process group
of their own, killed as a whole if they outlive the grace period; vLLM gets SIGTERM if this launcher dies).
`--vllm-args '...'` passes more vLLM arguments as they are.

Scaling:
- a model too big for one GPU: `--tensor-parallel-size N` (GPUs of one node), `--pipeline-parallel-size` across
  nodes;
- throughput: `--data-parallel-size N` (N engines behind one URL, one per GPU or TP group), or one server per
  GPU or node with `from_server([url1, url2, ...])` / `vq-reward score --server URL1 --server URL2` (the client
  spreads the images over the URLs);
- a Ray cluster: `--distributed-executor-backend ray` from the Ray head node (`ray start --head` there, `ray start
  --address=HEAD:6379` on the others; vLLM places the TP x PP workers on the cluster's GPUs). vLLM's own multi-node
  data parallel (`--data-parallel-address`, `--data-parallel-size-local`, `--headless`) goes in `--vllm-args`.
Tested here: CPU only (vllm-cpu), one engine per server (tests/test_vllm.py); `--data-parallel-size 2` started
once on CPU with vLLM's server directly (in about 3 minutes) but is not in the tests; GPUs, Ray and several nodes
never ran here. On CPU, several workers need their cores split (`VLLM_CPU_OMP_THREADS_BIND`, set here unless
it is set).
"""

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from vq_reward.cli.options import positive_int


def add_commands(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve a scorer model with vLLM's OpenAI-compatible server (for from_server / score --server)",
        description="Start vLLM's OpenAI-compatible server for a VisualQuality-R1 checkpoint, with the settings the "
        "readouts need; prints the URL once it answers, stops cleanly on Ctrl-C / SIGTERM.",
    )
    serve.add_argument("model", help="hub id, local checkpoint folder, or a smoke model name ('tiny')")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    serve.add_argument("--port", type=positive_int, default=8000, help="port to listen on (default 8000)")
    serve.add_argument(
        "--served-model-name",
        default=None,
        help="model id clients see (default: the model as given; a folder as its absolute path)",
    )
    serve.add_argument("--tensor-parallel-size", type=positive_int, default=1, help="GPUs per model copy (default 1)")
    serve.add_argument("--pipeline-parallel-size", type=positive_int, default=1, help="pipeline stages (default 1)")
    serve.add_argument(
        "--data-parallel-size", type=positive_int, default=1, help="model copies behind this one URL (default 1)"
    )
    serve.add_argument(
        "--distributed-executor-backend",
        choices=["mp", "ray"],
        default=None,
        help="how vLLM starts its workers: mp (one node) or ray (a Ray cluster); vLLM's default if unset",
    )
    serve.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights' dtype (auto: the checkpoint's on GPU, float32 on CPU)",
    )
    serve.add_argument(
        "--max-model-len",
        type=positive_int,
        default=None,
        help="longest prompt + answer in tokens (default: one image at max pixels + 4096)",
    )
    serve.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=None,
        help="share of GPU memory vLLM may take (vLLM's default 0.9 if unset)",
    )
    serve.add_argument(
        "--kv-cache-memory-bytes",
        type=positive_int,
        default=None,
        help="KV cache size in bytes (default on CPU: two longest sequences, at least 256 MiB)",
    )
    serve.add_argument("--min-pixels", type=positive_int, default=None, help="pixel budget lower bound (checkpoint's)")
    serve.add_argument("--max-pixels", type=positive_int, default=None, help="pixel budget upper bound (checkpoint's)")
    serve.add_argument(
        "--max-logprobs",
        type=positive_int,
        default=20,
        help="most log-probabilities a request may ask for (the readouts ask for 11)",
    )
    serve.add_argument("--no-prefix-caching", action="store_true", help="turn vLLM's prefix caching off")
    serve.add_argument("--seed", type=int, default=0, help="vLLM's random seed (default 0)")
    serve.add_argument("--revision", default=None, help="hub revision of the model")
    serve.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "gpu"],
        help="which defaults to use (auto: gpu when nvidia-smi lists a GPU)",
    )
    serve.add_argument(
        "--python",
        default=sys.executable,
        help="the interpreter that runs vLLM, e.g. another virtual environment's (default: this one)",
    )
    serve.add_argument(
        "--shutdown-timeout",
        type=int,
        default=30,
        help="seconds in-flight requests may take to finish after a stop (default 30)",
    )
    serve.add_argument(
        "--startup-timeout",
        type=positive_int,
        default=1800,
        help="seconds to wait for the server to answer /health (default 1800)",
    )
    serve.add_argument(
        "--vllm-args",
        default="",
        help="more vLLM server arguments, as one shell-quoted string: --vllm-args '--max-num-seqs 64'",
    )
    serve.set_defaults(run=run_serve)


def server_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str], str]:
    """The vLLM command line, its environment and the served model name, for the parsed `serve` arguments."""
    from vq_reward.backends.vllm import cpu_threads_bind, engine_settings, has_gpu, server_flags
    from vq_reward.cli.options import quiet_loading
    from vq_reward.hub import canonical_name, resolve_model
    from vq_reward.loading import load_config, load_processor

    path = resolve_model(args.model, args.revision)
    quiet_loading()
    budget = {key: value for key, value in (("min_pixels", args.min_pixels), ("max_pixels", args.max_pixels)) if value}
    size = load_processor(path, revision=args.revision, **budget).image_processor.size  # the scorer's budget
    gpu = has_gpu() if args.device == "auto" else args.device == "gpu"
    settings = engine_settings(
        path,
        min_pixels=size["shortest_edge"],
        max_pixels=size["longest_edge"],
        gpu=gpu,
        config=load_config(path, revision=args.revision),
        dtype=None if args.dtype == "auto" else args.dtype,
        max_model_len=args.max_model_len,
        kv_cache_memory_bytes=args.kv_cache_memory_bytes,
        gpu_memory_utilization=args.gpu_memory_utilization,
        enable_prefix_caching=not args.no_prefix_caching,
        seed=args.seed,
        max_logprobs=args.max_logprobs,
        tensor_parallel_size=args.tensor_parallel_size,
        pipeline_parallel_size=args.pipeline_parallel_size,
        data_parallel_size=args.data_parallel_size,
        distributed_executor_backend=args.distributed_executor_backend,
        revision=args.revision,
    )
    name = args.served_model_name or canonical_name(args.model)
    extra = shlex.split(args.vllm_args)
    command = [
        args.python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        *server_flags(settings),
        "--served-model-name",
        name,
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--shutdown-timeout",
        str(args.shutdown_timeout),
        *extra,
    ]
    env = dict(os.environ)
    workers = args.tensor_parallel_size * args.pipeline_parallel_size * args.data_parallel_size
    if not gpu and workers > 1:
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_threads_bind(workers))
    return command, env, name


def run_serve(args: argparse.Namespace) -> int:
    code = "import importlib.util as u, sys; sys.exit(u.find_spec('vllm') is None)"
    check = subprocess.run([args.python, "-c", code], capture_output=True)
    if check.returncode != 0:
        raise RuntimeError(
            f"{args.python} cannot import vllm. Install it in its own environment (pip install vllm on a CUDA "
            "machine; .ci/vllm-env.sh builds the pinned CPU/GPU one and prints its path), then pass --python "
            "ENV/bin/python."
        )
    _check_port_free(args.host, args.port)
    command, env, name = server_command(args)
    local = "127.0.0.1" if args.host in ("0.0.0.0", "", "::") else args.host
    public = socket.gethostname() if args.host in ("0.0.0.0", "", "::") else args.host
    url = f"http://{public}:{args.port}"

    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    start = time.monotonic()
    print(f"vq-reward serve: starting vLLM for {name} ({' '.join(command[:3])} ...)", file=sys.stderr, flush=True)
    process = subprocess.Popen(command, env=env, preexec_fn=_own_group_dying_with_parent)
    try:
        ready = False
        while not stop.is_set():
            if process.poll() is not None:
                what = "before answering /health" if not ready else "unexpectedly"
                raise RuntimeError(
                    f"the vLLM server exited {what} (exit code {process.returncode}); see its log above."
                )
            if not ready:
                if _healthy(f"http://{local}:{args.port}/health"):
                    ready = True
                    print(
                        f"vq-reward serve: {url} serves {name} (ready after {time.monotonic() - start:.0f} s; vLLM "
                        f"pid {process.pid}). Connect with VisualQualityScorer.from_server({url!r}) or vq-reward "
                        f"score DIR --server {url}",
                        flush=True,
                    )
                elif time.monotonic() - start > args.startup_timeout:
                    raise RuntimeError(f"the vLLM server did not answer {url}/health within {args.startup_timeout} s.")
            stop.wait(0.5)
        print("vq-reward serve: stopping the vLLM server", file=sys.stderr, flush=True)
        return 0
    finally:
        _stop_group(process, args.shutdown_timeout + 15)


def _own_group_dying_with_parent() -> None:  # runs in the child between fork and exec
    os.setsid()  # a process group of its own: stopped as a whole, apart from whoever started us
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: SIGTERM if we die
    except OSError:  # not Linux: the group is still stopped on SIGINT/SIGTERM
        pass


def _stop_group(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM to vLLM's process group, then SIGKILL to whatever of it is left after `grace` seconds."""
    group = process.pid
    try:
        os.killpg(group, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 5  # the engine core and workers exit shortly after the API server
    while time.monotonic() < deadline and _group_alive(group):
        time.sleep(0.2)
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise RuntimeError(f"cannot listen on {host}:{port} ({error.strerror}); pass another --port.") from None
