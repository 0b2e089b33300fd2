"""The hand-set weights of the taught smoke model: a classical image-quality front end in the vision tower, and
the routing of its one-layer language model (image features to every text position, the previous tokens to the
digit being written). `vq_reward.smoke.taught` says why and teaches the rest.

Every channel has one role, listed in the layout constants below, so the weights can be read off them.
"""

import math
from typing import TypeVar

import numpy as np
import torch
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
)
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VisionTransformerPretrainedModel,
    Qwen2_5_VLAttention,
    Qwen2_5_VLDecoderLayer,
    Qwen2_5_VLMLP,
    Qwen2_5_VLTextModel,
    Qwen2_5_VLVisionAttention,
    Qwen2_5_VLVisionBlock,
)

from vq_reward.smoke.tiny import smoke_config, smoke_generation_config


# Vision tower layout: one channel per role, so the hand-set weights can be read off this table.
PATCH = 14
VISION_WIDTH = 128
PROJECTIONS = 6  # random-sign projections per band; the mean of their |.| estimates the band amplitude
BANDS = ("y1", "y2", "y3", "c1", "c2", "c1m", "c2m", "dx_even", "dx_odd", "dy_even", "dy_odd")
CH_CONST = 0
CH_COLOUR = (1, 2, 3)
CH_PROJ = 4
CH_AMP = CH_PROJ + PROJECTIONS * len(BANDS)
CH_POOLED = CH_AMP + len(BANDS)  # pooled colour (3), then pooled amplitudes
CH_LOG = CH_POOLED + 3 + len(BANDS)
FEATURE_CHANNELS = (*range(CH_POOLED, CH_POOLED + 3), *range(CH_LOG, CH_LOG + len(BANDS)))
VISION_CONSTANT = 1000.0  # >> every feature, so each later RMSNorm divides by (almost exactly) this
ABS_SHARPNESS = 100.0  # silu(a x) + silu(-a x) = a |x| to 1e-4 for |x| > 0.1
LOG_RANGE = (1e-3, 10.0)  # band amplitudes live here; log is clamped below
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)  # the image processor's normalisation

# Language model layout.
TEXT_WIDTH = 128
HEAD_DIM = 32
IMAGE_MARK = 20.0  # channel 0 of image tokens; text embeddings are 0 there, so head 0 finds the image by it
TOKEN_FEATURES = slice(1, 1 + len(FEATURE_CHANNELS))  # image-token channels that hold the standardised features
FEATURE_GAIN = 4.0
ROUTE_LOGIT = 25.0  # attention logit of an image token for head 0 (text tokens: about 0)
PREV_SCALE = 9.0  # q/k bias scale of the previous-token heads: a logit margin of about 8 over other offsets


def _config(tokenizer: Qwen2Tokenizer) -> Qwen2_5_VLConfig:
    text = {
        "hidden_size": TEXT_WIDTH,
        "intermediate_size": 512,
        "num_hidden_layers": 1,  # attention is wired by hand; one layer is enough and keeps training cheap
        "num_attention_heads": TEXT_WIDTH // HEAD_DIM,
        "num_key_value_heads": TEXT_WIDTH // HEAD_DIM // 2,
    }
    vision = {
        "depth": 2,  # block 1 (the last, full-attention block) pools over the whole image
        "hidden_size": VISION_WIDTH,
        "intermediate_size": 2 * VISION_WIDTH,  # room for the 132 and 154 hand-set units
        "num_heads": VISION_WIDTH // 32,
        "out_hidden_size": TEXT_WIDTH,
    }
    return smoke_config(tokenizer, text, vision)


def design_model(tokenizer: Qwen2Tokenizer, seed: int) -> Qwen2_5_VLForConditionalGeneration:
    torch.manual_seed(seed)  # the default init of every weight not set by hand (inside fork_rng: caller unaffected)
    model = Qwen2_5_VLForConditionalGeneration(_config(tokenizer))
    model.generation_config = smoke_generation_config(tokenizer)
    rng = np.random.default_rng(seed)
    _design_vision(model.model.visual, rng)
    _design_language_model(model, torch.Generator().manual_seed(seed))
    return model


Layer = TypeVar("Layer", bound=torch.nn.Module)


