"""The "base" smoke start: the taught architecture that writes the answer format and has opinions, but not on quality.

`build_base_checkpoint(path)` writes the taught model's hand-set perception and routing (`design.design_model`, the
merger standardised on procedural images) and teaches it only to answer the VisualQuality-R1 prompt with
`<answer>X.YZ</answer><|im_end|>`. The numbers follow the image, but not its quality: each image's answers are
centred on 3 + 0.6 z, where z reads the image features along a random direction from which everything that
predicts quality has been removed (z is uncorrelated with the quality label on the images it is taught on), and
spread by N(0, 1). Only the token embeddings, the final norm and the head are taught; the decoder layer keeps its
untaught weights. It is the miniature of an instruct model before RL2R: its generated answers parse, its digits
carry almost all of the probability after `<answer>`, its numbers differ from image to image, and its SRCC is near
0; training (train/recipes/base_cpu.yaml, benchmarks/bench_learning.py) must teach it which images are better.

Why opinions, and why the decoder layer is left alone (8-minute runs of the CPU recipe, held-out SRCC on photos
never trained on; benchmarks/README.md has the table): taught one answer distribution for every image, the network
silences the path from the image to the answer (scores varied by 0.002 across images) and RL2R has almost no
gradient to follow (0.31 after 20 minutes). With quality-blind opinions the path stays alive (0.64-0.67); with the
decoder layer untouched as well, every image feature still reaches the answer position as in the untaught model
(0.71, and 0.53 after 1.5 minutes where the others had 0.33-0.40).

Built like the taught model (`taught.build_taught_checkpoint`'s stages, other targets and fewer steps: about
15 s on one CPU thread); byte-identical rebuilds on the same torch version.
"""

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vq_reward.smoke.design import TOKEN_FEATURES, design_model
from vq_reward.smoke.procedural import training_images
from vq_reward.smoke.taught import Recipe, image_embeddings, single_thread, teach
from vq_reward.smoke.tiny import build_tokenizer, smoke_processor


BASE_RECIPE = Recipe(bases=200, variants=4, steps=300, answer_sigma=1.0)
ANSWER_CENTRE = 3.0
OPINION_SPREAD = 0.6  # standard deviation of the answer centres across images


def build_base_checkpoint(
    path: str | os.PathLike, recipe: Recipe = BASE_RECIPE, log: Callable[[str], None] | None = None
) -> Path:
    """Build the base smoke checkpoint at `path` (answer format and quality-blind opinions taught); returns `path`.

    Args:
        path: output folder (created); gets config, safetensors weights, tokenizer and processor files.
        recipe: images and optimiser settings; `answer_sigma` is the spread of the answers around each centre.
        log: called with one line per stage (e.g. `print`); silent when `None`.
    """
    say = log or (lambda _message: None)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    with single_thread(), torch.random.fork_rng(devices=[]):
        tokenizer = build_tokenizer()
        processor = smoke_processor(tokenizer)
        model = design_model(tokenizer, recipe.seed)
        images, quality = training_images(recipe.bases, recipe.variants, recipe.seed)
        say(f"generated {len(images)} images")
        embeds = image_embeddings(model, processor, images)
        # Every token of an image carries the same standardised features: the first one stands for the image.
        features = embeds[:, 0, TOKEN_FEATURES].double().numpy()
        centres = ANSWER_CENTRE + OPINION_SPREAD * quality_blind_opinions(features, quality, recipe.seed)
        # The decoder layer keeps its untaught weights, so every image feature still reaches the answer position;
        # only the embeddings, the final norm and the head learn the format and the opinions.
        model.model.language_model.layers.requires_grad_(False)
        teach(model, processor, embeds, centres.round(2), recipe, say)  # rounded: one answer distribution per 0.01
        model.eval()
    processor.save_pretrained(out)
    model.save_pretrained(out)
    say(f"saved to {out}")
    return out


def quality_blind_opinions(features: np.ndarray, quality: np.ndarray, seed: int) -> np.ndarray:
    """One number per image that reads its features along a random direction, uncorrelated with `quality`.

    The least-squares prediction of quality from the features is projected out of the random reading. What is left
    lies in the features' span and is orthogonal to that prediction, hence to the quality itself (its residual is
    orthogonal to the span). Standardised: mean 0, standard deviation 1.
    """
    f = features - features.mean(0)
    q = quality - quality.mean()
    predicted = f @ np.linalg.lstsq(f, q, rcond=None)[0]
    reading = f @ np.random.default_rng(seed + 12345).standard_normal(f.shape[1])
    blind = reading - (reading @ predicted) / (predicted @ predicted) * predicted
    return (blind - blind.mean()) / blind.std()
