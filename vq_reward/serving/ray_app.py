"""The Ray Serve application: scorer replicas with dynamic batching, behind an HTTP front that speaks the protocols.

Two deployments:

- `ScorerReplica` holds one in-process HF scorer (`VisualQualityScorer.from_pretrained`). `score(images, readout)`
  sends each image on its own through `@serve.batch`, so single-image requests from many clients meet in one
  forward (at most `max_batch_size` images, waiting at most `batch_wait_s` for more); the forward runs in a thread,
  off the replica's event loop. Frameworks already on Ray call it without HTTP (each call's images are checked
  before they join a batch):
  `serve.get_deployment_handle("ScorerReplica", app_name="vq-reward").score.remote([rgb_uint8_hwc, ...])`, whose
  `.result()` (or `await`) is `{"fingerprint", "readout", "rows": [{"scores", "std", "probs", ...}, ...]}`.
- `HttpFront` reads and checks each request on its own (body size, the restricted unpickler, every image decoded)
  before any of it reaches a batch, so one bad request fails alone with a 4xx; it answers in the route's protocol
  (`vq_reward.serving.protocols`), turns a replica that died mid-batch into a 503 that says so (Serve replaces
  the replica; clients retry 503) and a request over the deadline into a 504.

Routes: `GET /health` (200 once every replica of the application runs), `GET /v1/models` (the served identity:
name, engine "ray", weights fingerprint, pixel budget, prompt settings), `POST /v1/score` (the project's JSON
protocol), `POST /score` (verl-omni), `POST /` (Flow-GRPO).
"""

import asyncio
import json
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response

from vq_reward.serving import protocols
from vq_reward.serving.protocols import ProtocolError


@dataclass(frozen=True)
class ServeConfig:
    """What every replica loads and how the application answers (pickled to the replicas).

    Attributes:
        model: a local folder's absolute path, a hub id or a smoke name, loadable on every node.
        name: the model id clients see.
        app_name: the Serve application's name.
        device: "cuda" when replicas hold GPUs, else "cpu".
        dtype: "float32", "bfloat16", "float16" or None (the checkpoint's own on CUDA, float32 on CPU).
        threads: torch threads per replica.
        scorer: `from_pretrained` keywords (readout, prompt_style, min_pixels, max_pixels, revision, ...).
        max_batch_size / batch_wait_s: `@serve.batch`'s limits, in images.
        request_timeout_s: a request still unscored after this long gets a 504.
        max_body_bytes: larger request bodies get a 413.
        api_key: when set, every route but /health needs the header `Authorization: Bearer KEY` (else 401).
        build: a function that returns the scorer instead of `from_pretrained(model, ...)` (benchmarks: random
            weights from a config); it runs in each replica, so it must pickle (a module-level function).
    """

    model: str
    name: str
    app_name: str = "vq-reward"
    device: str = "cpu"
    dtype: str | None = None
    threads: int = 1
    scorer: tuple[tuple[str, Any], ...] = ()
    max_batch_size: int = 32
    batch_wait_s: float = 0.05
    request_timeout_s: float = 120.0
    max_body_bytes: int = 256 << 20
    api_key: str | None = None
    build: Callable[[], Any] | None = None


FIGURES = ("scores", "std", "probs", "digit_mass", "dot_mass")
Readout = Literal["number", "first-digit"]
READOUTS = get_args(Readout)


