"""A DDPO / Flow-GRPO style reward served from other GPUs: `VisualQualityScorer.from_server(url).as_reward()`.

The training loop keeps its GPUs for the policy; the reward model runs behind vLLM's OpenAI-compatible server
(`vq-reward serve MODEL`) on other GPUs or another node, and the loop calls it like any reward function,
`scores, info = reward_fn(images, prompts, metadata)`, from a worker thread so the next batch is sampled while
this one is scored (as DDPO and Flow-GRPO do). Several servers (one per GPU or node) spread the images:
`from_server([url1, url2])`. The reward pickles with the URLs only, so it can be sent to other processes.

Here the policy is a toy: a learnable mean image plus Gaussian noise (56x56, values in [-1, 1] as a VAE decode
gives), trained with REINFORCE on batch-normalised rewards. It shows the wiring; nothing meaningful is learned.

Offline smoke run (CPU; the tiny random scorer served by vLLM from its own environment):

    ENV="$(.ci/vllm-env.sh | tail -n1)"
    vq-reward serve tiny --port 8000 --python "$ENV/bin/python" &     # prints the URL once it answers
    python examples/remote_reward.py --server http://127.0.0.1:8000 --steps 2

With real models: `vq-reward serve TianheWu/VisualQuality-R1-7B --host 0.0.0.0` on the reward GPUs, and in
Flow-GRPO register `VisualQualityScorer.from_server("http://reward-node:8000").as_reward(input_range=(-1, 1))`
in `multi_score`'s scorer dict (DDPO: pass it as `reward_function`).
"""

import argparse
from concurrent.futures import ThreadPoolExecutor

import torch

from vq_reward import VisualQualityScorer


def sample(
    mean: torch.Tensor, std: float, batch: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch from the Gaussian policy: its images (clamped to [-1, 1]) and the sampled actions behind them."""
    actions = mean.detach() + std * torch.randn((batch, *mean.shape), generator=generator)
    return actions.clamp(-1, 1), actions


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", action="append", required=True, help="URL of a vq-reward serve (repeatable)")
    parser.add_argument("--steps", type=int, default=20, help="policy updates")
    parser.add_argument("--batch-size", type=int, default=4, help="images per update")
    parser.add_argument("--size", type=int, default=56, help="image side (56 = the tiny scorer's minimum budget)")
    parser.add_argument("--std", type=float, default=0.3, help="policy noise")
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    scorer = VisualQualityScorer.from_server(args.server, readout="first-digit")  # 1 request per image
    reward_fn = scorer.as_reward(input_range=(-1, 1))
    generator = torch.Generator().manual_seed(args.seed)
    mean = torch.zeros(3, args.size, args.size, requires_grad=True)
    optimizer = torch.optim.SGD([mean], lr=args.learning_rate)
    prompts = ["an unconditional sample"] * args.batch_size  # the scorer is no-reference: prompts are ignored
    history: dict[str, list[float]] = {"reward": [], "loss": []}

    with ThreadPoolExecutor(max_workers=1) as executor:
        images, actions = sample(mean, args.std, args.batch_size, generator)
        pending = executor.submit(reward_fn, images, prompts, [{}] * args.batch_size)
        for step in range(args.steps):
            scores, _info = pending.result()
            scored = actions
            if step + 1 < args.steps:  # sample the next batch while the server scores this one
                images, actions = sample(mean, args.std, args.batch_size, generator)
                pending = executor.submit(reward_fn, images, prompts, [{}] * args.batch_size)
            rewards = torch.as_tensor(scores)
            advantages = (rewards - rewards.mean()) / (rewards.std() + 1e-6)
            # log N(action; mean, std) up to a constant, per image (pixel mean, DDPO's convention).
            log_prob = -((scored - mean) ** 2).mean(dim=(1, 2, 3)) / (2 * args.std**2)
            loss = -(advantages * log_prob).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            history["reward"].append(float(scores.mean()))
            history["loss"].append(loss.item())
            print(f"step {step}: mean reward {scores.mean():.4f}  loss {loss.item():+.5f}")
    return history


if __name__ == "__main__":
    main()