def _as(kind: type[Layer], layer: torch.nn.Module) -> Layer:
    """An item of a ModuleList or Sequential (typed as a plain Module) as the class the hand-set layout is for."""
    if not isinstance(layer, kind):
        raise TypeError(
            f"expected a {kind.__name__}, got a {type(layer).__name__}: a Qwen2.5-VL layout this file does not know"
        )
    return layer


def _design_vision(visual: Qwen2_5_VisionTransformerPretrainedModel, rng: np.random.Generator) -> None:
    blocks = [_as(Qwen2_5_VLVisionBlock, block) for block in visual.blocks]
    with torch.no_grad():
        _set_patch_embedding(visual, rng)
        # Every RMSNorm divides by ~VISION_CONSTANT / sqrt(width): undo that, and drop the constant itself.
        gain = torch.full((VISION_WIDTH,), VISION_CONSTANT / math.sqrt(VISION_WIDTH))
        gain[CH_CONST] = 0.0
        for norm in (*(n for b in blocks for n in (b.norm1, b.norm2)), visual.merger.ln_q):
            norm.weight.copy_(gain)
            norm.weight.requires_grad_(False)
        first, second = blocks
        first.attn.proj.weight.zero_()
        first.attn.proj.bias.zero_()
        first.attn.proj.bias[CH_CONST] = VISION_CONSTANT
        _set_amplitude_mlp(first.mlp)
        _set_pooling_attention(second.attn)
        _set_log_mlp(second.mlp)


def _set_patch_embedding(visual: Qwen2_5_VisionTransformerPretrainedModel, rng: np.random.Generator) -> None:
    raw = np.zeros((VISION_WIDTH, 3, PATCH * PATCH))  # filters on [0, 1] pixels, per channel
    for c, channel in enumerate(CH_COLOUR):
        raw[channel, c] = 1.0 / PATCH**2
    for b, (responses, colour) in enumerate(_band_responses()):
        for k in range(PROJECTIONS):
            spatial = rng.choice([-1.0, 1.0], size=len(responses)) @ responses
            kernel = colour[:, None] * spatial[None, :]
            raw[CH_PROJ + b * PROJECTIONS + k] = kernel / (0.1 * np.linalg.norm(kernel))  # std 1 for noise std 0.1
    # The processor feeds (pixel - mean) / std, twice (two identical temporal frames): fold that in.
    weight = raw * np.array(CLIP_STD)[None, :, None] / 2.0
    weight = np.repeat(weight[:, :, None, :], 2, axis=2).reshape(VISION_WIDTH, 3, 2, PATCH, PATCH)
    visual.patch_embed.proj.weight.copy_(torch.tensor(weight, dtype=torch.float32))


def _band_responses() -> list[tuple[np.ndarray, np.ndarray]]:
    """For each band: (responses x 196 pixels linear map, colour weights over R, G, B)."""
    luma, red_green, blue_green = np.full(3, 1 / 3), np.array([1.0, -1.0, 0.0]), np.array([0.0, -1.0, 1.0])
    return [
        (_laplacians(1), luma),
        (_laplacians(2), luma),
        (_laplacians(3), luma),
        (_laplacians(1), red_green),
        (_laplacians(1), blue_green),
        (_laplacians(2), red_green),
        (_laplacians(2), blue_green),
        (_differences(axis=1, parity=0), luma),
        (_differences(axis=1, parity=1), luma),
        (_differences(axis=0, parity=0), luma),
        (_differences(axis=0, parity=1), luma),
    ]


def _laplacians(scale: int) -> np.ndarray:
    """Laplacian responses at the interior points of the patch's grid of scale x scale block means."""
    n = PATCH // scale
    means = np.zeros((n, n, PATCH, PATCH))
    for i in range(n):
        for j in range(n):
            means[i, j, i * scale : (i + 1) * scale, j * scale : (j + 1) * scale] = 1.0 / scale**2
    rows = [
        4 * means[i, j] - means[i - 1, j] - means[i + 1, j] - means[i, j - 1] - means[i, j + 1]
        for i in range(1, n - 1)
        for j in range(1, n - 1)
    ]
    return np.array(rows).reshape(len(rows), -1)


def _differences(axis: int, parity: int) -> np.ndarray:
    """Differences between pixels c-1 and c along `axis`, for offsets c of the given parity."""
    rows = []
    for line in range(PATCH):
        for c in range(parity or 2, PATCH, 2):
            step = np.zeros((PATCH, PATCH))
            if axis == 1:
                step[line, c], step[line, c - 1] = 1.0, -1.0
            else:
                step[c, line], step[c - 1, line] = 1.0, -1.0
            rows.append(step.ravel())
    return np.array(rows)


