"""TRL `GRPOTrainer` with the quality reward served from other GPUs: `from_server(url).as_trl_reward(...)`.

Like `trl_grpo.py` (a language model's completions are rendered to images and the images are scored), but the
reward model runs behind vLLM's OpenAI-compatible server (`vq-reward serve MODEL`) on GPUs of its own, so the
trainer's GPUs hold only the policy. Every training process connects to the same server(s); the reward pickles
with the URLs only. Several servers spread the images: `from_server([url1, url2])`.

`render` is a toy drawing program (each character paints one cell of an 8x8 grid); in a real setup it is a
text-to-image pipeline.

Offline smoke run (CPU; a tiny random policy built here, the tiny random scorer served by vLLM from its own
environment):

    ENV="$(.ci/vllm-env.sh | tail -n1)"
    vq-reward serve tiny --port 8000 --python "$ENV/bin/python" &     # prints the URL once it answers
    python examples/trl_grpo_remote.py --server http://127.0.0.1:8000 --steps 2

With real models: `vq-reward serve TianheWu/VisualQuality-R1-7B --host 0.0.0.0` on the reward node, then
`accelerate launch examples/trl_grpo_remote.py --server http://reward-node:8000 --policy Qwen/Qwen2.5-0.5B-Instruct`.
"""

import argparse
import copy
import tempfile

import numpy as np
import torch
from datasets import Dataset
from PIL import Image
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
from trl import GRPOConfig, GRPOTrainer

from vq_reward import VisualQualityScorer


def render(completions: list[str], **kwargs) -> list[Image.Image | None]:
    """Each completion paints an 8x8 colour grid (one cell per character), upscaled to 112x112; empty -> None."""
    images: list[Image.Image | None] = []
    for text in completions:
        codes = [ord(character) for character in text[:64]]
        if not codes:
            images.append(None)
            continue
        cells = np.full((64, 3), 128, dtype=np.uint8)
        for index, code in enumerate(codes):
            cells[index] = [(code * 37) % 256, (code * 91) % 256, (code * 53) % 256]
        images.append(Image.fromarray(cells.reshape(8, 8, 3)).resize((112, 112), Image.Resampling.NEAREST))
    return images


def tiny_policy(vocab_size: int) -> Qwen2ForCausalLM:
    """A random two-layer Qwen2 language model (about 0.2M parameters), built from a config: no download."""
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    return Qwen2ForCausalLM(config)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", action="append", required=True, help="URL of a vq-reward serve (repeatable)")
    parser.add_argument("--steps", type=int, default=50, help="GRPO optimizer steps")
    parser.add_argument("--policy", default=None, help="policy LM hub id or folder; default: a tiny random one")
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--max-completion-length", type=int, default=16)
    parser.add_argument("--output-dir", default=None, help="default: a temporary folder")
    args = parser.parse_args(argv)

    scorer = VisualQualityScorer.from_server(args.server)
    reward = scorer.as_trl_reward(image_key=None, image_fn=render)
    if args.policy is None:
        tokenizer = copy.deepcopy(scorer.processor.tokenizer)  # the tiny scorer's tokenizer serves the tiny policy
        policy = tiny_policy(len(tokenizer))
    else:
        tokenizer = AutoTokenizer.from_pretrained(args.policy)
        policy = AutoModelForCausalLM.from_pretrained(args.policy)
    tokenizer.padding_side = "left"  # TRL needs a left-padded processing class
    dataset = Dataset.from_dict({"prompt": [f"Describe picture {i}:" for i in range(16)]})

    on_cpu = not torch.cuda.is_available()
    config = GRPOConfig(
        output_dir=args.output_dir or tempfile.mkdtemp(prefix="trl_grpo_remote_"),
        max_steps=args.steps,
        per_device_train_batch_size=args.num_generations,  # one prompt x G completions per device and step
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        learning_rate=1e-4,
        use_cpu=on_cpu,
        bf16=not on_cpu,
        activation_checkpointing=False,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        seed=0,
    )
    trainer = GRPOTrainer(
        model=policy, reward_funcs=[reward], args=config, train_dataset=dataset, processing_class=tokenizer
    )
    result = trainer.train()
    key = "rewards/visual_quality/mean"  # TRL logs each reward function under its __name__
    rewards = [entry[key] for entry in trainer.state.log_history if key in entry]
    print(f"mean visual_quality reward per step: {[round(value, 4) for value in rewards]}")
    return {"train_loss": result.training_loss, "rewards": rewards}


if __name__ == "__main__":
    main()
