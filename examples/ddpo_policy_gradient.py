"""DDPO / Flow-GRPO style policy gradient: sample denoising trajectories, score the images, push up the good ones.

What it does, per step: sample a batch of images with a stochastic DDIM sampler (eta=1) while recording each
transition's log-probability; score the final images with `scorer.as_reward(input_range=(-1, 1))` in a worker
thread (as DDPO and Flow-GRPO do, while the next batch could be sampled); turn scores into advantages
(batch-normalised); update the UNet with the PPO-clipped ratio of new to old log-probabilities of the same
transitions. At the end it samples with the stock `DDIMPipeline(output_type="pt")` and scores that with
`scorer.as_reward()` (NCHW in [0, 1], the diffusers default).

Offline smoke run (a tiny pixel-space UNet built from a config, and the tiny random scorer; nothing learns
anything meaningful, it shows the wiring):

    python examples/ddpo_policy_gradient.py --steps 2

With real models: load `StableDiffusionPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")`,
decode latents with `pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample` (range [-1, 1]), train LoRA
weights of `pipe.unet` with text conditioning, and build the reward with
`VisualQualityScorer.from_pretrained("TianheWu/VisualQuality-R1-7B", device="cuda").as_reward(input_range=(-1, 1))`
(call `scorer.offload()` around the policy update if the GPU is shared). In Flow-GRPO, register the same callable
in `multi_score`'s scorer dict.
"""

import argparse
from concurrent.futures import ThreadPoolExecutor

import torch
from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

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


def transition_std(scheduler: DDIMScheduler, timestep: int, eta: float) -> float:
    """Standard deviation of the DDIM step t -> t-1 (eq. 16 of the DDIM paper), 0 for the last step."""
    previous = timestep - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    alpha = scheduler.alphas_cumprod[timestep]
    alpha_prev = scheduler.alphas_cumprod[previous] if previous >= 0 else scheduler.final_alpha_cumprod
    variance = (1 - alpha_prev) / (1 - alpha) * (1 - alpha / alpha_prev)
    return eta * float(variance) ** 0.5


def step_mean(unet: UNet2DModel, scheduler: DDIMScheduler, sample: torch.Tensor, timestep: int) -> torch.Tensor:
    """Mean of the DDIM transition: the scheduler's step with zero noise."""
    noise_prediction = unet(sample, timestep).sample
    zeros = torch.zeros_like(sample)
    return scheduler.step(noise_prediction, timestep, sample, eta=1.0, variance_noise=zeros).prev_sample


def log_prob(mean: torch.Tensor, std: float, value: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian log-density of `value`, averaged over pixels (DDPO's convention, keeps the scale sane)."""
    return torch.distributions.Normal(mean, std).log_prob(value).mean(dim=(1, 2, 3))


@torch.no_grad()
def sample_trajectories(unet, scheduler, batch: int, size: int, generator: torch.Generator) -> dict:
    sample = torch.randn(batch, 3, size, size, generator=generator)
    steps = []
    for timestep in scheduler.timesteps.tolist():
        mean = step_mean(unet, scheduler, sample, timestep)
        std = transition_std(scheduler, timestep, eta=1.0)
        following = mean + std * torch.randn(mean.shape, generator=generator) if std > 0 else mean
        if std > 0:  # the last DDIM step is deterministic: nothing to learn from its log-probability
            steps.append((timestep, sample, following, std, log_prob(mean, std, following)))
        sample = following
    return {"images": sample.clamp(-1, 1), "steps": steps}


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="policy updates")
    parser.add_argument("--model", default="tiny", help="scorer: hub id or folder; 'tiny' = offline random model")
    parser.add_argument("--batch-size", type=int, default=4, help="images per update")
    parser.add_argument("--denoising-steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=56, help="image side (56 = the tiny scorer's minimum budget)")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--clip-range", type=float, default=1e-4, help="PPO clip; DDPO's default")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    scorer = VisualQualityScorer.from_pretrained(resolve_model(args.model))
    reward_fn = scorer.as_reward(input_range=(-1, 1))  # raw [-1, 1] samples, as a VAE decode gives
    unet = tiny_unet(args.size)
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(args.denoising_steps)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.learning_rate)
    initial = [parameter.detach().clone() for parameter in unet.parameters()]
    prompts = ["an unconditional sample"] * args.batch_size  # the scorer is no-reference: prompts are ignored
    history: dict[str, list[float]] = {"reward": [], "loss": []}

    with ThreadPoolExecutor(max_workers=2) as executor:
        for step in range(args.steps):
            rollout = sample_trajectories(unet, scheduler, args.batch_size, args.size, generator)
            pending = executor.submit(reward_fn, rollout["images"], prompts, [{}] * args.batch_size)
            scores, _info = pending.result()
            rewards = torch.as_tensor(scores)
            advantages = (rewards - rewards.mean()) / (rewards.std() + 1e-6)

            optimizer.zero_grad()
            loss_total = 0.0
            for timestep, sample, following, std, old_log_prob in rollout["steps"]:
                new_log_prob = log_prob(step_mean(unet, scheduler, sample, timestep), std, following)
                ratio = torch.exp(new_log_prob - old_log_prob)
                clipped = ratio.clamp(1 - args.clip_range, 1 + args.clip_range)
                loss = torch.maximum(-advantages * ratio, -advantages * clipped).mean() / len(rollout["steps"])
                loss.backward()
                loss_total += loss.item()
            optimizer.step()
            history["reward"].append(float(scores.mean()))
            history["loss"].append(loss_total)
            print(f"step {step}: mean reward {scores.mean():.4f}  loss {loss_total:+.5f}")

    # How far training moved the weights (L2 over all parameters): > 0 shows the reward's gradient arrived.
    moved = sum((p.detach() - p0).pow(2).sum() for p, p0 in zip(unet.parameters(), initial, strict=True))
    history["weight_change"] = [moved.sqrt().item()]
    print(f"weights moved by {history['weight_change'][0]:.3g} (L2)")
    pipe = DDIMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=args.batch_size, num_inference_steps=args.denoising_steps, output_type="pt").images
    final, _ = scorer.as_reward()(images, prompts, None)
    history["final_reward"] = final.tolist()
    print(f"after training, pipeline samples score {final.mean():.4f}")
    return history


if __name__ == "__main__":
    main()
