"""Train a small super-resolution network with a fidelity loss plus the differentiable quality reward.

What it does, per step: cut random high-resolution crops from the photos in examples/images, shrink them 2x
(bicubic, antialiased) as the low-resolution input, upscale them with a 3-layer convolutional network with a
pixel-shuffle head (on top of a bicubic upscale), and minimise `L1(sr, hr) - reward_weight * reward(sr)`, where
`reward = scorer.as_differentiable_reward()` takes the [0, 1] output directly. The L1 term keeps the output
faithful; the reward term pushes it towards what the quality model prefers.

Offline smoke run (tiny random scorer, so the reward term is noise; it shows the wiring):

    python examples/super_resolution.py --steps 3

With the real model: `--model TianheWu/VisualQuality-R1-7B --device cuda`, crops of 224-448 pixels, your SR network
in place of `TinySR`, and a reward weight tuned so the L1 term still dominates (quality rewards alone can be
gamed: watch for hallucinated texture).
"""

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vq_reward import VisualQualityScorer
from vq_reward.hub import resolve_model
from vq_reward.images import load_image


class TinySR(nn.Module):
    """2x super-resolution: bicubic upscale plus a learned residual (conv - ReLU - conv - ReLU - conv - shuffle)."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 3 * 4, 3, padding=1),
            nn.PixelShuffle(2),
        )

    def forward(self, low: torch.Tensor) -> torch.Tensor:
        upscaled = F.interpolate(low, scale_factor=2, mode="bicubic", align_corners=False)
        return (upscaled + self.body(low)).clamp(0, 1)


def random_crops(photos: list[torch.Tensor], count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    crops = []
    for _ in range(count):
        photo = photos[int(torch.randint(len(photos), (1,), generator=generator))]
        top = int(torch.randint(photo.shape[1] - size + 1, (1,), generator=generator))
        left = int(torch.randint(photo.shape[2] - size + 1, (1,), generator=generator))
        crops.append(photo[:, top : top + size, left : left + size])
    return torch.stack(crops)


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="gradient steps")
    parser.add_argument("--model", default="tiny", help="scorer: hub id or folder; 'tiny' = offline random model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", default=str(Path(__file__).parent / "images"))
    parser.add_argument("--crop", type=int, default=112, help="high-resolution crop side (multiple of 28)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--reward-weight", type=float, default=0.01)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    paths = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    photos = [torch.from_numpy(np.array(load_image(path))).permute(2, 0, 1).float() / 255 for path in paths]
    scorer = VisualQualityScorer.from_pretrained(resolve_model(args.model), device=args.device)
    reward_fn = scorer.as_differentiable_reward()  # [0, 1] NCHW in, expected score with gradients out
    network = TinySR().to(args.device)
    optimizer = torch.optim.Adam(network.parameters(), lr=args.learning_rate)
    initial = [parameter.detach().clone() for parameter in network.parameters()]
    history: dict[str, list[float]] = {"l1": [], "reward": []}

    for step in range(args.steps):
        high = random_crops(photos, args.batch_size, args.crop, generator).to(args.device)
        low = F.interpolate(high, scale_factor=0.5, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        sr = network(low)
        l1 = F.l1_loss(sr, high)
        reward = reward_fn(sr).mean()
        loss = l1 - args.reward_weight * reward
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history["l1"].append(l1.item())
        history["reward"].append(reward.item())
        print(f"step {step}: L1 {l1.item():.4f}  reward {reward.item():.4f}")
    # How far training moved the weights (L2 over all parameters).
    moved = sum((p.detach() - p0).pow(2).sum() for p, p0 in zip(network.parameters(), initial, strict=True))
    history["weight_change"] = [moved.sqrt().item()]
    print(f"weights moved by {history['weight_change'][0]:.3g} (L2)")
    return history


if __name__ == "__main__":
    main()
