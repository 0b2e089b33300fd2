"""The dataset-homogeneous sampler, dealt to processes by accelerate's real BatchSamplerShard, as TRL does."""

from collections import Counter

import pytest
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler

from vq_reward.train.sampler import DatasetHomogeneousSampler, images_per_device


NAMES = ["A"] * 40 + ["B"] * 13 + ["C"] * 7  # uneven sizes, C smaller than one device batch of 8


def _deal(sampler: DatasetHomogeneousSampler, num_processes: int) -> list[list[list[int]]]:
    """Each process's generation batches, through accelerate's sharding (split_batches=False, as in the Trainer)."""
    batch = sampler.images_per_device * sampler.num_generations
    batches = BatchSampler(sampler, batch_size=batch, drop_last=False)
    return [
        list(BatchSamplerShard(batches, num_processes, rank, split_batches=False)) for rank in range(num_processes)
    ]


@pytest.mark.parametrize(
    ("num_processes", "images", "generations", "repeat"), [(1, 4, 6, 1), (2, 4, 2, 1), (3, 2, 4, 2)]
)
def test_every_device_batch_is_one_dataset_of_whole_groups(num_processes, images, generations, repeat):
    sampler = DatasetHomogeneousSampler(NAMES, images_per_device=images, num_processes=num_processes,
                                        num_generations=generations, repeat_count=repeat, seed=1)  # fmt: skip
    dealt = _deal(sampler, num_processes)
    assert len({len(per_rank) for per_rank in dealt}) == 1  # every process gets the same number of batches
    for per_rank in dealt:
        for batch in per_rank:
            assert len({NAMES[i] for i in batch}) == 1
            groups = [batch[k : k + generations] for k in range(0, len(batch), generations)]
            assert all(len(set(g)) == 1 and len(g) == generations for g in groups)
            assert len({g[0] for g in groups}) == images  # distinct images within the batch
    flat = [i for per_rank in dealt for batch in per_rank for i in batch]
    assert len(flat) == len(sampler)
    seen = Counter(flat)
    assert set(seen.values()) == {generations * repeat}  # no image twice in an epoch


def test_rounds_repeat_for_steps_per_generation():
    sampler = DatasetHomogeneousSampler(NAMES, images_per_device=4, num_processes=2, num_generations=2, repeat_count=3)
    dealt = _deal(sampler, 2)
    for per_rank in dealt:
        assert per_rank[0] == per_rank[1] == per_rank[2] and per_rank[3] != per_rank[0]


def _make(seed: int) -> DatasetHomogeneousSampler:
    return DatasetHomogeneousSampler(NAMES, images_per_device=4, num_processes=2, num_generations=2, seed=seed)


def test_epochs_are_seeded_and_differ():
    first, again = _make(0), _make(0)
    assert list(first) == list(again)
    first.set_epoch(1)
    assert list(first) != list(again)
    again.set_epoch(1)
    assert list(first) == list(again)  # a resumed run redraws the same epoch


def test_small_datasets_are_skipped_and_the_epoch_ends_on_a_full_round():
    sampler = DatasetHomogeneousSampler(NAMES, images_per_device=8, num_processes=2, num_generations=2)
    assert sampler.unused_datasets == ["C"]
    assert sampler.num_rounds() == (40 // 8 + 13 // 8) // 2  # 6 device batches -> 3 rounds
    used = {NAMES[i] for i in sampler}
    assert used == {"A", "B"}


def test_proportional_choice_weights_by_images_left():
    names = ["A"] * 80 + ["B"] * 8
    counts = Counter()
    for seed in range(20):
        sampler = DatasetHomogeneousSampler(
            names, images_per_device=4, num_processes=1, num_generations=2, choice="proportional", seed=seed
        )
        counts[names[sampler.rounds()[0][0][0]]] += 1  # the dataset of the first batch
    assert counts["A"] > counts["B"]  # uniform would pick B first about half the time


def test_layouts_that_split_groups_are_refused():
    assert images_per_device(48, 1, 6) == 8
    assert images_per_device(12, 4, 6) == 8
    with pytest.raises(ValueError, match="not a multiple of num_generations=6"):
        images_per_device(16, 1, 6)
    with pytest.raises(ValueError, match="needs at least 2"):
        images_per_device(6, 1, 6)
    assert images_per_device(6, 1, 6, min_images=1) == 1
    with pytest.raises(ValueError, match="no full round"):
        DatasetHomogeneousSampler(["A"] * 3, images_per_device=4, num_processes=1, num_generations=2)