class Scorer:
    """One HF scorer; its images are batched across requests (the deployment `ScorerReplica` below)."""

    def __init__(self, config: ServeConfig) -> None:
        import torch

        from vq_reward.scorer import VisualQualityScorer

        torch.set_num_threads(config.threads)
        dtype = getattr(torch, config.dtype) if config.dtype else None
        self.scorer = config.build() if config.build else VisualQualityScorer.from_pretrained(
            config.model, device=config.device, dtype=dtype, **dict(config.scorer)
        )  # fmt: skip
        self.fingerprint = self.scorer.backend.fingerprint()
        self.config = config
        # serve.batch's wrapper has these setters; Ray's type hints do not say so
        self._one.set_max_batch_size(config.max_batch_size)  # type: ignore[attr-defined]
        self._one.set_batch_wait_timeout_s(config.batch_wait_s)  # type: ignore[attr-defined]

    def identity(self) -> dict[str, Any]:
        """The served identity: name, engine, weights fingerprint, pixel budget and prompt settings."""
        return {
            "id": self.config.name, "object": "model", "owned_by": "vq-reward", "root": self.config.model,
            "engine": "ray", "fingerprint": self.fingerprint, "min_pixels": self.scorer.min_pixels,
            "max_pixels": self.scorer.max_pixels, "settings": self.scorer.settings(),
            "prompt": self.scorer.readout_prompt(),
        }  # fmt: skip

    def place(self) -> tuple[int, str]:
        """This replica's process id and Ray node id (where it runs; the reliability tests kill it)."""
        import ray

        return os.getpid(), ray.get_runtime_context().get_node_id()

    async def score(self, images: list[Any], readout: Readout | None = None) -> dict[str, Any]:
        """Score images (RGB uint8 HWC arrays, PIL images, anything `score()` takes but paths): {"fingerprint",
        "readout", "rows": one dict of figures per image}. Each call's images are checked before they join a batch,
        so a bad one fails its own call only (`ImageInputError`)."""
        name = readout or self.scorer.readout
        if name not in READOUTS:
            raise ValueError(f"readout must be 'number' or 'first-digit', got {name!r}.")
        checked = await asyncio.to_thread(self._checked, images)
        rows = await asyncio.gather(*(self._one((image, name)) for image in checked))
        return {"fingerprint": self.fingerprint, "readout": name, "rows": list(rows)}

    def _checked(self, images: list[Any]) -> list[Any]:
        from vq_reward.images import image_sources

        settings = self.scorer.settings()
        sources = image_sources(list(images), max_input_pixels=settings["max_input_pixels"],
                                exif_transpose=settings["exif_transpose"])  # fmt: skip
        return [source.load() for source in sources]

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.05)
    async def _one(self, items: list[tuple[Any, Readout]]) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._forward, items)

    def _forward(self, items: list[tuple[Any, Readout]]) -> list[dict[str, Any]]:
        """One forward per readout among the items; each item's figures as plain floats."""
        rows: list[dict[str, Any]] = [{} for _ in items]
        groups: dict[Readout, list[int]] = defaultdict(list)
        for index, (_, readout) in enumerate(items):
            groups[readout].append(index)
        for readout, indices in groups.items():
            images = [items[i][0] for i in indices]
            details = self.scorer.score_details(images, batch_size=len(images), readout=readout)
            for position, i in enumerate(indices):
                rows[i] = {name: _plain(getattr(details, name), position) for name in FIGURES}
        return rows


def _plain(figure: Any, position: int) -> Any:
    return None if figure is None else figure[position].tolist()


class Front:
    """The HTTP routes (the deployment `HttpFront` below); decoding and checks happen here, one request at a time."""

    def __init__(self, scorer: DeploymentHandle, config: ServeConfig) -> None:
        self.scorer = scorer
        self.config = config
        self._identity: dict[str, Any] | None = None

    async def __call__(self, request: Request) -> Response:
        route = (request.method, request.url.path.rstrip("/") or "/")
        if route == ("GET", "/health"):
            return await self._health()
        if self.config.api_key and request.headers.get("authorization") != f"Bearer {self.config.api_key}":
            return Response("this server needs its API key: send the header 'Authorization: Bearer KEY'\n", 401)
        if route == ("GET", "/v1/models"):
            return _json({"object": "list", "data": _model_list(await self._served())})
        kind = {"/v1/score": "project", "/score": "verl", "/": "flow-grpo"}.get(route[1])
        if request.method != "POST" or kind is None:
            return Response(
                "not found: GET /health, GET /v1/models, POST /v1/score (JSON), POST /score (verl-omni pickle), "
                "POST / (Flow-GRPO pickle)\n",
                status_code=404,
            )
        try:
            return await self._scored(kind, request)
        except ProtocolError as error:
            return _error(kind, error.status, str(error))

    async def _scored(self, kind: str, request: Request) -> Response:
        body = await self._body(request)
        identity = await self._served()
        if kind == "project":
            parsed = await asyncio.to_thread(protocols.project_request, body, identity["settings"]["max_input_pixels"])
            names = [entry["id"] for entry in _model_list(identity)]
            if parsed.model not in (None, *names):
                raise ProtocolError(f"the model {parsed.model!r} does not exist here: this server serves {names} "
                                    "(the second names its weights).", status=404)  # fmt: skip
            if parsed.prompt not in (None, identity["prompt"]):
                style = identity["settings"]["prompt_style"]
                raise ProtocolError(f"the client's prompt differs from this server's (prompt_style {style!r}): build "
                                    "the client with the settings GET /v1/models lists.")  # fmt: skip
            _check_model_size(parsed.images, identity)
        else:
            parsed = await asyncio.to_thread(
                protocols.framework_request, body, self.config.max_body_bytes,
                identity["settings"]["max_input_pixels"], identity["settings"]["exif_transpose"],
            )  # fmt: skip
        arrays = [np.asarray(image) for image in parsed.images]
        response = self.scorer.score.remote(arrays, parsed.readout)
        try:
            result = await asyncio.wait_for(_awaited(response), self.config.request_timeout_s)
        except asyncio.TimeoutError:
            response.cancel()
            deadline = self.config.request_timeout_s
            return _error(kind, 504, f"the request was not scored within the server's deadline of {deadline:g} s "
                          "(--request-timeout): the server is overloaded or the request too large. Retry, or send "
                          "fewer images per request.")  # fmt: skip
        except (RayActorError, ActorUnavailableError) as error:
            return _error(kind, 503, f"the replica scoring this request died mid-batch ({type(error).__name__}); "
                          "Serve is replacing it. Retry the request.")  # fmt: skip
        except Exception as error:  # the model failed on a batch: every request of that batch gets the cause
            return _error(kind, 500, f"scoring failed on the server: {type(error).__name__}: {error}")
        if result["fingerprint"] != identity["fingerprint"]:
            return _error(kind, 500, f"a replica serves weights {result['fingerprint']} where the server started "
                          f"with {identity['fingerprint']}: the checkpoint changed on disk.")  # fmt: skip
        scores = [row["scores"] for row in result["rows"]]
        if kind == "project":
            return Response(protocols.project_answer(result["rows"], result["fingerprint"], result["readout"]),
                            media_type="application/json")  # fmt: skip
        answer = protocols.verl_answer(scores) if kind == "verl" else protocols.flow_grpo_answer(scores)
        return Response(answer, media_type="application/octet-stream")

    async def _body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        too_large = ProtocolError(f"the body is over the server's {limit:,}-byte limit (--max-body-mb); send fewer "
                                  "images per request.", status=413)  # fmt: skip
        if int(request.headers.get("content-length") or 0) > limit:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    async def _served(self) -> dict[str, Any]:
        if self._identity is None:
            self._identity = await self.scorer.identity.remote()
        return self._identity

    async def _health(self) -> Response:
        """200 once the application runs and every replica of it is running; 503 with what is not, else."""
        status = await asyncio.to_thread(serve.status)
        application = status.applications.get(self.config.app_name)
        if application is None:
            return Response(f"application {self.config.app_name!r} is not deployed\n", status_code=503)
        waiting = {
            name: {state.value: count for state, count in deployment.replica_states.items() if state != "RUNNING"}
            for name, deployment in application.deployments.items()
        }
        waiting = {name: states for name, states in waiting.items() if states}
        if application.status != "RUNNING" or waiting:
            text = f"not ready: application {application.status.value}, replicas {waiting}\n"
            return Response(text, status_code=503)
        return Response("ok\n")


