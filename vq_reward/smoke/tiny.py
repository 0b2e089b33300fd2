"""The tiny random Qwen2.5-VL smoke checkpoint, built offline, for tests, examples and benchmarks.

`vq_reward.hub` caches it under the name "tiny". It is a real checkpoint (config, safetensors weights, byte-level
BPE tokenizer, Qwen2.5-VL chat template, image processor), loadable by `from_pretrained` with no network, and
byte-identical on every build. Its scores mean nothing: the weights are random. It has Qwen's special tokens in
Qwen's order, every digit is its own token as in Qwen's tokenizer, and `<think>`/`<answer>` are plain text, as in
Qwen2.5-VL. The taught smoke model (`vq_reward.smoke.taught`) shares its tokenizer, template and image processor.
"""

import functools
import json
import os
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AddedToken,
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from vq_reward import prompts


TINY_MIN_PIXELS = 4 * 28 * 28  # 2x2 merged tokens
TINY_MAX_PIXELS = 64 * 28 * 28  # at most 64 image tokens, so CPU tests stay fast

# Qwen2's pre-tokenizer split rule (single digits, letters with one leading non-letter, punctuation runs).
_QWEN_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip

# The Qwen2.5-VL chat format: default system turn, one vision block per image, optional "Picture N: " labels.
CHAT_TEMPLATE = (
    "{%- set counts = namespace(images=0, videos=0) -%}"
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "{%- set counts.images = counts.images + 1 -%}"
    "{%- if add_vision_id -%}{{- 'Picture ' ~ counts.images ~ ': ' -}}{%- endif -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "{%- set counts.videos = counts.videos + 1 -%}"
    "{%- if add_vision_id -%}{{- 'Video ' ~ counts.videos ~ ': ' -}}{%- endif -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in part -%}{{- part['text'] -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def build_tiny_checkpoint(path: str | os.PathLike) -> Path:
    """Write the tiny random Qwen2.5-VL checkpoint to `path` and return it.

    About 0.7M parameters and 3 MB on disk; takes well under a second after imports.

    Example:
        >>> from vq_reward import VisualQualityScorer
        >>> scorer = VisualQualityScorer.from_pretrained(build_tiny_checkpoint(tmp_path / "tiny"))
        >>> scorer.score(torch.rand(1, 3, 56, 56)).shape
        torch.Size([1])
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    processor = smoke_processor(tokenizer)
    processor.save_pretrained(out)
    _build_model(tokenizer).save_pretrained(out)
    return out


def build_tokenizer() -> Qwen2Tokenizer:
    bpe = Tokenizer(
        models.BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", byte_fallback=False)
    )
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=1024, min_frequency=2, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(_corpus(), trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge) for merge in model["merges"]]
    # Constructed with eos <|endoftext|> so the special tokens keep Qwen's order; eos becomes <|im_end|> after.
    tokenizer = Qwen2Tokenizer(
        vocab=model["vocab"],
        merges=merges,  # type: ignore[arg-type]  # annotated str | list[str]; the tokenizers backend takes pairs
        unk_token=None,  # type: ignore[arg-type]  # annotated str, but None (no unknown token) is what byte-level BPE needs
        bos_token=None,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        errors="replace",
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in _SPECIAL_TOKENS], special_tokens=True)
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.padding_side = "left"
    return tokenizer


def _corpus() -> list[str]:
    """Text the tiny tokenizer learns its merges from: our prompts and the answer formats, so prompts stay short."""
    texts = [
        prompts.quality_prompt(thinking=True),
        prompts.quality_prompt(thinking=False),
        prompts.QINSIGHT_SYSTEM,
        prompts.QINSIGHT_SCORE_QUESTION,
        prompts.QINSIGHT_DEGRADATION_QUESTION,
        prompts.QINSIGHT_COMPARE_INTRO + " Image A: Image B: " + prompts.QINSIGHT_COMPARE_QUESTION,
        "You are a helpful assistant.",
    ]
    words = ["sharp", "blurry", "noisy", "dark", "clean", "detailed", "compressed", "artifacts", "colors", "edges"]
    answers = []
    for hundredths in range(100, 501, 5):
        score = f"{hundredths / 100:.2f}"
        word = words[hundredths % len(words)]
        answers.append(f"<think> The image is {word}, so the quality is fair. </think> <answer>{score}</answer>")
        answers.append(f'<think>\nThe image looks {word}.\n</think>\n<answer>\n{{"rating": {score}}}\n</answer>')
    for kind in (*prompts.QINSIGHT_DEGRADATION_CLASSES, prompts.QINSIGHT_NONE):
        for level in (*prompts.QINSIGHT_SEVERITIES, prompts.QINSIGHT_NONE):
            answers.append(f'<answer>\n{{"distortion_class": "{kind}", "severity": "{level}"}}\n</answer>')
    for result in prompts.QINSIGHT_COMPARISON_RESULTS:
        answers.append(f"<think>\nImage A and Image B differ.\n</think>\n<answer>\n{result}\n</answer>")
    return (texts + answers) * 2


def smoke_config(tokenizer: Qwen2Tokenizer, text: dict, vision: dict) -> Qwen2_5_VLConfig:
    """A small Qwen2.5-VL config for `tokenizer`: Qwen's token ids and M-RoPE layout, with `text` and `vision` sizes.

    `text` gives hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads (head
    dim 32); `vision` gives depth, hidden_size, intermediate_size, num_heads, out_hidden_size.
    """
    ids = functools.partial(token_id, tokenizer)
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),  # exactly the tokenizer: no id can be sampled that it cannot decode
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6,
            # mrope sections must add up to head_dim / 2 = 16 (the 7B default assumes head_dim 128).
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]},
            "use_sliding_window": False,
            "sliding_window": None,
            "max_window_layers": text["num_hidden_layers"],
            "bos_token_id": ids("<|endoftext|>"),
            "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": ids("<|endoftext|>"),
            "tie_word_embeddings": False,
            **text,
        },
        vision_config={
            "in_channels": 3,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,  # 2x2 merged-token windows on small images (the 7B uses 112)
            "fullatt_block_indexes": [vision["depth"] - 1],  # must index into the depth (the 7B uses [7, 15, 23, 31])
            "tokens_per_second": 2,
            **vision,
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )


def smoke_generation_config(tokenizer: Qwen2Tokenizer) -> GenerationConfig:
    """Stop at <|im_end|> (or <|endoftext|>), pad with <|endoftext|>; no sampling defaults of its own."""
    ids = functools.partial(token_id, tokenizer)
    return GenerationConfig(
        eos_token_id=[ids("<|im_end|>"), ids("<|endoftext|>")],
        pad_token_id=ids("<|endoftext|>"),
        bos_token_id=ids("<|endoftext|>"),
    )


def _build_model(tokenizer: Qwen2Tokenizer) -> Qwen2_5_VLForConditionalGeneration:
    text = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2}  # fmt: skip
    vision = {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2, "out_hidden_size": 128}
    return seeded_model(tokenizer, text, vision)


def seeded_model(tokenizer: Qwen2Tokenizer, text: dict, vision: dict) -> Qwen2_5_VLForConditionalGeneration:
    """A smoke model of these widths, its random init seeded (0) without touching the caller's random state."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(smoke_config(tokenizer, text, vision))
    torch.random.set_rng_state(generator_state)
    model.generation_config = smoke_generation_config(tokenizer)
    return model


def token_id(tokenizer: Qwen2Tokenizer, token: str) -> int:
    """The id of one token (the tokenizer's own call also takes and returns lists)."""
    value = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(value, int):
        raise TypeError(f"{token!r} has no single id in this tokenizer ({value!r}).")
    return value


def smoke_processor(
    tokenizer: Qwen2Tokenizer, min_pixels: int = TINY_MIN_PIXELS, max_pixels: int = TINY_MAX_PIXELS
) -> Qwen2_5_VLProcessor:
    """A smoke checkpoint's processor: Qwen2.5-VL's image processor with the pixel budget given and the chat
    template that renders what Qwen2.5-VL's renders for every message the project sends."""
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels),
        video_processor=Qwen2VLVideoProcessor(),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
