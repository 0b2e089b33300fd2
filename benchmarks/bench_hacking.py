"""Reward hacking in a loop, on CPU: is the quality reward gamed, and do the defences help?

Two loops on degraded 112-pixel crops of the sample photos (noise, blur, JPEG and darkening at severity 2), the
reward being the taught smoke model (a demo quality model, `from_pretrained("taught")`):

1. **ReFL / DRaFT**: a small restoration network (three 3x3 convolutions added to its input, the identity at the
   start) is trained on `-reward(output)` through `as_differentiable_reward`, as is, with multi-view scoring
   (`views=4`), with a fidelity term (`FIDELITY_WEIGHT * L1(output, degraded input)`, no ground truth needed) and
   with both; plus a supervised run (L1 to the clean crop) as the reference of what true restoration looks like.
2. **Group-relative policy gradient** (GRPO-style): a small stochastic enhancer picks four global edits (sharpen or
   soften, saturation, contrast, brightness) from a Gaussian whose mean a tiny network computes from the input; G
   edits of each input are scored with `as_reward(mode="score")` or `as_reward(mode="win-rate")` (one group per
   input); the advantages are the rewards minus their group's mean, divided by the group's std (GRPO) or not
   (Dr. GRPO, TRL's `scale_rewards="none"`), and the policy moves along advantage-weighted log-likelihoods.

True quality is PSNR and SSIM against the clean crop, which the reward never sees. Per step each run records the
reward, PSNR, SSIM and the `HackingMonitor`'s statistics of its training batch; every `--eval-every` steps the
plain single-view score, PSNR and SSIM on held-out crops (photos never trained on). The output folder gets
`summary.json` (every figure), `curves.png` and `monitor.png`.

    OMP_NUM_THREADS=1 python benchmarks/bench_hacking.py --output runs/bench_hacking     # the full run, minutes
    python benchmarks/bench_hacking.py --quick --output /tmp/bench_hacking                # about a minute (tests)
"""

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import common
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vq_reward import VisualQualityScorer
from vq_reward.distortions import DISTORTIONS, distort
from vq_reward.rewards.monitor import STATISTICS, HackingMonitor


FIDELITY_WEIGHT = 10.0  # an L1 of 0.01 (2.55 grey levels on average) costs as much as 0.1 score points
SEVERITY = 2
POLICY_STD = 0.3  # exploration noise of the enhancer's edits
GRPO_EPSILON = 1e-4  # added to the group std, as TRL's GRPO does


@dataclass(frozen=True)
class Data:
    """Degraded crops and their clean originals, float NCHW in [0, 1]."""

    degraded: torch.Tensor
    clean: torch.Tensor


# -- data and true quality -----------------------------------------------------------------------------------------


def make_data(crops_per_photo: int, held_out: bool, seed: int) -> Data:
    """Crops of the training photos (or of the held-out ones), each degraded by one kind in turn."""
    rng = np.random.default_rng(seed)
    pairs = []
    for name, photo in common.sample_photos():
        if (name in common.HELD_OUT_PHOTOS) != held_out:
            continue
        for index, crop in enumerate(common.make_crops(photo, "all", crops_per_photo, rng)):
            kind = DISTORTIONS[(index + len(pairs)) % len(DISTORTIONS)]
            pairs.append((distort(crop, kind, SEVERITY), crop))
    degraded, clean = (common.as_tensor([pair[i] for pair in pairs]) for i in (0, 1))
    return Data(degraded, clean)


