"""Serving benchmark, one run on the same images: in-process HF `score()`, the Ray server (`vq-reward serve --engine
ray`) with 1 and 2 replicas, and the vLLM server (`vq-reward serve`), both readouts where they apply.

    OMP_NUM_THREADS=1 python benchmarks/bench_serving.py --model tiny                       # CPU, ~10 minutes
    OMP_NUM_THREADS=1 python benchmarks/bench_serving.py --quick                            # ~1 minute (tests)
    python benchmarks/bench_serving.py --vllm-python ~/.cache/vq_reward/vllm-env-XXXX/bin/python   # + vLLM rows

Cells:

- in-process: `scorer.score(images, batch_size=32, readout=...)` in this process, `--threads` torch threads (1 by
  default: on a shared machine more threads than free cores are slower, not faster);
- ray: a local Ray instance (`vq_reward.serving.launcher`, as the CLI starts it) with 1 and 2 replicas of
  `--threads` threads each, the number readout; clients are threads posting verl-omni's body
  (`pickle.dumps({"images": [PNG bytes]})` of the images already at the model's size, encoded once before timing)
  to `POST /score`, at 1, 8 and 32 images per request and 1 and 4 concurrent clients;
- vllm: `vq-reward serve MODEL --python VLLM_PYTHON` (its own process tree) and `from_server(url).score(images,
  readout=...)` for both readouts (the number readout is 49 one-token requests per image there).

images/s: all `--num-images` images per pass, the median over `--repeats` passes with (slowest-fastest); latency:
p50 / p95 of the requests' wall times over all passes (a whole `score()` call for the in-process and vLLM rows);
peak memory: the resident set summed over the serving processes (this process for in-process; every process of the
Ray instance or of the vLLM server), sampled every 50 ms, shared pages counted in each process. The machine the
numbers come from is printed; on a shared machine they move from run to run.
"""

import argparse
import functools
import io
import os
import pickle
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from common import REPO, Timing, markdown_table, synthetic_images


@dataclass
class Row:
    path: str
    readout: str
    replicas: str = ""
    per_request: str = ""
    clients: str = ""
    timing: Timing | None = None
    latencies: list[float] = field(default_factory=list)
    peak_mib: float = float("nan")
    note: str = ""


# -- memory of a process tree --------------------------------------------------------------------------------------


