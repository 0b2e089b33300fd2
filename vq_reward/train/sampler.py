"""Dataset-homogeneous GRPO batches: every device's generation batch holds whole groups of images of one dataset.

TRL's dataloader gives each process a *generation batch* of `per_device_train_batch_size * steps_per_generation`
completions, dealt round-robin from the sampler's stream (process p gets batch p of every `num_processes`). The
official VisualQuality-R1 sampler fills each device's batch from one `dataset_name`, so images of datasets with
different MOS scales are never compared. This sampler keeps that property and TRL's order (each index repeated
`num_generations` times in a row, each round repeated `num_iterations * steps_per_generation` times):

    round r:  [device 0: k images of dataset A, each x G] [device 1: k images of dataset B, each x G] ...

For each device slot a dataset is drawn among those with at least k unused images left, uniformly (official) or in
proportion to what is left; a round that cannot fill every device ends the epoch, so devices never drift apart.
"""

import random
from collections.abc import Iterator, Sequence

from torch.utils.data import Sampler


def images_per_device(
    per_device_train_batch_size: int, steps_per_generation: int, num_generations: int, min_images: int = 2
) -> int:
    """Distinct images in one device's generation batch; refuses a layout that would split a group across devices.

    `min_images` is 2 for the local-scope rank reward (an image needs a partner on its own device); 1 otherwise.

    Example:
        >>> images_per_device(48, 1, 6)
        8
    """
    completions = per_device_train_batch_size * steps_per_generation
    if completions % num_generations:
        raise ValueError(
            f"each device generates per_device_train_batch_size x steps_per_generation = "
            f"{per_device_train_batch_size} x {steps_per_generation} = {completions} completions, which is not a "
            f"multiple of num_generations={num_generations}, so the rollouts of one image would be split across "
            f"devices and ranked apart. Use num_generations x (images per device), e.g. "
            f"per_device_train_batch_size={num_generations * 8} for 8 images with steps_per_generation=1."
        )
    images = completions // num_generations
    if images < min_images:
        raise ValueError(
            f"each device's generation batch holds {images} image ({completions} completions / num_generations="
            f"{num_generations}); the local-scope rank reward compares images on one device with each other, so it "
            f"needs at least {min_images}. Raise per_device_train_batch_size or steps_per_generation, or use "
            "fidelity_scope='global'."
        )
    return images


class DatasetHomogeneousSampler(Sampler[int]):
    """Yield dataset indices so every device's generation batch comes from one dataset, in whole groups.

    Args:
        dataset_names: the `dataset_name` of every row, in dataset order.
        images_per_device: k, distinct images per device generation batch (`images_per_device(...)`).
        num_processes: devices taking part.
        num_generations: G, how many times each index is repeated in a row.
        repeat_count: how many times each round is repeated (`num_iterations * steps_per_generation`).
        seed: the epoch-e order is drawn with `seed + e`, so every process draws the same order.
        choice: "uniform" picks a dataset uniformly among those with images left (official); "proportional"
            weights by images left, which spreads small datasets over the whole epoch.

    Example:
        >>> sampler = DatasetHomogeneousSampler(["A"] * 4 + ["B"] * 4, images_per_device=2, num_processes=2,
        ...                                     num_generations=2)
        >>> len(sampler)
        16
    """

    def __init__(
        self,
        dataset_names: Sequence[str],
        *,
        images_per_device: int,
        num_processes: int,
        num_generations: int,
        repeat_count: int = 1,
        seed: int = 42,
        choice: str = "uniform",
    ) -> None:
        if choice not in ("uniform", "proportional"):
            raise ValueError(f"choice must be 'uniform' or 'proportional', got {choice!r}.")
        self.pools: dict[str, list[int]] = {}
        for index, name in enumerate(dataset_names):
            self.pools.setdefault(str(name), []).append(index)
        self.images_per_device = images_per_device
        self.num_processes = num_processes
        self.num_generations = num_generations
        self.repeat_count = repeat_count
        self.seed = seed
        self.choice = choice
        self.epoch = 0
        too_small = {name: len(pool) for name, pool in self.pools.items() if len(pool) < images_per_device}
        if self.num_rounds() == 0:
            raise ValueError(
                f"no full round of {num_processes} device batches of {images_per_device} images from one dataset "
                f"fits the data ({ {name: len(pool) for name, pool in self.pools.items()} }); lower "
                "per_device_train_batch_size or add images."
            )
        self.unused_datasets = sorted(too_small)  # datasets too small to fill one device batch: never sampled

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer at each epoch; a resumed run redraws the same order for the same epoch."""
        self.epoch = epoch

    def num_rounds(self) -> int:
        """Rounds per epoch: each dataset gives floor(size / k) device batches, whatever order they are drawn in."""
        slots = sum(len(pool) // self.images_per_device for pool in self.pools.values())
        return slots // self.num_processes

    def rounds(self) -> list[list[list[int]]]:
        """This epoch's plan: rounds of per-device index lists (each of one dataset), before repetition."""
        rng = random.Random(self.seed + self.epoch)
        left = {name: rng.sample(pool, len(pool)) for name, pool in sorted(self.pools.items())}
        k = self.images_per_device
        plan = []
        for _ in range(self.num_rounds()):
            batch = []
            for _ in range(self.num_processes):
                names = [name for name, pool in left.items() if len(pool) >= k]
                if self.choice == "uniform":
                    name = rng.choice(names)
                else:
                    name = rng.choices(names, weights=[len(left[n]) for n in names])[0]
                batch.append(left[name][:k])
                left[name] = left[name][k:]
            plan.append(batch)
        return plan

    def __iter__(self) -> Iterator[int]:
        for batch in self.rounds():
            for _ in range(self.repeat_count):
                for device_indices in batch:
                    for index in device_indices:
                        yield from [index] * self.num_generations

    def __len__(self) -> int:
        per_round = self.num_processes * self.images_per_device * self.num_generations * self.repeat_count
        return self.num_rounds() * per_round
