"""The vLLM backends (offline engine and server) against the HF backend, on every smoke model; no mocks.

Tests marked `vllm` need a vLLM environment and are left out of the default run:

    ENV="$(.ci/vllm-env.sh | tail -n1)"
    VQ_REWARD_VLLM_PYTHON="$ENV/bin/python" python -m pytest -m "vllm and not slow"   # what CI runs (minutes)
    VQ_REWARD_VLLM_PYTHON="$ENV/bin/python" python -m pytest -m vllm                  # + tensor parallel 2 on CPU

They run vLLM in subprocesses of that environment's python with this checkout on PYTHONPATH: the offline engine
through `tests/vllm_worker.py` (which also checks that the project scores with the HF backend under that
environment's transformers), and the server through `vq-reward serve` (one per model and module, reused by every
test; the kill test starts a second one). The client side (`from_server`, the reward adapters, `vq-reward score
--server`) runs in this process. The unmarked tests at the end need no vLLM.
"""

import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import free_port, noise_image

from vq_reward import VisualQualityScorer, hub, readout
from vq_reward.backends.server import ServerBackend, ServerError, png_data_url
from vq_reward.backends.vllm import engine_settings, sampling_settings, server_flags


REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = os.environ.get("VQ_REWARD_VLLM_PYTHON")
needs_env = pytest.mark.skipif(
    not VLLM_PYTHON,
    reason="VQ_REWARD_VLLM_PYTHON is not set: point it at the python of a vLLM environment "
    '(ENV="$(.ci/vllm-env.sh | tail -n1)"; VQ_REWARD_VLLM_PYTHON="$ENV/bin/python" python -m pytest -m vllm)',
)


def vllm_test(function):
    """Marked `vllm` (left out of the default run) and skipped, with the reason, without a vLLM environment."""
    return pytest.mark.vllm(needs_env(function))


MODELS = ["skeleton", "taught", "tiny"]  # "base" is the taught architecture again: no new path to compare
SIZES = [(64, 64), (200, 150), (56, 112), (300, 200), (90, 60), (112, 112)]
TOLERANCE = 1e-4  # float32 HF vs vLLM: measured differences are ~1e-7
FIELDS = ("scores", "std", "probs", "digit_mass", "dot_mass")


def vllm_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(":")}


def details_dict(details) -> dict:
    return {name: None if getattr(details, name) is None else getattr(details, name).tolist() for name in FIELDS}


def read_all(scorer, images: list[str]) -> dict:
    """Both readouts' figures and greedy completions, as the worker prints them."""
    out = {name: details_dict(scorer.score_details(images, readout=name)) for name in ("first-digit", "number")}
    out["greedy"] = [rating.text for rating in scorer.generate(images, do_sample=False, max_new_tokens=12)]
    return out


def max_delta(a: dict, b: dict, readout_name: str) -> dict[str, float]:
    deltas = {}
    for name in FIELDS:
        if a[readout_name][name] is None:
            assert b[readout_name][name] is None
            continue
        deltas[name] = (torch.tensor(a[readout_name][name]) - torch.tensor(b[readout_name][name])).abs().max().item()
    return deltas


