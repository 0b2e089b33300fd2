"""A tiny Qwen2.5-VL that has been taught to answer the VisualQuality-R1 prompt, built offline in about a minute.

`build_taught_checkpoint(path)` writes a real `Qwen2_5_VLForConditionalGeneration` checkpoint: 1.24M parameters,
5 MB on disk, the same tokenizer, chat template and image processor as the random smoke checkpoint. Given the
non-thinking prompt it writes `<answer>X.YZ</answer><|im_end|>`. The number follows the visible quality of the image
(noise, JPEG blocking, blur, darkening): cleaner means higher. The answers are also spread out: repeated sampling
gives different two-decimal numbers around the model's mean, because it was taught a distribution and not a single
number.

How it is made. Nothing is downloaded and no data file is read.

1. Perception is set by hand, not learned. The vision tower is initialised as a classical image-quality front end,
   and nowhere else are random weights replaced:
   - The patch embedding is a filter bank on each 14x14 patch. It has the mean colour, plus 6 random-sign
     projections per band of: Laplacians of luminance at 3 scales and of two chroma differences at 2 scales, and
     first differences at even and at odd offsets inside the patch. Patches start at multiples of 14, so JPEG's
     8-pixel block edges always fall on even offsets. Natural content has no such preference, so "even against
     odd" measures blocking at every patch phase.
   - Block 0's attention writes a large constant into one channel. That constant dominates the RMS of every
     later RMSNorm, which therefore acts as a fixed linear map and keeps feature magnitudes. Those norms are
     frozen.
   - Block 0's gated MLP turns each projection into its absolute value (silu(ax) + silu(-ax) ~ a|x|), which
     gives a per-patch amplitude for each band.
   - Block 1's full attention is uniform (q = k = 0), so every patch receives the image mean of its amplitudes
     and colour.
   - Block 1's MLP takes the log of those means with a least-squares sum of SiLUs.
   - The merger hands 14 standardised features (mean colour and 11 log band amplitudes) to every image token,
     together with a constant that marks image tokens. The statistics for standardising come from the training
     images.
2. The routing in the language model is also set by hand. The model has one decoder layer. Attention head 0's
   query bias matches only that constant, so every text position reads the image features. Heads 2 and 3 use
   rotary-phase biases that peak at distances 1 and 2, so they carry the previous and the second-previous
   token: the "." position knows the first digit, and the model can tell which digit of X.YZ comes next.
   Without this wiring, the quality information never reached the answer position in a small random model
   (an earlier experiment: held-out SRCC about 0.2).
3. The judgement is taught. The MLP, the head and all embeddings (routing included) are trained. Which feature
   values mean which score, and how to write it as X.YZ, is learned by teacher-forced cross-entropy on
   `<answer>X.YZ</answer><|im_end|>`:
   - Training images are procedural: 1/f colour fields, shapes, stripes and checkers, text-like marks and fine
     textures. Each image is degraded by `distortions.distort` at severity 0..5, and its label is
     `distortions.quality_label`.
   - The target number is label + N(0, 0.3), clipped to [1, 5] and rounded to 0.01. A fresh path X.YZ is
     sampled every time an image is seen. At each digit the loss uses the exact conditional distribution of
     that digit given the earlier ones (a soft target), which has much less variance than the sampled digit.
   - The vision tower is frozen, so its image tokens are computed once. The text prompt's keys and values do
     not depend on the image, so they are computed once per step. Only the 10 completion positions are run,
     a fast path that matches the full forward to float error. 700 AdamW steps of 32 then take about 30 s on
     one CPU thread.

Determinism: every random choice is seeded and the build runs on one thread, so two builds on the same torch version
give byte-identical weights.
"""

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb

from vq_reward import prompts
from vq_reward.smoke.design import FEATURE_CHANNELS, HEAD_DIM, design_model, standardise_merger
from vq_reward.smoke.procedural import IMAGE_SIDE, training_images
from vq_reward.smoke.tiny import build_tokenizer, smoke_processor


ANSWER_TEMPLATE = "<answer>{}</answer><|im_end|>"
DIGITS = tuple(str(d) for d in range(10))
_GRID = np.arange(100, 501)  # answers in hundredths: 1.00 .. 5.00