def psnr(images: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Per image, in dB, for pixels in [0, 1]."""
    error = (images - clean).square().mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return 10 * torch.log10(1 / error)


def ssim(images: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Per image: the mean SSIM over the channels (11-pixel Gaussian window, sigma 1.5, valid region only)."""
    axis = torch.arange(11, dtype=torch.float64) - 5
    line = torch.exp(-axis.square() / (2 * 1.5**2))
    window = (line[:, None] * line[None, :] / line.sum() ** 2).to(images)[None, None].repeat(3, 1, 1, 1)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, groups=3)

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(images), blur(clean)
    var_x, var_y = blur(images * images) - mu_x**2, blur(clean * clean) - mu_y**2
    covariance = blur(images * clean) - mu_x * mu_y
    index = ((2 * mu_x * mu_y + c1) * (2 * covariance + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return index.mean(dim=(1, 2, 3))


# -- the two policies ----------------------------------------------------------------------------------------------


class Restorer(nn.Module):
    """Output = input + three 3x3 convolutions of it, clamped to [0, 1]; the last one starts at zero (identity)."""

    def __init__(self, channels: int = 24) -> None:
        super().__init__()
        last = nn.Conv2d(channels, 3, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.body = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
            last,
        )  # fmt: skip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images + self.body(images)).clamp(0, 1)


EDITS = ("sharpen", "saturation", "contrast", "brightness")


class Enhancer(nn.Module):
    """A Gaussian policy over global edits: the mean from pooled features of the input (zero at the start, the
    identity edit), a fixed std."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 5, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 5, stride=2), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(16, len(EDITS))
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def apply_edits(images: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Unsharp mask (negative: soften), saturation and contrast (log gains), brightness shift; clamped to [0, 1]."""
    sharpen, saturation, contrast, brightness = (actions[:, i, None, None, None] for i in range(len(EDITS)))
    line = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
    kernel = (line[:, None] * line[None, :]).to(images)[None, None].repeat(3, 1, 1, 1)
    blurred = F.conv2d(F.pad(images, (2, 2, 2, 2), mode="reflect"), kernel, groups=3)
    edited = images + 2 * sharpen * (images - blurred)
    grey = (0.299 * edited[:, :1] + 0.587 * edited[:, 1:2] + 0.114 * edited[:, 2:]).expand_as(edited)
    edited = grey + saturation.exp() * (edited - grey)
    mean = edited.mean(dim=(1, 2, 3), keepdim=True)
    edited = mean + contrast.exp() * (edited - mean) + 0.2 * brightness
    return edited.clamp(0, 1)


# -- the loops -----------------------------------------------------------------------------------------------------


def evaluate(scorer: VisualQualityScorer, outputs: torch.Tensor, clean: torch.Tensor) -> dict[str, float]:
    """The plain single-view score, PSNR and SSIM of held-out outputs."""
    return {
        "reward": scorer.score(outputs).mean().item(),
        "psnr": psnr(outputs, clean).mean().item(),
        "ssim": ssim(outputs, clean).mean().item(),
    }


def step_record(step: int, reward: float, outputs: torch.Tensor, clean: torch.Tensor, logs: dict) -> dict:
    return {
        "step": step, "reward": reward, "psnr": psnr(outputs, clean).mean().item(),
        "ssim": ssim(outputs, clean).mean().item(), "warning": logs["monitor/warning"],
        **{name: logs[f"monitor/{name}"] for name in STATISTICS},
        **{f"{name}_drift": logs[f"monitor/{name}_drift"] for name in STATISTICS},
    }  # fmt: skip


def refl_run(scorer, config: dict, train: Data, held_out: Data, args) -> dict:
    """One ReFL run: returns its per-step records, held-out evaluations and monitor warnings."""
    torch.manual_seed(args.seed)
    network = Restorer()
    optimizer = torch.optim.Adam(network.parameters(), lr=args.learning_rate)
    reward_fn = scorer.as_differentiable_reward(views=config.get("views", 1))
    monitor = HackingMonitor(baseline_steps=args.baseline_steps)
    order = torch.Generator().manual_seed(args.seed)
    steps, evaluations = [], []
    for step in range(args.steps):
        if step % args.eval_every == 0:
            with torch.no_grad():
                evaluations.append({"step": step, **evaluate(scorer, network(held_out.degraded), held_out.clean)})
        chosen = torch.randperm(len(train.degraded), generator=order)[: args.batch_size]
        degraded, clean = train.degraded[chosen], train.clean[chosen]
        outputs = network(degraded)
        rewards = reward_fn(outputs)
        if config.get("supervised"):
            loss = F.l1_loss(outputs, clean)
        else:
            loss = -rewards.mean() + config.get("fidelity", 0.0) * F.l1_loss(outputs, degraded)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        logs = monitor.update(step, outputs.detach(), rewards.detach())
        steps.append(step_record(step, rewards.mean().item(), outputs.detach(), clean, logs))
    with torch.no_grad():
        evaluations.append({"step": args.steps, **evaluate(scorer, network(held_out.degraded), held_out.clean)})
    return {"steps": steps, "evaluations": evaluations, "warnings": [message for _, message in monitor.warnings]}


def grpo_run(scorer, mode: str, scale: bool, train: Data, held_out: Data, args) -> dict:
    """One group-relative policy-gradient run with `as_reward(mode=mode)`, advantages divided by the group std or
    not (`scale`)."""
    torch.manual_seed(args.seed)
    policy = Enhancer()
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.policy_learning_rate)
    reward_fn = scorer.as_reward(mode=mode)
    monitor = HackingMonitor(baseline_steps=args.baseline_steps)
    order = torch.Generator().manual_seed(args.seed)
    noise = torch.Generator().manual_seed(args.seed + 1)
    steps, evaluations = [], []
    for step in range(args.steps):
        if step % args.eval_every == 0:
            with torch.no_grad():
                edited = apply_edits(held_out.degraded, policy(held_out.degraded))
                evaluations.append({"step": step, **evaluate(scorer, edited, held_out.clean)})
        chosen = torch.randperm(len(train.degraded), generator=order)[: args.inputs]
        degraded = train.degraded[chosen].repeat_interleave(args.group_size, dim=0)
        clean = train.clean[chosen].repeat_interleave(args.group_size, dim=0)
        mean = policy(degraded)
        actions = (mean + POLICY_STD * torch.randn(mean.shape, generator=noise)).detach()
        outputs = apply_edits(degraded, actions)
        groups = [f"input {int(i)}" for i in chosen.repeat_interleave(args.group_size)]
        rewards, info = reward_fn(outputs, groups, [{}] * len(groups))
        scores = info["scores"] if mode == "win-rate" else rewards
        advantages = torch.from_numpy(group_advantages(rewards, args.group_size, scale))
        log_likelihood = torch.distributions.Normal(mean, POLICY_STD).log_prob(actions).sum(dim=1)
        loss = -(advantages * log_likelihood).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        logs = monitor.update(step, outputs, scores)  # the raw score: a win rate's mean is 0.5 by construction
        record = step_record(step, float(np.mean(scores)), outputs, clean, logs)
        record.update({f"action_{name}": mean[:, i].mean().item() for i, name in enumerate(EDITS)})
        steps.append(record)
    with torch.no_grad():
        edited = apply_edits(held_out.degraded, policy(held_out.degraded))
        evaluations.append({"step": args.steps, **evaluate(scorer, edited, held_out.clean)})
    return {"steps": steps, "evaluations": evaluations, "warnings": [message for _, message in monitor.warnings]}


def group_advantages(rewards: np.ndarray, group_size: int, scale: bool = True) -> np.ndarray:
    """Each reward minus its group's mean; with `scale` (GRPO) also over the group's std (+ epsilon)."""
    groups = rewards.reshape(-1, group_size).astype(np.float64)
    centred = groups - groups.mean(axis=1, keepdims=True)
    if scale:
        centred = centred / (groups.std(axis=1, ddof=1, keepdims=True) + GRPO_EPSILON)
    return centred.reshape(-1).astype(np.float32)


# -- reporting -----------------------------------------------------------------------------------------------------


def table_row(name: str, run: dict) -> list:
    first, last = run["evaluations"][0], run["evaluations"][-1]
    warned = sorted({message.split(" while ")[1].split(" rose")[0] for message in run["warnings"]})
    first_step = run["warnings"] and run["warnings"][0].split(":")[0]
    return [
        name, f"{last['reward'] - first['reward']:+.3f}", f"{last['psnr'] - first['psnr']:+.2f}",
        f"{last['ssim'] - first['ssim']:+.3f}",
        f"{', '.join(warned)} (from {first_step})" if warned else "none",
    ]  # fmt: skip


def statistics_row(name: str, run: dict, last: int = 5) -> list:
    """The monitor's statistics of the training batches, mean over the last `last` steps."""
    tail = run["steps"][-last:]
    return [name, *(f"{np.mean([point[key] for point in tail]):.3f}" for key in STATISTICS)]


def rounded(value: object) -> object:
    """Every float of a JSON-able value to 5 significant digits (the figures are not that precise anyway)."""
    if isinstance(value, float):
        return float(f"{value:.5g}")
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item) for item in value]
    return value


