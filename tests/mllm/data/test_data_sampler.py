"""ModalityLengthGroupedSampler: deterministic, rank-disjoint and covering, modality-pure, resumable."""
import random
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader

from mllm.data.sampler import ModalityLengthGroupedSampler


def _lengths(n_img, n_txt, seed=0):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 500) for _ in range(n_img)] + [-rng.randint(1, 500) for _ in range(n_txt)]
    rng.shuffle(lengths)
    return lengths


def _all_ranks(lengths, **kw):
    world = kw.get("world_size", 1)
    samplers = [ModalityLengthGroupedSampler(lengths, rank=r, **kw) for r in range(world)]
    return samplers, [list(s) for s in samplers]


def test_deterministic_per_seed_and_epoch():
    lengths = _lengths(300, 100)
    a = ModalityLengthGroupedSampler(lengths, 4, world_size=2, rank=1, grad_accum_steps=2, seed=3)
    b = ModalityLengthGroupedSampler(lengths, 4, world_size=2, rank=1, grad_accum_steps=2, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(set(a)) != []
    a.set_epoch(0)
    assert list(a) == first
    assert list(ModalityLengthGroupedSampler(lengths, 4, world_size=2, rank=1, grad_accum_steps=2, seed=4)) != first


@pytest.mark.parametrize("world,batch,accum", [(1, 4, 1), (2, 4, 2), (4, 2, 1), (3, 5, 2)])
def test_ranks_are_disjoint_and_cover_the_dataset(world, batch, accum):
    n = world * batch * 23  # divisible: no padding needed
    samplers, per_rank = _all_ranks(_lengths(n * 3 // 4, n - n * 3 // 4), micro_batch_size=batch, world_size=world,
                                    grad_accum_steps=accum, seed=1)
    assert all(len(r) == len(s) == n // world for r, s in zip(per_rank, samplers))
    flat = [i for r in per_rank for i in r]
    assert sorted(flat) == list(range(n))


def test_uneven_size_pads_by_wrapping_and_drop_last_cuts():
    lengths = _lengths(70, 33)  # 103 samples, 2 ranks x 4 -> 104 padded
    _, per_rank = _all_ranks(lengths, micro_batch_size=4, world_size=2)
    assert [len(r) for r in per_rank] == [52, 52]
    counts = Counter(i for r in per_rank for i in r)
    assert set(counts) == set(range(103)) and sum(c - 1 for c in counts.values()) == 104 - 103
    _, cut = _all_ranks(lengths, micro_batch_size=4, world_size=2, drop_last=True)
    assert [len(r) for r in cut] == [48, 48] and len({i for r in cut for i in r}) == 96


def test_micro_batches_are_modality_pure_except_the_leftover():
    lengths = _lengths(500, 211, seed=5)
    world, batch, accum = 2, 4, 2
    samplers, per_rank = _all_ranks(lengths, micro_batch_size=batch, world_size=world, grad_accum_steps=accum)
    mega = world * batch * accum
    n_img, n_txt = 500, 211
    tail = (n_img % mega or mega) + (n_txt % mega or mega)  # LLaVA: both last megabatches form the mixed tail
    order = samplers[0].global_order()
    head_batches = (len(lengths) - tail) // batch
    for c in range(head_batches):
        signs = {lengths[i] > 0 for i in order[c * batch:(c + 1) * batch]}
        assert len(signs) == 1, f"micro-batch {c} mixes modalities"
    mixed = sum(len({lengths[i] > 0 for i in r[k:k + batch]}) > 1 for r in per_rank for k in range(0, len(r), batch))
    assert mixed <= -(-tail // batch)
    # micro-batch c of the global order is rank c % world's next micro-batch
    for rank, r in enumerate(per_rank):
        assert r[:batch] == order[rank * batch:(rank + 1) * batch]


def test_micro_batches_of_a_megabatch_have_balanced_total_length():
    # LLaVA's split_to_even_chunks: every rank/accumulation step of a megabatch gets a similar token load
    lengths = _lengths(2000, 0, seed=2)
    batch, chunks = 8, 4
    order = list(ModalityLengthGroupedSampler(lengths, batch, world_size=1, grad_accum_steps=chunks))
    perm = torch.randperm(2000, generator=torch.Generator().manual_seed(0)).tolist()

    def imbalance(seq):
        total = 0
        for m in range(0, len(seq) - batch * chunks + 1, batch * chunks):
            sums = [sum(lengths[i] for i in seq[m + c * batch:m + (c + 1) * batch]) for c in range(chunks)]
            total += max(sums) - min(sums)
        return total

    assert imbalance(order) < imbalance(perm) / 4


def test_resume_mid_epoch_is_exact():
    lengths = _lengths(150, 50)
    s = ModalityLengthGroupedSampler(lengths, 4, world_size=2, rank=0, grad_accum_steps=2, seed=9)
    s.set_epoch(3)
    full = list(s)
    state = s.state_dict(consumed=24)
    fresh = ModalityLengthGroupedSampler(lengths, 4, world_size=2, rank=0, grad_accum_steps=2, seed=9)
    fresh.load_state_dict(state)
    assert list(fresh) == full[24:] and len(fresh) == len(full) - 24
    loader = DataLoader(list(range(200)), batch_size=4, sampler=fresh)
    assert [i for b in loader for i in b.tolist()] == full[24:]
    fresh.set_epoch(4)
    assert len(fresh) == len(full)  # a new epoch starts from the beginning
    other = ModalityLengthGroupedSampler(lengths, 4, world_size=4, rank=0, seed=9)
    with pytest.raises(ValueError, match="world_size"):
        other.load_state_dict(state)


def test_bad_arguments():
    with pytest.raises(ValueError):
        ModalityLengthGroupedSampler([1, 2], 2, world_size=2, rank=2)
    with pytest.raises(ValueError, match="non-zero"):
        list(ModalityLengthGroupedSampler([1, 0, -2], 1))
    with pytest.raises(ValueError):
        ModalityLengthGroupedSampler([1, 2, 3], 4, world_size=1, drop_last=True)