class Server:
    """`vq-reward serve` run with the vLLM environment's python, in a process group of its own."""

    def __init__(self, model_path: str, name: str, log: Path, *flags: str, port: int | None = None,
                 env: dict[str, str] | None = None) -> None:  # fmt: skip
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [VLLM_PYTHON, "-m", "vq_reward.cli", "serve", model_path, "--served-model-name", name,
                   "--port", str(self.port), *flags]  # fmt: skip
        with open(log, "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                            env={**vllm_env(), **(env or {})}, start_new_session=True)  # fmt: skip
        self.vllm_pid: int | None = None

    def wait_ready(self, timeout: float = 900) -> "Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            for line in text.splitlines():
                if line.startswith("vq-reward serve: http://") and "vLLM pid" in line:
                    self.vllm_pid = int(line.split("vLLM pid ")[1].split(")")[0])
                    return self
            if self.process.poll() is not None:
                raise RuntimeError(f"vq-reward serve exited ({self.process.returncode}):\n{text[-3000:]}")
            time.sleep(0.5)
        raise RuntimeError(f"vq-reward serve did not get ready in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL to every process of the server: the launcher's group and vLLM's."""
        for group in (self.process.pid, self.vllm_pid):
            if group:
                try:
                    os.killpg(group, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.process.wait(30)

    def stop(self) -> None:
        """What an operator does: SIGTERM to the launcher, which stops vLLM; then nothing may be left."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                pass
        self.kill()  # whatever is left (nothing, when the launcher did its job)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("vllm_images")
    paths = []
    for index, (width, height) in enumerate(SIZES):
        path = folder / f"img{index}.png"
        noise_image(width, height, seed=100 + index).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module", params=MODELS)
def model(request) -> tuple[str, str]:
    """(smoke name, its folder), built here so both environments read the very same files."""
    return request.param, hub.resolve_model(request.param)


@pytest.fixture(scope="module")
def hf_results(model, images) -> dict:
    return read_all(VisualQualityScorer.from_pretrained(model[1]), images)


@pytest.fixture(scope="module")
def offline_results(model, images) -> dict:
    """The worker's output: the HF backend and the offline vLLM engine, both in the vLLM environment."""
    command = [VLLM_PYTHON, str(REPO / "tests" / "vllm_worker.py"), "--model", model[1], *images]
    done = subprocess.run(command, capture_output=True, text=True, env=vllm_env(), timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    served = Server(model[1], model[0], tmp_path_factory.mktemp("server") / "serve.log")
    try:
        yield served.wait_ready()
    finally:
        served.stop()


@pytest.fixture(scope="module")
def server_results(server, images) -> dict:
    return read_all(VisualQualityScorer.from_server(server.url), images)


# -- parity ----------------------------------------------------------------------------------------------------


@vllm_test
@pytest.mark.parametrize("readout_name", ["first-digit", "number"])
def test_offline_vllm_and_the_server_read_what_hf_reads(readout_name, hf_results, offline_results, server_results):
    for name, got in (("offline vLLM", offline_results["vllm"]), ("server", server_results)):
        deltas = max_delta(hf_results, got, readout_name)
        assert max(deltas.values()) <= TOLERANCE, (name, readout_name, deltas)


@vllm_test
def test_greedy_generation_is_the_same_text(hf_results, offline_results, server_results):
    assert offline_results["vllm"]["greedy"] == hf_results["greedy"]
    assert server_results["greedy"] == hf_results["greedy"]


@vllm_test
def test_the_hf_backend_scores_in_the_vllm_environment(hf_results, offline_results):
    # The same code under the vLLM environment's transformers (5.19 when this was written) reads the same numbers.
    assert offline_results["transformers"].startswith("5.")
    for readout_name in ("first-digit", "number"):
        deltas = max_delta(hf_results, offline_results["hf"], readout_name)
        assert max(deltas.values()) <= 1e-5, (readout_name, deltas)
    assert offline_results["hf"]["greedy"] == hf_results["greedy"]


# -- the server ------------------------------------------------------------------------------------------------


@vllm_test
def test_eight_concurrent_clients_get_bit_identical_results(server):
    scorer = VisualQualityScorer.from_server(server.url)
    pictures = [noise_image(w, h, seed=200 + i) for i, (w, h) in enumerate(SIZES * 2)]
    alone = [scorer.score_details(picture) for picture in pictures]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(scorer.score_details, pictures))
    for a, b in zip(alone, together, strict=True):
        for name in FIELDS:
            assert torch.equal(getattr(a, name), getattr(b, name)), name


@vllm_test
def test_a_pickled_reward_carries_the_url_and_scores_the_same(server):
    scorer = VisualQualityScorer.from_server(server.url, batch_size=4)
    batch = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))

    def diffusion_call(fn):
        return fn(batch)[0].tolist()

    def trl_call(fn):
        return fn(prompts=["p"] * 3, completions=["c"] * 3, image=list(batch))

    for reward, call in ((scorer.as_reward(), diffusion_call), (scorer.as_trl_reward(image_key="image"), trl_call)):
        data = pickle.dumps(reward)
        assert server.url.encode() in data and len(data) < 20_000  # the URL and settings, never a model
        copy = pickle.loads(data)
        assert copy.source.loaded is None  # connects on first use
        assert call(copy) == call(reward)
        assert copy.source.get().backend.name == "server" and copy.source.get().batch_size == 4
    with pytest.raises(TypeError, match="gradients cannot flow back through the server backend"):
        scorer.as_differentiable_reward()


@vllm_test
def test_the_readme_server_snippet_runs_as_written(server):
    from test_readme import blocks

    (snippet,) = [block for block in blocks("python") if "from_server(" in block]
    names: dict = {}
    exec(compile(snippet.replace("http://reward-node:8000", server.url), "README.md server snippet", "exec"), names)
    batch = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1  # a VAE's [-1, 1] output
    scores, _ = names["reward_fn"](batch)
    assert scores.shape == (2,) and ((scores >= 1) & (scores <= 5)).all()
    trl_scores = names["trl_reward"](prompts=["p"] * 2, completions=["c"] * 2, image=list((batch + 1) / 2))
    assert trl_scores == pytest.approx(scores.tolist(), abs=1e-4)


@vllm_test
def test_the_server_must_serve_the_model_asked_for(server, model):
    with pytest.raises(ServerError, match=rf"serves \['{model[0]}'\], not 'another-model'"):
        VisualQualityScorer.from_server(server.url, model="another-model")
    scorer = VisualQualityScorer.from_server([server.url, server.url.replace("127.0.0.1", "localhost")])
    assert scorer.backend.model_id == model[0] and len(scorer.backend.urls) == 2  # one model behind both URLs
    assert scorer.recipe().load["urls"] == scorer.backend.urls
    source = scorer.backend.source()
    assert source.kwargs["model"] == f"{model[0]}@{scorer.backend.served.weights}"  # the weights, not the name
    assert ServerBackend(**source.kwargs).source() == source  # a copy connects to the very same weights


@vllm_test
def test_examples_train_against_the_server(server, tmp_path):
    from test_examples import load_example

    history = load_example("remote_reward").main(["--server", server.url, "--steps", "2"])
    assert len(history["reward"]) == 2 and all(1 <= value <= 5 for value in history["reward"])
    pytest.importorskip("trl")
    result = load_example("trl_grpo_remote").main(
        ["--server", server.url, "--steps", "2", "--output-dir", str(tmp_path / "grpo")]
    )
    assert len(result["rewards"]) == 2 and all(1 <= value <= 5 for value in result["rewards"])


@vllm_test
def test_score_with_a_killed_server_fails_cleanly_and_the_rerun_resumes(server, model, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(32):
        noise_image(96, 64 + 4 * (index % 8), seed=300 + index).save(folder / f"{index:02d}.png")
    output = tmp_path / "results.jsonl"
    doomed = Server(model[1], model[0], tmp_path / "doomed.log").wait_ready()
    command = [sys.executable, "-m", "vq_reward.cli", "score", str(folder), "--server", doomed.url, "--output",
               str(output), "--batch-size", "2", "--server-retries", "2"]  # fmt: skip
    try:
        run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and run.poll() is None:
            if output.exists() and output.read_text().count("\n") >= 1:  # a first chunk is on disk
                break
            time.sleep(0.1)
        doomed.kill()
        _, err = run.communicate(timeout=300)
    finally:
        doomed.kill()
    assert run.returncode == 1, err
    assert doomed.url in err.strip().splitlines()[-1] and "Traceback" not in err, err
    lines = [json.loads(line) for line in output.read_text().splitlines()]  # every line whole, one image each
    paths = [line["path"] for line in lines]
    assert 0 < len(paths) < 32 and len(set(paths)) == len(paths)

    rerun = subprocess.run([*command[:6], server.url, *command[7:]], capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{32 - len(paths)} scored, 0 errors, {len(paths)} skipped" in rerun.stderr
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    paths = [line["path"] for line in lines]
    assert len(paths) == 32 and len(set(paths)) == 32 and all("score" in line for line in lines)


def changed_copy(path: str, folder: Path) -> str:
    """A copy of the checkpoint at `path` with one weight matrix changed: other weights under the same name."""
    from safetensors.torch import load_file, save_file

    copy = folder / "changed"
    shutil.copytree(path, copy)
    (weights,) = copy.glob("*.safetensors")
    tensors = load_file(weights)
    name = next(key for key in sorted(tensors) if key.endswith("mlp.down_proj.weight"))
    tensors[name] = tensors[name] + 0.05 * torch.randn(tensors[name].shape, generator=torch.Generator().manual_seed(0))
    save_file(tensors, weights, metadata={"format": "pt"})
    return str(copy)


@vllm_test
@pytest.mark.slow
def test_a_server_restarted_with_other_weights_is_refused_live_and_on_resume(images, tmp_path):
    # Issue 17.1: restarted under the same --served-model-name and URL with other weights, the server must not
    # score for (a) a live client nor (b) a results file started with the old weights.
    tiny = hub.resolve_model("tiny")
    folder = tmp_path / "images"
    folder.mkdir()
    for index, path in enumerate(images[:3]):
        shutil.copy(path, folder / f"{index}.png")
    output = tmp_path / "results.jsonl"
    port = free_port()
    first = Server(tiny, "tiny", tmp_path / "first.log", port=port).wait_ready()
    try:
        scorer = VisualQualityScorer.from_server(first.url)
        before = scorer.score(images[:2])
        command = [sys.executable, "-m", "vq_reward.cli", "score", str(folder), "--server", first.url, "--output",
                   str(output)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
    finally:
        first.stop()
    written = output.read_bytes()
    second = Server(changed_copy(tiny, tmp_path), "tiny", tmp_path / "second.log", port=port).wait_ready()
    try:
        with pytest.raises(ServerError) as caught:  # (a)
            scorer.score(images[:2])
        assert str(caught.value).startswith(f"{first.url} now serves other weights than when this scorer connected")
        shutil.copy(images[3], folder / "3.png")  # something left to score
        rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)  # (b)
        assert rerun.returncode != 0 and "Traceback" not in rerun.stderr, rerun.stderr
        assert output.read_bytes() == written, rerun.stderr  # nothing of the other weights added
        again = VisualQualityScorer.from_server(second.url)  # connecting anew takes the new weights, knowingly
        assert again.backend.fingerprint() != scorer.backend.fingerprint()
        assert (again.score(images[:2]) - before).abs().max() > 1e-4  # they do score differently
    finally:
        second.stop()


@vllm_test
@pytest.mark.slow
def test_an_api_key_is_asked_for_and_sent(images, tmp_path, monkeypatch):
    monkeypatch.delenv("VQ_REWARD_API_KEY", raising=False)
    server = Server(hub.resolve_model("tiny"), "tiny", tmp_path / "serve.log", "--api-key", "k3y").wait_ready()
    try:
        with pytest.raises(ServerError, match="answered HTTP 401: it needs an API key"):
            VisualQualityScorer.from_server(server.url)
        scores = VisualQualityScorer.from_server(server.url, api_key="k3y").score(images[:2])
        assert ((scores >= 1) & (scores <= 5)).all()
        monkeypatch.setenv("VQ_REWARD_API_KEY", "k3y")
        assert torch.equal(VisualQualityScorer.from_server(server.url).score(images[:2]), scores)
    finally:
        server.stop()


@vllm_test
@pytest.mark.slow
@pytest.mark.parametrize("name", ["SIGKILL", "SIGHUP"])
def test_nothing_outlives_a_launcher_killed_while_vllm_starts(name, tmp_path):
    # Issue 17.3: killed or hung up once vLLM's engine process exists but before the server is ready.
    from test_serve_launcher import marked

    mark = str(tmp_path)
    server = Server(hub.resolve_model("tiny"), "tiny", tmp_path / "serve.log", "--shutdown-timeout", "1",
                    env={"VQ_REWARD_TEST_MARK": mark})  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while len(marked(mark)) < 4 and time.monotonic() < deadline:  # launcher, watchdog, API server, engine
            time.sleep(0.2)
        assert len(marked(mark)) >= 4 and "vLLM pid" not in server.log.read_text(), server.log.read_text()[-3000:]
        os.kill(server.process.pid, getattr(signal, name))
        server.process.wait(60)
        deadline = time.monotonic() + 1 + 5 + 15  # --shutdown-timeout, the watchdog's 5 s, slack
        while marked(mark) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marked(mark) == [], server.log.read_text()[-3000:]
        with socket.socket() as probe:  # nothing serves the port
            assert probe.connect_ex(("127.0.0.1", server.port)) != 0
    finally:
        for pid in marked(mark):
            os.kill(pid, signal.SIGKILL)


@vllm_test
@pytest.mark.slow
@pytest.mark.parametrize("name", ["taught", "tiny"])  # the skeleton has one attention head: nothing to split
def test_tensor_parallel_two_on_cpu(name, images):
    # vLLM's CPU build runs TP=2 with its threads bound per rank (VLLM_CPU_OMP_THREADS_BIND, set by the backend).
    path = hub.resolve_model(name)
    hf_results = read_all(VisualQualityScorer.from_pretrained(path), images)
    command = [VLLM_PYTHON, str(REPO / "tests" / "vllm_worker.py"), "--model", path, "--no-hf",
               "--tensor-parallel-size", "2", *images]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=vllm_env(), timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    for readout_name in ("first-digit", "number"):
        deltas = max_delta(hf_results, result["vllm"], readout_name)
        assert max(deltas.values()) <= TOLERANCE, (readout_name, deltas)


SKELETON_PROMPT_IDS = """
import json, sys
from vq_reward import VisualQualityScorer
from vq_reward.backends.common import prompt_ids
scorer = VisualQualityScorer.from_pretrained(sys.argv[1], backend="vllm")
image = scorer.prepare(sys.argv[2])[0]
sent = prompt_ids(scorer.processor, scorer.request())
params = scorer.backend._sampling(max_tokens=1, temperature=0.0)
(out,) = scorer.backend.llm.generate([{"prompt_token_ids": sent, "multi_modal_data": {"image": image}}], params)
print("RESULT " + json.dumps({"sent": sent, "read": list(out.prompt_token_ids)}))
"""


@vllm_test
def test_vllm_reads_the_skeleton_s_real_token_ids_as_hf_does(tmp_path):
    # The real tokenizer: "<answer>" is 3 tokens, the image one <|image_pad|> that vLLM expands to the grid itself.
    path = hub.resolve_model("skeleton")
    noise_image(200, 150, seed=5).save(tmp_path / "image.png")
    command = [VLLM_PYTHON, "-c", SKELETON_PROMPT_IDS, path, str(tmp_path / "image.png")]
    done = subprocess.run(command, capture_output=True, text=True, env=vllm_env(), timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    result = json.loads(lines[-1].removeprefix("RESULT "))
    scorer = VisualQualityScorer.from_pretrained(path)
    request = scorer.request()
    hf = readout.model_inputs(
        scorer.processor, [request.text + request.answer_prefix], scorer.prepare(tmp_path / "image.png")
    )
    assert result["sent"].count(151655) == 1 and result["sent"][-3:] == [27, 9217, 29]  # <|image_pad|>, "<answer>"
    assert result["read"] == hf["input_ids"][0].tolist() and result["read"].count(151655) == 7 * 5  # 196x140 px


# -- without vLLM (the default run) --------------------------------------------------------------------------------


def test_the_branch_readout_is_the_tree_readout(scorer):
    # What the vLLM backends compute from one request per branch equals the HF tree read in one forward.
    pictures = scorer.prepare([noise_image(64, 64, seed=1), noise_image(90, 60, seed=2)])
    inputs = readout.model_inputs(scorer.processor, [scorer.readout_prompt()] * 2, pictures)
    ids = readout.branch_token_ids(scorer.tokens)
    rows = []
    with torch.no_grad():
        for branch in readout.branch_continuations(scorer.tokens, "number"):
            extra = torch.tensor(branch, dtype=torch.long).expand(2, -1)
            logits = scorer.model(
                input_ids=torch.cat([inputs["input_ids"], extra], 1),
                attention_mask=torch.cat([inputs["attention_mask"], torch.ones_like(extra)], 1),
                mm_token_type_ids=torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(extra)], 1),
                pixel_values=inputs["pixel_values"],
                image_grid_thw=inputs["image_grid_thw"],
            ).logits[:, -1]
            rows.append(logits.double().log_softmax(-1)[:, ids])
    logprobs = torch.stack(rows, dim=1)
    for name in ("number", "first-digit"):
        part = logprobs if name == "number" else logprobs[:, :1]
        ours = readout.details_from_branches(part, scorer.tokens, name)
        tree = scorer.score_details(pictures, readout=name)
        for field in FIELDS:
            if getattr(tree, field) is not None:
                assert (getattr(ours, field).float() - getattr(tree, field)).abs().max() < 1e-5, (name, field)


def test_a_server_that_is_not_there_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(ServerError, match=rf"{url} does not answer .*vq-reward serve"):
        VisualQualityScorer.from_server(url + "/v1/")
    assert time.monotonic() - start < 10


def test_engine_settings_carry_what_the_readouts_need():
    cpu = engine_settings("/m", min_pixels=3136, max_pixels=50176, gpu=False)
    assert cpu["dtype"] == "float32" and cpu["enforce_eager"] is True and cpu["kv_cache_memory_bytes"] >= 256 * 2**20
    assert cpu["max_model_len"] == 50176 // 784 + 4096 and cpu["max_logprobs"] >= len(readout.DECIMALS) + 1
    assert cpu["limit_mm_per_prompt"] == {"image": 1, "video": 0} and cpu["enable_prefix_caching"] is True
    gpu = engine_settings("/m", min_pixels=3136, max_pixels=12845056, gpu=True, gpu_memory_utilization=0.5)
    assert gpu["dtype"] == "auto" and "enforce_eager" not in gpu and "kv_cache_memory_bytes" not in gpu
    flags = server_flags(gpu)
    assert (
        flags[flags.index("--mm-processor-kwargs") + 1]
        == '{"size": {"shortest_edge": 3136, "longest_edge": 12845056}}'
    )
    assert "--enable-prefix-caching" in flags and flags[flags.index("--gpu-memory-utilization") + 1] == "0.5"


def test_generate_keywords_map_to_vllm_sampling():
    assert sampling_settings({"do_sample": False, "top_k": 50, "max_new_tokens": 8}) == {
        "temperature": 0.0,
        "max_tokens": 8,
    }
    sampled = sampling_settings({"do_sample": True, "top_k": 50, "top_p": 1.0, "temperature": 0.7, "seed": 3})
    assert sampled == {"temperature": 0.7, "top_k": 50, "top_p": 1.0, "seed": 3}
    with pytest.raises(ValueError, match="num_beams"):
        sampling_settings({"num_beams": 4})


def test_images_travel_as_lossless_png():
    import base64
    import io

    from PIL import Image

    picture = noise_image(60, 44, seed=5)
    data = png_data_url(picture)
    back = Image.open(io.BytesIO(base64.b64decode(data.split(",", 1)[1])))
    assert back.format == "PNG" and back.tobytes() == picture.tobytes()


def test_engine_arguments_need_the_vllm_backend(tiny_path):
    with pytest.raises(TypeError, match="tensor_parallel_size.*backend='vllm'"):
        VisualQualityScorer.from_pretrained(tiny_path, tensor_parallel_size=2)
    with pytest.raises(ValueError, match="backend must be"):
        VisualQualityScorer.from_pretrained(tiny_path, backend="server")


def test_the_vllm_backend_without_vllm_says_how_to_install_it(tiny_path):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed in this environment")
    with pytest.raises(ImportError, match="pip install vllm"):
        VisualQualityScorer.from_pretrained(tiny_path, backend="vllm")


def test_serve_help_starts_without_torch():
    code = (
        "import sys, contextlib, io\n"
        "from vq_reward.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n"
        "        main(['serve', '--help'])\n"
        "    except SystemExit as exit:\n"
        "        assert exit.code == 0, exit.code\n"
        "assert '--tensor-parallel-size' in out.getvalue() and '--python' in out.getvalue()\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)


def test_a_second_caller_thread_is_not_serialised_by_the_scorer(tiny_path):
    # Server backends take concurrent calls: the scorer's lock is only for backends that need it.
    scorer = VisualQualityScorer.from_pretrained(tiny_path)
    assert scorer._backend_lock() is scorer.lock
    scorer.backend.concurrent = True
    acquired = threading.Event()

    def other():
        with scorer._backend_lock():
            acquired.set()

    with scorer.lock:
        thread = threading.Thread(target=other)
        thread.start()
        assert acquired.wait(5)
        thread.join()
