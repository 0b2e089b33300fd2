"""Worker for tests/test_train_distributed.py, one per rank under torchrun: trains with the global-scope reward
and writes what this rank saw as rank{N}.json. Usage: torchrun --nproc_per_node 2 THIS OUT_DIR [entry-point args]"""

import json
import sys
from pathlib import Path

import torch

from vq_reward.train.grpo import main


def run(out: Path, argv: list[str]) -> None:
    trainer = main(argv)
    reward = trainer.reward_funcs[0]
    record = {
        "rank": torch.distributed.get_rank(),
        "world": torch.distributed.get_world_size(),
        "last_call": reward.last_call,
        "log_history": trainer.state.log_history,
        "checksum": sum(float(p.detach().double().sum()) for p in trainer.model.parameters()),
    }
    (out / f"rank{record['rank']}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    run(Path(sys.argv[1]), sys.argv[2:])