def tree_rss(root: int) -> int:
    """Resident bytes of `root` and every process below it (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/statm") as statm:
                total += int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            continue
        stack.extend(children.get(pid, []))
    return total


class TreePeak:
    """The peak of `tree_rss(root)` while the block runs, in MiB (sampled every `interval` seconds)."""

    def __init__(self, root: int, interval: float = 0.05) -> None:
        self.root, self.interval, self.peak_mib = root, interval, float("nan")

    def __enter__(self) -> "TreePeak":
        self._peak, self._stop = tree_rss(self.root), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, tree_rss(self.root))

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mib = max(self._peak, tree_rss(self.root)) / 2**20


# -- timing --------------------------------------------------------------------------------------------------------


def timed_passes(
    calls: list, send, clients: int, repeats: int, items: int, root: int
) -> tuple[Timing, list[float], float]:
    """`repeats` passes, each sending every call through `clients` threads; (pass timing, call latencies, peak)."""
    latencies: list[float] = []

    def one(call) -> None:
        start = time.perf_counter()
        send(call)
        latencies.append(time.perf_counter() - start)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, calls[: max(1, clients)]))  # warm-up: connections, first batches
        latencies.clear()
        seconds = []
        with TreePeak(root) as memory:
            for _ in range(repeats):
                start = time.perf_counter()
                list(pool.map(one, calls))
                seconds.append(time.perf_counter() - start)
    return Timing(tuple(seconds), items), latencies, memory.peak_mib


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))] if ordered else float("nan")


# -- the cells -----------------------------------------------------------------------------------------------------


def in_process_rows(model: str, images: list, repeats: int) -> list[Row]:
    from vq_reward import VisualQualityScorer

    scorer = VisualQualityScorer.from_pretrained(model)
    rows = []
    for readout in ("number", "first-digit"):
        timing, latencies, peak = timed_passes(
            [images], functools.partial(scorer.score, batch_size=32, readout=readout), 1, repeats, len(images),
            os.getpid(),
        )  # fmt: skip
        rows.append(Row("in-process", readout, "", f"{len(images)} (batches of 32)", "1", timing, latencies, peak))
        print(f"[in-process] {readout}: {timing.rate_text()} img/s", flush=True)
    return rows


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def post_score(url: str, body: bytes) -> None:
    request = urllib.request.Request(url + "/score", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=600) as response:
        scores = pickle.loads(response.read())["scores"]
    if not scores:
        raise RuntimeError(f"{url}/score answered no scores")


def ray_rows(model: str, files: list[bytes], replicas: int, threads: int, grid: list[tuple[int, int]],
             repeats: int, batch_wait_s: float) -> list[Row]:  # fmt: skip
    from vq_reward.hub import resolve_model
    from vq_reward.serving import launcher
    from vq_reward.serving.ray_app import ServeConfig

    port = free_port()
    config = ServeConfig(model=resolve_model(model), name=model, threads=threads, batch_wait_s=batch_wait_s)
    environment = {"env_vars": {"OMP_NUM_THREADS": str(threads)}}
    options = {"num_replicas": replicas, "ray_actor_options": {"num_cpus": threads, "runtime_env": environment}}
    run = launcher.start_ray(None, num_cpus=max(len(os.sched_getaffinity(0)), threads * replicas))
    rows = []
    try:
        start = time.perf_counter()
        launcher.deploy(config, options, "127.0.0.1", port)
        url = f"http://127.0.0.1:{port}"
        launcher.wait_healthy(url, 300)
        print(f"[ray x{replicas}] ready in {time.perf_counter() - start:.0f} s", flush=True)
        for per_request, clients in grid:
            bodies = [pickle.dumps({"images": files[i : i + per_request]}) for i in range(0, len(files), per_request)]
            timing, latencies, peak = timed_passes(
                bodies, lambda body: post_score(url, body), clients, repeats, len(files), os.getpid()
            )
            rows.append(Row("ray", "number", str(replicas), str(per_request), str(clients), timing, latencies, peak))
            print(f"[ray x{replicas}] {per_request}/request, {clients} clients: {timing.rate_text()} img/s")
    finally:
        launcher.stop(run, config.app_name)
    return rows


def vllm_rows(model: str, images: list, python: str, repeats: int) -> list[Row]:
    from vq_reward import VisualQualityScorer

    port = free_port()
    command = [sys.executable, "-m", "vq_reward.cli", "serve", model, "--python", python, "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    rows = []
    try:
        ready = threading.Event()

        def drain() -> None:  # read every line, also after the ready one: a full pipe would stall vLLM's logging
            for line in server.stdout:
                if f":{port} serves" in line:
                    ready.set()

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + 900
        while not ready.wait(1.0):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vq-reward serve --python {python} did not start (exit code {server.poll()})")
        # 8 images per call: the number readout queues 49 requests per image, and each must end within the timeout
        client = VisualQualityScorer.from_server(f"http://127.0.0.1:{port}", timeout=600)
        for readout in ("number", "first-digit"):
            timing, latencies, peak = timed_passes(
                [images], functools.partial(client.score, batch_size=8, readout=readout), 1, repeats,
                len(images), server.pid,
            )  # fmt: skip
            rows.append(Row("vllm server", readout, "1", f"{len(images)} (batches of 8)", "1", timing, latencies,
                            peak))  # fmt: skip
            print(f"[vllm] {readout}: {timing.rate_text(2)} img/s", flush=True)
    finally:
        server.terminate()
        server.wait(120)
    return rows


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- output --------------------------------------------------------------------------------------------------------


def format_table(rows: list[Row]) -> str:
    header = ["path", "readout", "replicas", "images/request", "clients", "images/s", "p50 ms", "p95 ms",
              "peak RSS MiB", "vs in-process"]  # fmt: skip
    reference = {row.readout: row.timing.rate for row in rows if row.path == "in-process"}
    lines = []
    for row in rows:
        ratio = f"{row.timing.rate / reference[row.readout]:.2f}x" if row.readout in reference else ""
        lines.append([row.path, row.readout, row.replicas, row.per_request, row.clients, row.timing.rate_text(),
                      f"{percentile(row.latencies, 0.5) * 1e3:.0f}", f"{percentile(row.latencies, 0.95) * 1e3:.0f}",
                      f"{row.peak_mib:,.0f}", ratio])  # fmt: skip
    return markdown_table(header, lines, align="llrrrrrrrr")


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of this process and of each replica")
    parser.add_argument("--paths", nargs="+", default=["in-process", "ray", "vllm"], help="which rows to run")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--per-request", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--batch-wait-ms", type=float, default=50.0)
    parser.add_argument("--vllm-python", default=os.environ.get("VQ_REWARD_VLLM_PYTHON"),
                        help="a vLLM environment's python for the vLLM server rows (skipped without one)")  # fmt: skip
    parser.add_argument("--vllm-images", type=int, default=16, help="images of the vLLM rows (the number readout "
                        "is slow there)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="8 small images, 1 replica, 1 and 8 per request, 1 pass")
    args = parser.parse_args(argv)
    size = (512, 384)
    if args.quick:
        args.num_images, args.repeats, args.replicas, args.per_request, size = 8, 1, [1], [1, 8], (128, 96)
    torch.set_num_threads(args.threads)
    started = time.time()
    print(f"machine: {os.uname().machine}, {len(os.sched_getaffinity(0))} cores (shared machines: expect noise), "
          f"load average {os.getloadavg()[0]:.1f}; model {args.model}; {args.num_images} synthetic {size[0]}x"
          f"{size[1]} images; {args.threads} torch threads per process", flush=True)  # fmt: skip
    from vq_reward import VisualQualityScorer

    images = VisualQualityScorer.from_pretrained(args.model).prepare(synthetic_images(args.num_images, *size))
    files = [png_bytes(image) for image in images]
    print(f"images at the model's size {images[0].size}, PNG {statistics.mean(map(len, files)) / 1024:.0f} KiB each")
    grid = [(per_request, clients) for per_request in args.per_request for clients in args.clients]
    sections = [("in-process", functools.partial(in_process_rows, args.model, images, args.repeats))]
    sections += [(f"ray x{replicas}", functools.partial(ray_rows, args.model, files, replicas, args.threads, grid,
                                                        args.repeats, args.batch_wait_ms / 1000))
                 for replicas in args.replicas]  # fmt: skip
    sections = [(name, section) for name, section in sections if name.split()[0] in args.paths]
    problems = [] if args.vllm_python else ["no --vllm-python (or VQ_REWARD_VLLM_PYTHON): vLLM server rows skipped"]
    if args.vllm_python and "vllm" in args.paths:
        sections.append(("vllm", functools.partial(vllm_rows, args.model, images[: args.vllm_images],
                                                   args.vllm_python, args.repeats)))  # fmt: skip
    rows: list[Row] = []
    for name, section in sections:  # a failing section is reported, the others still run
        try:
            rows += section()
        except Exception as error:  # noqa: BLE001 - the benchmark reports every failure and goes on
            problems.append(f"{name} failed: {type(error).__name__}: {' '.join(str(error).split())[:300]}")
            print(f"[{name}] {problems[-1]}", flush=True)
    print()
    print(format_table(rows))
    for problem in problems:
        print(f"\n- {problem}")
    print(f"\nwall time {time.time() - started:.0f} s; repo {REPO.name}")
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