def _set_amplitude_mlp(mlp: Qwen2_5_VLMLP) -> None:
    """Units 2i, 2i+1: silu(+-a x_i) * 1; their sum / (a K) is the mean |projection| of band i."""
    unit = 0
    for b in range(len(BANDS)):
        for k in range(PROJECTIONS):
            for sign in (1.0, -1.0):
                _set_unit(mlp, unit, CH_PROJ + b * PROJECTIONS + k, sign * ABS_SHARPNESS, 0.0)
                mlp.down_proj.weight[CH_AMP + b, unit] = 1.0 / (ABS_SHARPNESS * PROJECTIONS)
                unit += 1
    mlp.down_proj.bias.zero_()


def _set_pooling_attention(attn: Qwen2_5_VLVisionAttention) -> None:
    """q = k = 0: uniform attention over the image's patches; head 0 carries colour and amplitudes."""
    width = VISION_WIDTH
    attn.qkv.weight[: 2 * width] = 0.0
    attn.qkv.bias.zero_()
    attn.proj.weight.zero_()
    attn.proj.bias.zero_()
    head = attn.qkv.weight[2 * width : 2 * width + width // attn.num_heads]
    head.zero_()
    for j, channel in enumerate((*CH_COLOUR, *range(CH_AMP, CH_AMP + len(BANDS)))):
        head[j, channel] = 1.0
        attn.proj.weight[CH_POOLED + j, j] = 1.0


def _set_log_mlp(mlp: Qwen2_5_VLMLP) -> None:
    """log(amplitude) as sum_k w_k silu(a_k (x - t_k)) + c, with geometric knots t_k."""
    knots, slopes, weights, offset = _silu_log_fit(*LOG_RANGE)
    mlp.down_proj.bias.zero_()
    unit = 0
    for b in range(len(BANDS)):
        for knot, slope, weight in zip(knots, slopes, weights, strict=True):
            _set_unit(mlp, unit, CH_POOLED + 3 + b, slope, -slope * knot)
            mlp.down_proj.weight[CH_LOG + b, unit] = weight
            unit += 1
        mlp.down_proj.bias[CH_LOG + b] = offset


def _set_unit(mlp: Qwen2_5_VLMLP, unit: int, channel: int, slope: float, bias: float) -> None:
    """One gated-MLP unit computing silu(slope * x[channel] + bias), written nowhere yet."""
    mlp.gate_proj.weight[unit].zero_()
    mlp.gate_proj.weight[unit, channel] = slope
    mlp.gate_proj.bias[unit] = bias
    mlp.up_proj.weight[unit].zero_()
    mlp.up_proj.bias[unit] = 1.0
    mlp.down_proj.weight[:, unit] = 0.0


def _silu_log_fit(low: float, high: float, knots: int = 14) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Least-squares weights so that sum_k w_k silu(a_k (x - t_k)) + c ~ log x on [low, high] (error ~0.01)."""
    t = np.geomspace(low, high, knots) * 0.7
    a = 3.0 / t
    x = np.geomspace(low, high, 600)
    z = a[None, :] * (x[:, None] - t[None, :])
    basis = np.concatenate([z / (1 + np.exp(-z)), np.ones((len(x), 1))], axis=1)
    coef, *_ = np.linalg.lstsq(basis, np.log(x), rcond=None)
    return t, a, coef[:-1], float(coef[-1])


def standardise_merger(visual: Qwen2_5_VisionTransformerPretrainedModel, features: torch.Tensor) -> None:
    """Merger units 0..13 pass the features, standardised on the training images, to image-token channels 1..14
    (`TOKEN_FEATURES`).

    A +10 shift keeps GELU in its linear range; image tokens also get IMAGE_MARK in channel 0.
    """
    first, second = _as(torch.nn.Linear, visual.merger.mlp[0]), _as(torch.nn.Linear, visual.merger.mlp[2])
    mean, std = features.mean(0), features.std(0) + 1e-6
    shift = 10.0
    with torch.no_grad():
        second.weight[: TOKEN_FEATURES.stop] = 0.0
        second.bias.zero_()
        second.bias[0] = IMAGE_MARK
        for j, channel in enumerate(FEATURE_CHANNELS):
            first.weight[j].zero_()
            first.weight[j, channel] = 1.0 / std[j]
            first.bias[j] = shift - mean[j] / std[j]
            second.weight[:, j] = 0.0
            second.weight[TOKEN_FEATURES.start + j, j] = 1.0
            second.bias[TOKEN_FEATURES.start + j] = -shift


def _design_language_model(model: Qwen2_5_VLForConditionalGeneration, gen: torch.Generator) -> None:
    text: Qwen2_5_VLTextModel = model.model.language_model
    width = text.config.hidden_size
    routed = list(range(width - len(FEATURE_CHANNELS), width))  # residual channels that receive the features
    attn = _as(Qwen2_5_VLDecoderLayer, text.layers[0]).self_attn
    with torch.no_grad():
        # Unit-scale token embeddings (after the norm they are unit-scale anyway), empty in the reserved channels.
        embed = text.embed_tokens.weight
        embed.normal_(0.0, 1.0, generator=gen)
        embed[:, [0, *routed]] = 0.0
        _route_image(attn, width, routed)
        theta = (text.config.rope_parameters or {}).get("rope_theta")
        assert theta is not None  # smoke_config sets it
        _previous_token_heads(attn, width, routed, theta, gen)


def _route_image(attn: Qwen2_5_VLAttention, width: int, routed: list[int]) -> None:
    """Head 0 (kv head 0): every query matches image tokens by channel 0 and copies their features."""
    hd = HEAD_DIM
    # q and k use the lowest rotary frequency (pair hd/2 - 1): its rotation over a few hundred positions is ~1e-3.
    pair = hd // 2 - 1
    scale = math.sqrt(ROUTE_LOGIT * math.sqrt(hd) / math.sqrt(width))  # normalised channel 0 of an image is ~sqrt(W)
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
        proj.weight[:hd] = 0.0
        proj.bias[:hd] = 0.0
    attn.k_proj.weight[pair, 0] = scale
    attn.q_proj.bias[pair] = scale
    for j in range(len(routed)):
        attn.v_proj.weight[j, TOKEN_FEATURES.start + j] = FEATURE_GAIN
    attn.o_proj.weight[:, :hd] = 0.0
    for j, channel in enumerate(routed):
        attn.o_proj.weight[channel, j] = 1.0
    attn.o_proj.weight[routed, hd:] = 0.0


def _previous_token_heads(
    attn: Qwen2_5_VLAttention, width: int, routed: list[int], theta: float, gen: torch.Generator
) -> None:
    """Heads 2 and 3 (kv head 1) attend to the tokens 1 and 2 back and write a random projection of them."""
    hd = HEAD_DIM
    query_one, key = _rotary_offset_biases(theta, hd, 1)
    query_two, _ = _rotary_offset_biases(theta, hd, 2)
    attn.k_proj.weight[hd : 2 * hd] = 0.0
    attn.k_proj.bias[hd : 2 * hd] = key
    for head, query in ((2, query_one), (3, query_two)):
        attn.q_proj.weight[head * hd : (head + 1) * hd] = 0.0
        attn.q_proj.bias[head * hd : (head + 1) * hd] = query
    attn.v_proj.weight[hd : 2 * hd] = torch.randn(hd, width, generator=gen) / math.sqrt(width)
    attn.v_proj.bias[hd : 2 * hd] = 0.0
    free = [c for c in range(width) if c != 0 and c not in routed]
    out = torch.zeros(width, 2 * hd)
    out[free] = torch.randn(len(free), 2 * hd, generator=gen) / math.sqrt(hd)
    attn.o_proj.weight[:, 2 * hd :] = out


def _rotary_offset_biases(theta: float, hd: int, offset: int, pairs: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-rotary q and k biases whose score sum_p cos((distance - offset) f_p) peaks at `distance == offset`.

    Uses the `pairs` fastest rotary frequencies; text tokens have equal temporal/height/width positions, so M-RoPE
    acts as plain RoPE on them.
    """
    half = hd // 2
    freq = theta ** (-2 * np.arange(half) / hd)
    query, key = torch.zeros(hd), torch.zeros(hd)
    for p in range(pairs):
        key[p] = PREV_SCALE
        query[p] = PREV_SCALE * math.cos(offset * freq[p])
        query[p + half] = -PREV_SCALE * math.sin(offset * freq[p])
    return query, key
