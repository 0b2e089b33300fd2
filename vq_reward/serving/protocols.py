"""The request and answer formats the Ray server speaks, and the checks every request passes before it is scored.

Three protocols, one per route:

- the project's own (`POST /v1/score`, JSON), what `VisualQualityScorer.from_server` sends: lossless PNG images
  already at the model's size (base64), an optional readout, the served name the client pinned (`NAME@<weights
  fingerprint>`, so a server restarted with other weights answers 404) and the prompt it expects (a server with
  other prompt settings answers 400); the answer holds every figure of `ScoreDetails` and the fingerprint of the
  weights that scored;
- verl-omni's HTTP scorer (`POST /score`): `pickle.dumps({"images": [PNG or JPEG bytes], "prompts": [str],
  "metadata": {...}})`, answered `pickle.dumps({"scores": [float]})`, or `pickle.dumps({"error": str})` with a 4xx
  or 5xx status (its client retries 408, 429 and 5xx);
- Flow-GRPO's reward server (`POST /`): `pickle.dumps({"images": [JPEG bytes], "queries": [[str]]})`, answered
  `pickle.dumps({"outputs": [float]})`, or the error's text with a 4xx or 5xx status.

Prompts, queries and metadata are accepted and not used: the score is the image's quality.

A pickle from the network is never trusted: `unpickle_plain` first reads its opcodes without running any
(`pickletools.genops`) and refuses every opcode that can import, call or build an object, as well as tuples, sets
and bytearrays; a memo index beyond the pickle's own length (a huge allocation) is refused too. Only then does an
unpickler that refuses every global load it, and the result must be plain data (dict with str keys, list, str,
bytes, int, float, bool, None) within a bounded depth, item count and byte total. Anything else is a 400.
"""

import base64
import binascii
import io
import json
import pickle
import pickletools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError


# The opcodes of plain data (protocols 0-5): containers, strings, bytes, numbers, None, booleans and the memo.
PLAIN_OPCODES = frozenset(
    """PROTO FRAME STOP MARK POP POP_MARK DUP EMPTY_DICT DICT SETITEM SETITEMS EMPTY_LIST LIST APPEND APPENDS
    UNICODE BINUNICODE SHORT_BINUNICODE BINUNICODE8 STRING BINSTRING SHORT_BINSTRING BINBYTES SHORT_BINBYTES
    BINBYTES8 INT BININT BININT1 BININT2 LONG LONG1 LONG4 FLOAT BINFLOAT NONE NEWTRUE NEWFALSE
    PUT BINPUT LONG_BINPUT MEMOIZE GET BINGET LONG_BINGET""".split()
)
MAX_DEPTH = 8
MAX_ITEMS = 100_000
MAX_IMAGES = 1024
FRAMEWORK_FORMATS = ("PNG", "JPEG", "WEBP")


