"""adn.sampler.RASampler: repeated augmentation spread over processes."""

from __future__ import annotations

from collections import Counter

from adn.sampler import RASampler


def test_repeats_go_to_different_processes():
    data = list(range(512))
    ranks = [RASampler(data, num_replicas=2, rank=r, seed=1, repetitions=2) for r in range(2)]
    first, second = (list(s) for s in ranks)
    assert len(first) == len(second) == 256 == len(ranks[0])
    assert first == second  # each image's two copies land on the two processes, in the same position
    assert len(set(first)) == 256


def test_epoch_length_rule_and_small_datasets():
    assert len(RASampler(list(range(1000)), num_replicas=4, rank=0, repetitions=3)) == 768 // 4
    small = RASampler(list(range(100)), num_replicas=2, rank=1, repetitions=3)
    assert len(small) == 50 and len(list(small)) == 50  # not the empty epoch of the DeiT rule


def test_set_epoch_reshuffles_deterministically():
    sampler = RASampler(list(range(300)), num_replicas=3, rank=0, repetitions=3)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) == epoch0 != epoch1
    unshuffled = list(RASampler(list(range(300)), num_replicas=3, rank=0, repetitions=3, shuffle=False))
    assert unshuffled[:3] == [0, 1, 2] and max(Counter(unshuffled).values()) == 1
