"""DRaFT-1: fine-tune a diffusion model by back-propagating the quality score through the last denoising step.

What it does, per step: run a DDIM sampler without gradients down to the last step, run the last step with
gradients, score the resulting images with `scorer.as_differentiable_reward(input_range=(-1, 1))` and take a
gradient step on `-reward.mean()`. The scorer is frozen; the gradient flows through its image preprocessing and
forward pass into the pixels, then into the UNet. Raise `--grad-steps` to back-propagate through more final steps
(DRaFT-K).

Offline smoke run (a tiny pixel-space UNet built from a config and the tiny random scorer; it shows the wiring):

    python examples/draft_differentiable.py --steps 2

With real models: a `StableDiffusionPipeline` with LoRA on its UNet; decode the last step's latents with
`pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample` (keep the VAE frozen but in the graph), and build
the reward with `VisualQualityScorer.from_pretrained("TianheWu/VisualQuality-R1-7B", device="cuda",
max_pixels=512 * 512).as_differentiable_reward(input_range=(-1, 1), gradient_checkpointing=True)`; score 1-2
images per step on an 80 GB GPU (see the memory notes in `DifferentiableQualityReward`).
"""

import argparse

import torch
from diffusers import DDIMScheduler, UNet2DModel

from vq_reward import VisualQualityScorer
from vq_reward.hub import resolve_model


def tiny_unet(size: int) -> UNet2DModel:
    """A small random pixel-space UNet (about 0.2M parameters), built from a config: no download."""
    return UNet2DModel(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )


def sample(unet, scheduler, noise: torch.Tensor, grad_steps: int) -> torch.Tensor:
    """Deterministic DDIM sampling; only the last `grad_steps` steps keep a graph (DRaFT-K truncation)."""
    timesteps = scheduler.timesteps.tolist()
    image = noise
    for index, timestep in enumerate(timesteps):
        with torch.set_grad_enabled(index >= len(timesteps) - grad_steps):
            image = scheduler.step(unet(image, timestep).sample, timestep, image).prev_sample
    return image


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="gradient steps")
    parser.add_argument("--model", default="tiny", help="scorer: hub id or folder; 'tiny' = offline random model")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--denoising-steps", type=int, default=4)
    parser.add_argument("--grad-steps", type=int, default=1, help="K of DRaFT-K: final steps with gradients")
    parser.add_argument("--size", type=int, default=56)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    scorer = VisualQualityScorer.from_pretrained(resolve_model(args.model))
    reward_fn = scorer.as_differentiable_reward(input_range=(-1, 1))
    unet = tiny_unet(args.size)
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(args.denoising_steps)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.learning_rate)
    initial = [parameter.detach().clone() for parameter in unet.parameters()]
    generator = torch.Generator().manual_seed(args.seed)
    history: dict[str, list[float]] = {"reward": []}

    for step in range(args.steps):
        noise = torch.randn(args.batch_size, 3, args.size, args.size, generator=generator)
        images = sample(unet, scheduler, noise, args.grad_steps)  # [-1, 1], graph through the last step(s)
        rewards = reward_fn(images)
        loss = -rewards.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history["reward"].append(rewards.mean().item())
        print(f"step {step}: mean reward {rewards.mean().item():.4f}")
    # How far training moved the weights (L2 over all parameters): > 0 shows the reward's gradient arrived.
    moved = sum((p.detach() - p0).pow(2).sum() for p, p0 in zip(unet.parameters(), initial, strict=True))
    history["weight_change"] = [moved.sqrt().item()]
    print(f"weights moved by {history['weight_change'][0]:.3g} (L2)")
    return history


if __name__ == "__main__":
    main()
