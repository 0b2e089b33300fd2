"""The chat-completions format the server backend (`backends.server`) speaks: the image as a lossless PNG data URL in
the OpenAI chat messages, and the digits' log-probabilities read back from vLLM's answer.
"""

import base64
import io

from PIL import Image

from vq_reward.backends.common import digit_logprobs
from vq_reward.backends.transport import ServerError
from vq_reward.readout import Request


def png_data_url(image: Image.Image) -> str:
    """A lossless PNG data URL of an RGB image (never JPEG: the server must see the very pixels HF sees).

    Example:
        >>> png_data_url(Image.new("RGB", (28, 28))).startswith("data:image/png;base64,")
        True
    """
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def chat_messages(request: Request, image_url: str, assistant: str) -> list[dict]:
    """The request's chat in the OpenAI format: each `{"type": "image"}` part becomes the image URL, and a
    non-empty `assistant` text is the assistant turn the server continues."""
    messages = []
    for message in request.messages:
        content = message["content"]
        if isinstance(content, list):
            content = [
                {"type": "image_url", "image_url": {"url": image_url}} if part.get("type") == "image" else part
                for part in content
            ]
        messages.append({**message, "content": content})
    if assistant:
        messages.append({"role": "assistant", "content": assistant})
    return messages


def text_parts(messages: list[dict]) -> list:
    """The messages without their image data: what decides a prompt's tokens besides the image size."""
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = [part for part in content if part.get("type") != "image_url"]
        out.append((message["role"], content))
    return out


def digit_answer(response: dict, ids: list[int], url: str) -> list[float]:
    """The log-probabilities of `ids` at the one generated position (the sampled token may be listed too)."""
    try:
        top = response["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        by_id = {int(entry["token"].split(":", 1)[1]): float(entry["logprob"]) for entry in top}
    except (KeyError, IndexError, TypeError, ValueError):
        raise ServerError(f"{url} answered without token log-probabilities; is it a vLLM server?") from None
    fix = f"start it with --max-logprobs {len(ids)} or more (vq-reward serve does)."
    return digit_logprobs(by_id, ids, url, fix, ServerError)