@dataclass(frozen=True)
class Recipe:
    """What `build_taught_checkpoint` trains with; the defaults take about a minute on one CPU thread."""

    bases: int = 400  # procedural images
    variants: int = 4  # degraded copies of each (random kind and severity 0..5)
    steps: int = 700
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup: float = 0.05
    answer_sigma: float = 0.3  # spread of the taught answers around the label
    seed: int = 0


def build_taught_checkpoint(
    path: str | os.PathLike, recipe: Recipe = Recipe(), log: Callable[[str], None] | None = None
) -> Path:
    """Build, teach and save the taught smoke checkpoint at `path`; returns `path`.

    Args:
        path: output folder (created); gets config, safetensors weights, tokenizer and processor files.
        recipe: data and optimiser settings (see `Recipe`).
        log: called with one line per stage (e.g. `print`); silent when `None`.

    Example (a shortened recipe; the default one is what `from_pretrained("taught")` builds and caches):
        >>> from vq_reward import VisualQualityScorer
        >>> path = build_taught_checkpoint(tmp_path / "taught", Recipe(bases=4, variants=1, steps=2))
        >>> VisualQualityScorer.from_pretrained(path).score("examples/images/chelsea.jpg").shape
        torch.Size([1])
    """
    say = log or (lambda _message: None)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    with single_thread(), torch.random.fork_rng(devices=[]):
        tokenizer = build_tokenizer()
        processor = smoke_processor(tokenizer)
        model = design_model(tokenizer, recipe.seed)
        images, labels = training_images(recipe.bases, recipe.variants, recipe.seed)
        say(f"generated {len(images)} training images")
        embeds = image_embeddings(model, processor, images)
        say("computed image tokens (the vision tower is fixed)")
        teach(model, processor, embeds, labels, recipe, say)
        model.eval()
    processor.save_pretrained(out)
    model.save_pretrained(out)
    say(f"saved to {out}")
    return out


def answer_distribution(label: float, sigma: float) -> np.ndarray:
    """P(answer = k / 100) for k in 100..500: label + N(0, sigma), rounded to 0.01, clipped into [1, 5]."""
    edges = (np.arange(100, 502) - 0.5) / 100
    cdf = np.array([0.5 * (1 + math.erf((e - label) / (sigma * math.sqrt(2)))) for e in edges])
    probs = np.diff(cdf)
    probs[0] += cdf[0]
    probs[-1] += 1 - cdf[-1]
    return probs / probs.sum()


