"""The "base" smoke start: the taught architecture that writes the answer format but knows nothing of quality.

`build_base_checkpoint(path)` writes the taught model's hand-set perception and routing (`design.design_model`, the
merger standardised on procedural images) and teaches the language model only to answer the VisualQuality-R1
prompt with `<answer>X.YZ</answer><|im_end|>`. The target numbers are drawn independently of the image: every
image gets the same answer distribution, N(3, 1) rounded to 0.01 and clipped into [1, 5], so the model learns the
format and a wide spread of numbers, and nothing that ranks images. It is the miniature of an instruct model
before RL2R: its generated answers parse and its digits carry almost all of the probability after `<answer>`, but
its held-out SRCC is near 0, and training (train/recipes/base_cpu.yaml, benchmarks/bench_learning.py) must teach
it which images are better.

Built like the taught model (`taught.build_taught_checkpoint`'s stages, with image-independent targets and fewer
steps: about 30 s on one CPU thread); byte-identical rebuilds on the same torch version.
"""

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vq_reward.smoke.design import design_model
from vq_reward.smoke.procedural import training_images
from vq_reward.smoke.taught import Recipe, _image_embeddings, _single_thread, _teach
from vq_reward.smoke.tiny import build_tokenizer, smoke_processor


BASE_RECIPE = Recipe(bases=200, variants=4, steps=300, answer_sigma=1.0)
ANSWER_CENTRE = 3.0  # every image's answer distribution is centred here, whatever the image


def build_base_checkpoint(
    path: str | os.PathLike, recipe: Recipe = BASE_RECIPE, log: Callable[[str], None] | None = None
) -> Path:
    """Build the base smoke checkpoint at `path` (answer format taught, quality not); returns `path`.

    Args:
        path: output folder (created); gets config, safetensors weights, tokenizer and processor files.
        recipe: images and optimiser settings; `answer_sigma` is the spread of the image-independent answers.
        log: called with one line per stage (e.g. `print`); silent when `None`.
    """
    say = log or (lambda _message: None)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    with _single_thread(), torch.random.fork_rng(devices=[]):
        tokenizer = build_tokenizer()
        processor = smoke_processor(tokenizer)
        model = design_model(tokenizer, recipe.seed)
        images, _quality = training_images(recipe.bases, recipe.variants, recipe.seed)
        say(f"generated {len(images)} images (for the merger's statistics and as prompts)")
        embeds = _image_embeddings(model, processor, images)
        # The one change from the taught model: the targets ignore the image.
        _teach(model, processor, embeds, np.full(len(images), ANSWER_CENTRE), recipe, say)
        model.eval()
    processor.save_pretrained(out)
    model.save_pretrained(out)
    say(f"saved to {out}")
    return out
