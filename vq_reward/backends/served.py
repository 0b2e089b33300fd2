"""Which model a server serves, and which of its weights: what the server backend (`backends.server`) connects to.

`vq-reward serve` publishes a fingerprint of the checkpoint's weights as a second served name, `NAME@<fingerprint>`;
the client picks it when it connects and names it in every request, so a server restarted with other weights
answers 404 (`transport.HttpClient.post` turns that into one line) instead of scoring with the other weights. A plain
vLLM server publishes no fingerprint: it is identified by its model id and root (the path it loaded), and a restart
with other weights under the same name and path goes unnoticed (a warning says so).
"""

import re
import warnings
from dataclasses import dataclass

from vq_reward.backends.transport import HttpClient, ServerError


# `vq-reward serve` serves NAME and NAME@<weights fingerprint> (`backends.vllm.weights_fingerprint`: 16 hex digits).
WEIGHTS_ALIAS = re.compile(r"(?P<name>.+)@(?P<weights>[0-9a-f]{16})")


@dataclass(frozen=True)
class ServedModel:
    """One model a server lists in `/v1/models`.

    Attributes:
        id: its served name.
        root: the path or hub id the server loaded it from.
        weights: the weights fingerprint its `NAME@<fingerprint>` alias publishes; None on a plain vLLM server.
        max_model_len: the server's context length, if it says.
        engine: "vllm", or "ray" for `vq-reward serve --engine ray` (the HF scorer on Ray Serve).
    """

    id: str
    root: str | None
    weights: str | None = None
    max_model_len: int | None = None
    engine: str = "vllm"

    @property
    def name(self) -> str:
        """The name requests use: the weights alias when there is one, so only these weights ever answer."""
        return f"{self.id}@{self.weights}" if self.weights else self.id


def served_models(entries: list[dict]) -> list[ServedModel]:
    """The models of a `/v1/models` list, each weights alias folded into the model it names (same root).

    Example:
        >>> [m.name for m in served_models([{"id": "m", "root": "/m"}, {"id": "m@0123456789abcdef", "root": "/m"}])]
        ['m@0123456789abcdef']
    """
    listed = {(entry["id"], entry.get("root")) for entry in entries}
    weights, aliases = {}, set()
    for entry in entries:
        match = WEIGHTS_ALIAS.fullmatch(entry["id"])
        if match and (match["name"], entry.get("root")) in listed:
            weights[(match["name"], entry.get("root"))] = match["weights"]
            aliases.add(entry["id"])
    return [
        ServedModel(
            entry["id"],
            entry.get("root"),
            weights.get((entry["id"], entry.get("root"))),
            entry.get("max_model_len"),
            entry.get("engine", "vllm"),
        )
        for entry in entries
        if entry["id"] not in aliases
    ]


def choose_model(models: list[ServedModel], model: str | None, url: str) -> ServedModel:
    """The model to score with: the only one, or the one `model` names (its id, root or weights alias)."""
    names = [served.id for served in models]
    if model is None:
        if len(models) != 1:
            raise ServerError(f"{url} serves {len(models)} models ({names}); pass model= the one to score with.")
        return models[0]
    pinned = WEIGHTS_ALIAS.fullmatch(model)
    for served in models:
        if model in (served.id, served.root, served.name):
            return served
        if pinned and served.id == pinned["name"]:
            raise ServerError(
                f"{url} serves {served.id!r} with other weights ({served.weights or 'no fingerprint'}) than "
                f"{model!r} names: it was restarted with another checkpoint. Connect with model={served.id!r} to "
                "score with the weights it serves now, or restart it with the checkpoint asked for."
            )
    raise ServerError(f"{url} serves {names}, not {model!r}; pass model= one of those, or the right URL.")


def connect(http: HttpClient, model: str | None) -> ServedModel:
    """The model every URL of `http` serves, the same one (id, root, weights) everywhere; `model` as `choose_model`
    takes it. Warns when the servers publish no weights fingerprint."""
    served = [(url, choose_model(served_models(http.models(url)), model, url)) for url in http.urls]
    first = served[0][1]
    for url, other in served[1:]:
        if (other.id, other.root, other.weights) != (first.id, first.root, first.weights):
            raise ServerError(
                f"{url} serves {other.name!r} (root {other.root!r}) but {http.urls[0]} serves {first.name!r} "
                f"(root {first.root!r}); every URL of a scorer must serve the same model and weights."
            )
    if first.weights is None:
        warnings.warn(
            f"{http.urls[0]} publishes no weights fingerprint (a plain vLLM server, not vq-reward serve): if it "
            f"is restarted with other weights under the name {first.id!r}, this scorer cannot tell.",
            stacklevel=3,
        )
    return first