def plot(summary: dict, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loops = [("ReFL", summary["refl"]), ("group-relative PG", summary["grpo"])]
    figure, axes = plt.subplots(2, 3, figsize=(13, 7))
    for row, (title, runs) in enumerate(loops):
        for name, run in runs.items():
            evaluations = run["evaluations"]
            x = [point["step"] for point in evaluations]
            for column, key in enumerate(("reward", "psnr", "ssim")):
                axes[row, column].plot(x, [point[key] for point in evaluations], marker="o", markersize=3, label=name)
        for column, label in enumerate(("held-out score (taught, 1 view)", "held-out PSNR (dB)", "held-out SSIM")):
            axes[row, column].set_title(f"{title}: {label}", fontsize=9)
            axes[row, column].set_xlabel("step")
        if runs:
            axes[row, 0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(folder / "curves.png", dpi=80)
    plt.close(figure)

    figure, axes = plt.subplots(1, len(STATISTICS), figsize=(16, 3.6))
    for title, runs in loops:
        for name, run in runs.items():
            for axis, statistic in zip(axes, STATISTICS, strict=True):
                values = [point[f"{statistic}_drift"] for point in run["steps"]]
                axis.plot(values, linestyle="-" if title == "ReFL" else "--", label=f"{title}: {name}")
    for axis, statistic in zip(axes, STATISTICS, strict=True):
        axis.axhline(1.0, color="grey", linewidth=0.6)
        axis.set_yscale("symlog", linthresh=2)  # linear near the threshold, logarithmic for runaway drifts
        axis.set_title(f"{statistic} drift (baseline stds)", fontsize=9)
        axis.set_xlabel("step")
    axes[0].legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(folder / "monitor.png", dpi=80)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="runs/bench_hacking")
    parser.add_argument("--model", default="taught", help="the reward model (a smoke name, folder or hub id)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=8, help="ReFL crops per step")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="ReFL restorer (Adam)")
    parser.add_argument("--inputs", type=int, default=4, help="policy gradient: inputs per step")
    parser.add_argument("--group-size", type=int, default=8, help="policy gradient: edits per input (G)")
    parser.add_argument("--policy-learning-rate", type=float, default=0.02)
    parser.add_argument("--views", type=int, default=4, help="views of the multi-view defence")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--baseline-steps", type=int, default=5, help="the monitor's baseline")
    parser.add_argument("--crops-per-photo", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loops", choices=("both", "refl", "grpo"), default="both", help="which loops to run")
    parser.add_argument("--quick", action="store_true", help="a few steps on a few crops (tests)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.batch_size, args.inputs, args.group_size = 6, 4, 2, 4
        args.eval_every, args.baseline_steps, args.crops_per_photo, args.views = 3, 2, 2, 2
    torch.set_num_threads(1)
    started = time.perf_counter()
    folder = Path(args.output)
    folder.mkdir(parents=True, exist_ok=True)
    scorer = VisualQualityScorer.from_pretrained(args.model)
    train = make_data(args.crops_per_photo, held_out=False, seed=args.seed)
    held_out = make_data(max(2, args.crops_per_photo // 2), held_out=True, seed=args.seed + 1)
    configs = {
        "reward": {},
        f"reward, views={args.views}": {"views": args.views},
        "reward + fidelity": {"fidelity": FIDELITY_WEIGHT},
        f"reward, views={args.views} + fidelity": {"views": args.views, "fidelity": FIDELITY_WEIGHT},
        "supervised L1 (reference)": {"supervised": True},
    }
    summary: dict = {"settings": vars(args), "fidelity_weight": FIDELITY_WEIGHT, "refl": {}, "grpo": {}}
    for name, config in configs.items() if args.loops != "grpo" else ():
        began = time.perf_counter()
        summary["refl"][name] = refl_run(scorer, config, train, held_out, args)
        print(f"ReFL {name}: {time.perf_counter() - began:.0f} s", flush=True)
    for scale in (True, False) if args.loops != "refl" else ():
        for mode in ("score", "win-rate"):
            began, name = time.perf_counter(), f"mode={mode}, {'group std' if scale else 'no std'}"
            summary["grpo"][name] = grpo_run(scorer, mode, scale, train, held_out, args)
            print(f"policy gradient {name}: {time.perf_counter() - began:.0f} s", flush=True)
    summary["minutes"] = (time.perf_counter() - started) / 60
    header = ["run", "reward gain", "PSNR change (dB)", "SSIM change", "monitor warnings"]
    rows = [table_row(f"ReFL {name}", run) for name, run in summary["refl"].items()]
    rows += [table_row(f"policy gradient {name}", run) for name, run in summary["grpo"].items()]
    summary["table"] = common.markdown_table(header, rows, align="lrrrl")
    first = next(iter({**summary["refl"], **summary["grpo"]}.values()))["steps"][: args.baseline_steps]
    baseline = ["inputs (first steps)", *(f"{np.mean([p[key] for p in first]):.3f}" for key in STATISTICS)]
    rows = [baseline, *(statistics_row(f"ReFL {name}", run) for name, run in summary["refl"].items())]
    rows += [statistics_row(f"policy gradient {name}", run) for name, run in summary["grpo"].items()]
    summary["statistics_table"] = common.markdown_table(["training batches", *STATISTICS], rows)
    (folder / "summary.json").write_text(json.dumps(rounded(summary)))
    plot(summary, folder)
    print(summary["table"])
    print(summary["statistics_table"])
    print(f"{summary['minutes']:.1f} min; {folder / 'summary.json'}, curves.png, monitor.png")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