def _model_list(identity: dict[str, Any]) -> list[dict[str, Any]]:
    """The `/v1/models` entries: the model, and `NAME@<weights fingerprint>` (same root), which clients pin."""
    alias = {"id": f"{identity['id']}@{identity['fingerprint']}", "object": "model", "root": identity["root"],
             "engine": "ray", "fingerprint": identity["fingerprint"]}  # fmt: skip
    return [identity, alias]


async def _awaited(response: Any) -> Any:
    return await response


def _check_model_size(images: list, identity: dict[str, Any]) -> None:
    """Project requests carry images the client already resized with the server's pixel budget (`GET /v1/models`)."""
    from vq_reward.images import smart_resize  # torch: the launcher that imports this module needs none

    for index, image in enumerate(images):
        height, width = smart_resize(image.height, image.width, identity["min_pixels"], identity["max_pixels"])
        if (width, height) != image.size:
            raise ProtocolError(
                f"images[{index}] is {image.width}x{image.height}, not a size this server's pixel budget "
                f"({identity['min_pixels']}..{identity['max_pixels']}) keeps: the client resized it with another "
                "budget. Build the client with the server's min_pixels/max_pixels (GET /v1/models)."
            )


def _json(value: Any, status: int = 200) -> Response:
    return Response(json.dumps(value), status_code=status, media_type="application/json")


def _error(kind: str, status: int, message: str) -> Response:
    """An error in the route's protocol: JSON {"error"}, verl-omni's pickled {"error"}, Flow-GRPO's plain text."""
    if kind == "verl":
        return Response(protocols.verl_error(message), status_code=status, media_type="application/octet-stream")
    if kind == "project":
        return _json({"error": message}, status)
    return Response(message, status_code=status, media_type="text/plain")


# The deployments: Serve runs each class in its own replicas (actors), named as here.
ScorerReplica = serve.deployment(name="ScorerReplica", max_ongoing_requests=256)(Scorer)
HttpFront = serve.deployment(name="HttpFront", max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0})(Front)


def build_app(config: ServeConfig, scorer_options: dict[str, Any], front_options: dict[str, Any] | None = None) -> Any:
    """The bound application: `scorer_options` are `ScorerReplica.options(...)` (replicas, resources, autoscaling)."""
    scorer = ScorerReplica.options(**scorer_options).bind(config)
    return HttpFront.options(**(front_options or {})).bind(scorer, config)
