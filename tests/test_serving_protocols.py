"""The Ray server's request checks, without Ray: the restricted unpickler and the image decoding of each protocol."""

import base64
import io
import json
import os
import pickle
import pickletools

import pytest
from conftest import noise_image

from vq_reward.serving.protocols import (
    MAX_DEPTH,
    ProtocolError,
    decode_image,
    framework_request,
    project_request,
    unpickle_plain,
)


MB = 1 << 20


class _WritesAFile:
    """A pickle that, loaded by pickle.loads, would create a file: what a malicious client sends."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def encoded(image, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def test_plain_data_of_every_protocol_loads():
    body = {"images": [b"\x89PNG"], "prompts": ["a cat"], "metadata": {"step": 3, "scale": 1.5, "x": None}}
    for protocol in range(3, pickle.HIGHEST_PROTOCOL + 1):
        assert unpickle_plain(pickle.dumps(body, protocol=protocol), MB) == body
    flow = {"images": [b"\xff\xd8"], "queries": [["a cat"]], "flag": True, "big": 10**30}
    assert unpickle_plain(pickle.dumps(flow), MB) == flow


def test_a_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    target = tmp_path / "pwned"
    payload = pickle.dumps({"images": [_WritesAFile(str(target))]})
    with pytest.raises(ProtocolError, match="REDUCE|STACK_GLOBAL|GLOBAL") as error:
        unpickle_plain(payload, MB)
    assert error.value.status == 400
    assert not target.exists()
    pickle.loads(payload)  # the same bytes through plain pickle do run: the payload is real
    assert target.exists()


@pytest.mark.parametrize(
    "value, protocol",
    [
        ((1, 2), 4),  # a tuple
        ({"images": (b"a",)}, 4),
        (bytearray(b"abc"), 5),  # BYTEARRAY8, no global needed
        ({1, 2}, 4),  # EMPTY_SET / ADDITEMS
        (frozenset({1}), 4),
    ],
)
def test_containers_other_than_dict_and_list_are_refused(value, protocol):
    with pytest.raises(ProtocolError, match="opcode"):
        unpickle_plain(pickle.dumps(value, protocol=protocol), MB)


def test_self_reference_deep_nesting_and_non_string_keys_are_refused():
    loop: list = []
    loop.append(loop)
    with pytest.raises(ProtocolError, match="levels"):
        unpickle_plain(pickle.dumps(loop), MB)
    deep: list = []
    for _ in range(MAX_DEPTH + 2):
        deep = [deep]
    with pytest.raises(ProtocolError, match="levels"):
        unpickle_plain(pickle.dumps(deep), MB)
    with pytest.raises(ProtocolError, match="keys"):
        unpickle_plain(pickle.dumps({1: "a"}), MB)


def test_a_shared_reference_cannot_multiply_the_work():
    blob = b"x" * 1000
    with pytest.raises(ProtocolError, match="bytes of strings") as error:
        unpickle_plain(pickle.dumps({"images": [blob] * 2000}), MB)  # 2 MB of references in a 1 kB pickle
    assert error.value.status == 413


def test_a_huge_memo_index_and_garbage_are_refused():
    huge_put = b"\x80\x04]r\xff\xff\xff\x7f."  # PROTO 4, EMPTY_LIST, LONG_BINPUT 2**31-1, STOP
    assert [op.name for op, _, _ in pickletools.genops(huge_put)] == ["PROTO", "EMPTY_LIST", "LONG_BINPUT", "STOP"]
    with pytest.raises(ProtocolError, match="memo"):
        unpickle_plain(huge_put, MB)
    for garbage in (b"", b"not a pickle", pickle.dumps([1, 2])[:-3]):
        with pytest.raises(ProtocolError):
            unpickle_plain(garbage, MB)


def test_framework_bodies_decode_png_and_jpeg_and_name_the_bad_image():
    image = noise_image(64, 48)
    request = framework_request(
        pickle.dumps({"images": [encoded(image), encoded(image, "JPEG")], "prompts": ["a", "b"]}), MB, 10**8, True
    )
    assert [im.size for im in request.images] == [(64, 48), (64, 48)]
    assert list(request.images[0].getdata()) == list(image.getdata())  # PNG: the very pixels
    with pytest.raises(ProtocolError, match=r"images\[1\] is not a PNG, JPEG or WEBP image"):
        framework_request(pickle.dumps({"images": [encoded(image), b"garbage"]}), MB, 10**8, True)
    with pytest.raises(ProtocolError, match=r"images\[0\].*at least 28"):
        framework_request(pickle.dumps({"images": [encoded(noise_image(8, 8))]}), MB, 10**8, True)
    with pytest.raises(ProtocolError, match=r"images\[0\].*pixel limit"):
        framework_request(pickle.dumps({"images": [encoded(image)]}), MB, 1000, True)
    with pytest.raises(ProtocolError, match="non-empty list"):
        framework_request(pickle.dumps({"prompts": ["a"]}), MB, 10**8, True)


def test_the_project_protocol_takes_lossless_png_only():
    image = noise_image(56, 56)
    body = {"images": [base64.b64encode(encoded(image)).decode()], "readout": "first-digit", "model": "tiny@0"}
    request = project_request(json.dumps(body).encode(), 10**8)
    assert (request.readout, request.model) == ("first-digit", "tiny@0")
    jpeg = {"images": [base64.b64encode(encoded(image, "JPEG")).decode()]}
    with pytest.raises(ProtocolError, match="JPEG; this route takes PNG"):
        project_request(json.dumps(jpeg).encode(), 10**8)
    with pytest.raises(ProtocolError, match="readout"):
        project_request(json.dumps({**body, "readout": "mean"}).encode(), 10**8)
    with pytest.raises(ProtocolError, match="not JSON"):
        project_request(b"\x80\x04", 10**8)


def test_decode_image_refuses_what_is_not_bytes():
    with pytest.raises(ProtocolError, match="images\\[0\\] is a str"):
        decode_image("abc", "images[0]", ("PNG",), 10**8, True)