class ProtocolError(ValueError):
    """A request that cannot be scored as sent; `status` is the HTTP status to answer (4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ScoreRequest:
    """A decoded request: RGB images (upright, checked) and the readout asked for (`None`: the server's)."""

    images: list[Image.Image]
    readout: str | None = None
    model: str | None = None
    prompt: str | None = None


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused persistent id")


def unpickle_plain(body: bytes, max_bytes: int) -> Any:
    """Load a pickle of plain data only (see the module docstring); `ProtocolError` (400) for anything else.

    Example:
        >>> unpickle_plain(pickle.dumps({"images": [b"..."], "prompts": ["a cat"]}), max_bytes=1 << 20)
        {'images': [b'...'], 'prompts': ['a cat']}
    """
    _check_opcodes(body)
    try:
        value = _NoGlobals(io.BytesIO(body)).load()
    except Exception as error:  # any failure of a pickle that holds no globals is a malformed body
        raise ProtocolError(f"the body is not a pickle of plain data ({type(error).__name__}: {error}).") from None
    _check_plain(value, max_bytes)
    return value


def _check_opcodes(body: bytes) -> None:
    opcodes = 0
    try:
        for opcode, argument, _ in pickletools.genops(body):
            opcodes += 1
            if opcode.name not in PLAIN_OPCODES:
                raise ProtocolError(
                    f"the pickle holds opcode {opcode.name}, which can import, call or build objects; send plain "
                    "data only (dict, list, str, bytes, int, float, bool, None)."
                )
            if opcode.name.endswith("PUT") and isinstance(argument, int) and argument > opcodes:
                raise ProtocolError(f"the pickle's memo index {argument} is out of range; it is malformed.")
            if opcode.name == "STOP":
                return
    except (ValueError, TypeError) as error:  # genops' own complaints: truncated or unknown opcodes
        raise ProtocolError(f"the body is not a pickle ({error}).") from None
    raise ProtocolError("the body is not a pickle (no STOP opcode).")


def _check_plain(value: Any, max_bytes: int) -> None:
    """Plain types only, within MAX_DEPTH levels, MAX_ITEMS items and `max_bytes` of strings and bytes in all
    (shared references counted each time, so a memo trick cannot multiply the work)."""
    stack, items, size = [(value, 0)], 0, 0
    while stack:
        item, depth = stack.pop()
        items += 1
        if depth > MAX_DEPTH or items > MAX_ITEMS:
            raise ProtocolError(f"the pickle nests over {MAX_DEPTH} levels deep or holds over {MAX_ITEMS:,} items.")
        if isinstance(item, (str, bytes)):
            size += len(item)
            if size > max_bytes:
                raise ProtocolError(f"the pickle holds over {max_bytes:,} bytes of strings and bytes.", status=413)
        elif isinstance(item, dict):
            if not all(isinstance(key, str) for key in item):
                raise ProtocolError("the pickle holds a dict with keys that are not strings.")
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
        elif not (item is None or isinstance(item, (bool, int, float))):
            raise ProtocolError(
                f"the pickle holds a {type(item).__name__}; send plain data only (dict, list, str, bytes, int, "
                "float, bool, None)."
            )


def decode_image(
    data: Any, name: str, formats: Sequence[str], max_input_pixels: int, exif_transpose: bool
) -> Image.Image:
    """One encoded image to checked RGB pixels, as the scorer would read the same file; `ProtocolError` names it."""
    from vq_reward.images import ImageInputError, image_sources  # torch: the launcher that imports this needs none

    kinds = ", ".join(formats[:-1]) + " or " + formats[-1] if len(formats) > 1 else formats[0]
    if not isinstance(data, bytes):
        raise ProtocolError(f"{name} is a {type(data).__name__}; send the bytes of a {kinds} file.")
    try:
        opened = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as error:
        raise ProtocolError(f"{name} is not a {kinds} image ({type(error).__name__}).") from None
    if opened.format not in formats:
        raise ProtocolError(f"{name} is {opened.format}; this route takes {kinds} images.")
    try:
        [source] = image_sources(opened, max_input_pixels=max_input_pixels, exif_transpose=exif_transpose)
        return source.load()
    except ImageInputError as error:
        raise ProtocolError(f"{name}: {error}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ProtocolError(f"{name} is corrupt or truncated ({error}).") from None


def _image_list(value: Any, key: str = "images") -> list:
    if not isinstance(value, dict) or not isinstance(value.get(key), list) or not value[key]:
        raise ProtocolError(f"the body must be a dict whose {key!r} is a non-empty list of encoded images.")
    if len(value[key]) > MAX_IMAGES:
        raise ProtocolError(f"{len(value[key])} images in one request; send at most {MAX_IMAGES}.", status=413)
    return value[key]


def framework_request(body: bytes, max_bytes: int, max_input_pixels: int, exif_transpose: bool) -> ScoreRequest:
    """A verl-omni (`POST /score`) or Flow-GRPO (`POST /`) body: a pickled dict of PNG or JPEG bytes in "images"."""
    encoded = _image_list(unpickle_plain(body, max_bytes))
    images = [
        decode_image(data, f"images[{i}]", FRAMEWORK_FORMATS, max_input_pixels, exif_transpose)
        for i, data in enumerate(encoded)
    ]
    return ScoreRequest(images)


def project_request(body: bytes, max_input_pixels: int) -> ScoreRequest:
    """The project's JSON body: {"images": [base64 PNG]} and, optional, "readout", "model" (a served name) and
    "prompt" (the text the client expects the images to be read after)."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise ProtocolError(f"the body is not JSON ({error}).") from None
    images = []
    for i, text in enumerate(_image_list(value)):
        try:
            data = base64.b64decode(text, validate=True) if isinstance(text, str) else text
        except (binascii.Error, ValueError):
            raise ProtocolError(f"images[{i}] is not base64 text.") from None
        images.append(decode_image(data, f"images[{i}]", ("PNG",), max_input_pixels, exif_transpose=False))
    readout, model, prompt = value.get("readout"), value.get("model"), value.get("prompt")
    if readout is not None and readout not in ("number", "first-digit"):
        raise ProtocolError(f"readout must be 'number' or 'first-digit', got {readout!r}.")
    if not all(field is None or isinstance(field, str) for field in (model, prompt)):
        raise ProtocolError("model and prompt must be strings: a served model name (GET /v1/models), the prompt.")
    return ScoreRequest(images, readout, model, prompt)


def project_answer(rows: list[dict[str, Any]], fingerprint: str, readout: str) -> bytes:
    """The project's JSON answer: one list per ScoreDetails figure, in request order (floats round-trip exactly)."""
    figures = {name: [row[name] for row in rows] for name in ("scores", "std", "probs", "digit_mass", "dot_mass")}
    return json.dumps({"fingerprint": fingerprint, "readout": readout, **figures}).encode()


def verl_answer(scores: list[float]) -> bytes:
    return pickle.dumps({"scores": scores})


def verl_error(message: str) -> bytes:
    return pickle.dumps({"error": message})


def flow_grpo_answer(scores: list[float]) -> bytes:
    return pickle.dumps({"outputs": scores})