def _digit_targets(probs: np.ndarray, rng: np.random.Generator) -> tuple[tuple[int, int, int], np.ndarray]:
    """A sampled answer X.YZ and, for each of its 3 digits, the distribution of that digit given the earlier ones."""
    k = int(rng.choice(_GRID, p=probs))
    digits = (k // 100, k // 10 % 10, k % 10)
    soft = np.zeros((3, 10))
    np.add.at(soft[0], _GRID // 100, probs)
    same_first = _GRID // 100 == digits[0]
    np.add.at(soft[1], _GRID[same_first] // 10 % 10, probs[same_first])
    same_two = _GRID // 10 == k // 10
    np.add.at(soft[2], _GRID[same_two] % 10, probs[same_two])
    return digits, soft / soft.sum(1, keepdims=True)


def image_embeddings(
    model: Qwen2_5_VLForConditionalGeneration, processor: Qwen2_5_VLProcessor, images: list[Image.Image]
) -> torch.Tensor:
    """(N, tokens, width) image tokens; the merger is standardised on the first 256 images first."""
    visual = model.model.visual

    def run(batch: list[Image.Image]):
        pixels = processor.image_processor(images=batch, return_tensors="pt")
        return visual(pixels["pixel_values"], grid_thw=pixels["image_grid_thw"])

    with torch.no_grad():
        hidden = run(images[:256]).last_hidden_state
        tokens = hidden.shape[0] // min(len(images), 256)
        # Every patch of an image holds the same pooled features, so the first patch of each image stands for it.
        standardise_merger(visual, hidden[::tokens, list(FEATURE_CHANNELS)].double())
        chunks = [run(images[i : i + 64]).pooler_output for i in range(0, len(images), 64)]
    embeds = torch.cat(chunks)
    return embeds.view(len(images), -1, embeds.shape[-1])


@dataclass(frozen=True)
class _Layout:
    """Token positions of prompt + completion (every training image has the same size, so one layout)."""

    input_ids: torch.Tensor  # (L,) with the answer 5.00
    position_ids: torch.Tensor  # (3, 1, L) M-RoPE positions
    image: slice  # image-token positions
    completion: int  # first completion position
    digit_positions: tuple[int, int, int]  # offsets of X, Y, Z inside the completion


def _layout(model: Qwen2_5_VLForConditionalGeneration, processor: Qwen2_5_VLProcessor) -> _Layout:
    prompt = processor.apply_chat_template(
        prompts.image_message(prompts.quality_prompt(thinking=False)), tokenize=False, add_generation_prompt=True
    )
    completion = ANSWER_TEMPLATE.format("5.00")
    image = Image.new("RGB", (IMAGE_SIDE, IMAGE_SIDE))
    batch = processor(text=[prompt + completion], images=[image], return_tensors="pt")
    ids = batch["input_ids"][0]
    n_completion = len(processor.tokenizer.encode(completion, add_special_tokens=False))
    start = len(ids) - n_completion
    tokens = processor.tokenizer.convert_ids_to_tokens(ids[start:].tolist())
    first, second, third = (i for i, t in enumerate(tokens) if t in ("5", "0"))  # the reference answer "5.00"
    image_positions = (ids == model.config.image_token_id).nonzero()[:, 0]
    with torch.no_grad():
        positions, _ = model.model.get_rope_index(
            batch["input_ids"], batch["mm_token_type_ids"], image_grid_thw=batch["image_grid_thw"]
        )
    return _Layout(
        input_ids=ids,
        position_ids=positions,
        image=slice(int(image_positions[0]), int(image_positions[-1]) + 1),
        completion=start,
        digit_positions=(first, second, third),
    )


def _completion_hidden(
    model: Qwen2_5_VLForConditionalGeneration, layout: _Layout, image_embeds: torch.Tensor, completion: torch.Tensor
) -> torch.Tensor:
    """Final hidden states at the positions that predict the completion tokens, for a batch.

    Equal to the full forward of the one-layer model at those positions (causal attention: later positions never
    matter), but the prompt's keys and values are computed once for the whole batch: they do not depend on the image.
    """
    text = model.model.language_model
    layer = text.layers[0]
    attn = layer.self_attn
    batch = image_embeds.shape[0]
    length = len(layout.input_ids)
    start = layout.completion
    first, last = layout.image.start, layout.image.stop
    cos, sin = text.rotary_emb(image_embeds, layout.position_ids)
    prompt_ids = torch.cat([layout.input_ids[:first], layout.input_ids[last:start]])
    prompt_pos = torch.cat([torch.arange(first), torch.arange(last, start)])
    prompt_embeds = text.embed_tokens(prompt_ids)[None]
    completion_embeds = text.embed_tokens(completion)

    def keys_values(x: torch.Tensor, where: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        normed = layer.input_layernorm(x)
        k = attn.k_proj(normed).view(*x.shape[:2], -1, HEAD_DIM).transpose(1, 2)
        v = attn.v_proj(normed).view(*x.shape[:2], -1, HEAD_DIM).transpose(1, 2)
        _, k = apply_rotary_pos_emb(k, k, cos[:, where], sin[:, where])
        return k, v

    k_prompt, v_prompt = keys_values(prompt_embeds, prompt_pos)
    k_image, v_image = keys_values(image_embeds, layout.image)
    k_answer, v_answer = keys_values(completion_embeds[:, :-1], slice(start, length - 1))

    def assemble(prompt_part: torch.Tensor, image_part: torch.Tensor, answer_part: torch.Tensor) -> torch.Tensor:
        shared = prompt_part.expand(batch, -1, -1, -1)
        whole = torch.cat([shared[:, :, :first], image_part, shared[:, :, first:], answer_part], dim=2)
        return whole.repeat_interleave(attn.num_key_value_groups, dim=1)

    keys = assemble(k_prompt, k_image, k_answer)
    values = assemble(v_prompt, v_image, v_answer)
    hidden = torch.cat([prompt_embeds[:, -1:].expand(batch, -1, -1), completion_embeds[:, :-1]], dim=1)
    queries = attn.q_proj(layer.input_layernorm(hidden)).view(batch, hidden.shape[1], -1, HEAD_DIM).transpose(1, 2)
    queries, _ = apply_rotary_pos_emb(queries, queries, cos[:, start - 1 : length - 1], sin[:, start - 1 : length - 1])
    mask = torch.ones(length - start, length - 1, dtype=torch.bool).tril(start - 1)
    mixed = torch.nn.functional.scaled_dot_product_attention(queries, keys, values, attn_mask=mask)
    hidden = hidden + attn.o_proj(mixed.transpose(1, 2).reshape(batch, hidden.shape[1], -1))
    hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return text.norm(hidden)


def teach(
    model: Qwen2_5_VLForConditionalGeneration,
    processor: Qwen2_5_VLProcessor,
    embeds: torch.Tensor,
    labels: np.ndarray,
    recipe: Recipe,
    say: Callable[[str], None],
) -> None:
    """Teach `<answer>X.YZ</answer><|im_end|>` after each image (`embeds`, from `image_embeddings`) for its label,
    by teacher-forced cross-entropy with soft targets at the digits; the vision tower and every language-model
    parameter that does not require grad stay as they are."""
    layout = _layout(model, processor)
    digit_ids = torch.tensor(processor.tokenizer.convert_tokens_to_ids(list(DIGITS)))
    distributions = {label: answer_distribution(label, recipe.answer_sigma) for label in np.unique(labels)}
    model.model.visual.requires_grad_(False)
    params = [p for p in model.model.language_model.parameters()] + list(model.lm_head.parameters())
    optimizer = torch.optim.AdamW(params, lr=recipe.learning_rate, betas=(0.9, 0.98), weight_decay=0.0)
    rng = np.random.default_rng(recipe.seed + 1)
    completion_ids = layout.input_ids[layout.completion :]
    hard = torch.ones(len(completion_ids), dtype=torch.bool)
    hard[list(layout.digit_positions)] = False
    model.train()
    for step, batch in enumerate(_batches(len(labels), recipe, rng)):
        targets = [_digit_targets(distributions[label], rng) for label in labels[batch]]
        completion = completion_ids.repeat(len(batch), 1)
        completion[:, list(layout.digit_positions)] = digit_ids[torch.tensor([d for d, _ in targets])]
        soft = torch.tensor(np.stack([s for _, s in targets]), dtype=torch.float32)
        for group in optimizer.param_groups:
            group["lr"] = recipe.learning_rate * _schedule(step, recipe)
        hidden = _completion_hidden(model, layout, embeds[batch], completion)
        logp = model.lm_head(hidden).float().log_softmax(-1)
        format_loss = -logp.gather(-1, completion[..., None])[..., 0][:, hard].sum(-1)
        digit_logp = logp[:, list(layout.digit_positions)][:, :, digit_ids]
        digit_loss = -(soft * digit_logp).sum(-1).sum(-1)
        loss = (format_loss + digit_loss).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % 100 == 0 or step == recipe.steps - 1:
            say(f"step {step}: loss {loss.item():.3f} (digits {digit_loss.mean().item():.3f})")


def _batches(n: int, recipe: Recipe, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """`recipe.steps` batches of indices, epoch by epoch in a fresh random order."""
    order, at = rng.permutation(n), 0
    for _ in range(recipe.steps):
        if at + recipe.batch_size > n:
            order, at = rng.permutation(n), 0
        yield order[at : at + recipe.batch_size]
        at += recipe.batch_size


def _schedule(step: int, recipe: Recipe) -> float:
    """Linear warm-up, then cosine decay to 0."""
    warm = max(1, int(recipe.warmup * recipe.steps))
    return min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * step / recipe.steps))


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One intra-op thread while building: the same float reduction order, so the same weights, on every machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
