"""LLaVA's ``group_by_modality_length`` sampler, sharded across ranks by itself and resumable mid-epoch.

Global order (per epoch, from ``seed + epoch``): image samples and text-only samples are each shuffled and cut
into megabatches of ``world_size * grad_accum_steps * micro_batch_size``; each megabatch is sorted by length
and split into micro-batches of balanced total length; the megabatches of both modalities are shuffled
together; the two partial leftovers form one mixed tail, as in LLaVA's ``llava_trainer.py``. Micro-batch
``c`` of that order goes to rank ``c % world_size`` (what accelerate's batch sharding would have done), so
each rank's consecutive ``grad_accum_steps`` micro-batches come from one megabatch. The order is padded by
wrapping around (or cut, ``drop_last``) so every rank gets the same number of full micro-batches.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def _even_chunks(indices: list[int], lengths: Sequence[int], num_chunks: int) -> list[list[int]]:
    """Split (length-sorted) ``indices`` into ``num_chunks`` chunks of equal size and similar total length."""
    if len(indices) % num_chunks:
        return [indices[i::num_chunks] for i in range(num_chunks)]
    per_chunk = len(indices) // num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    totals = [0.0] * num_chunks
    for index in indices:
        shortest = totals.index(min(totals))
        chunks[shortest].append(index)
        totals[shortest] += lengths[index]
        if len(chunks[shortest]) == per_chunk:
            totals[shortest] = float("inf")
    return chunks


def _length_grouped(lengths: Sequence[int], batch_size: int, num_chunks: int, generator) -> list[int]:
    perm = torch.randperm(len(lengths), generator=generator).tolist()
    mega = num_chunks * batch_size
    out: list[int] = []
    for start in range(0, len(perm), mega):
        group = sorted(perm[start : start + mega], key=lambda i: lengths[i], reverse=True)
        for chunk in _even_chunks(group, lengths, num_chunks):
            out.extend(chunk)
    return out


def modality_length_grouped_indices(lengths: Sequence[int], batch_size: int, num_chunks: int, generator) -> list[int]:
    """The global order (LLaVA semantics); ``lengths`` > 0 for image samples, < 0 for text-only."""
    if any(n == 0 for n in lengths):
        raise ValueError("lengths must be non-zero (+ for image samples, - for text-only)")
    if all(n > 0 for n in lengths) or all(n < 0 for n in lengths):
        return _length_grouped([abs(n) for n in lengths], batch_size, num_chunks, generator)
    mm = [i for i, n in enumerate(lengths) if n > 0]
    lang = [i for i, n in enumerate(lengths) if n < 0]
    mm_order = [mm[i] for i in _length_grouped([lengths[i] for i in mm], batch_size, num_chunks, generator)]
    lang_order = [lang[i] for i in _length_grouped([-lengths[i] for i in lang], batch_size, num_chunks, generator)]
    mega = num_chunks * batch_size
    mm_mb = [mm_order[i : i + mega] for i in range(0, len(mm_order), mega)]
    lang_mb = [lang_order[i : i + mega] for i in range(0, len(lang_order), mega)]
    tail = mm_mb[-1] + lang_mb[-1]
    megabatches = mm_mb[:-1] + lang_mb[:-1]
    order = torch.randperm(len(megabatches), generator=generator).tolist()
    megabatches = [megabatches[i] for i in order]
    if tail:
        megabatches.append(sorted(tail))
    return [i for mb in megabatches for i in mb]


class ModalityLengthGroupedSampler(Sampler[int]):
    """Yields this rank's sample indices; deterministic given ``(seed, epoch)``; resumable via ``set_start``.

    Use one plain ``DataLoader(dataset, batch_size=micro_batch_size, sampler=this)`` per rank (do not let
    accelerate re-shard it). ``group_by_modality=False`` keeps LLaVA's length grouping without modality split.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        micro_batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        grad_accum_steps: int = 1,
        seed: int = 0,
        drop_last: bool = False,
        group_by_modality: bool = True,
    ):
        if micro_batch_size < 1 or world_size < 1 or grad_accum_steps < 1:
            raise ValueError("micro_batch_size, world_size and grad_accum_steps must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, {world_size})")
        if len(lengths) == 0:
            raise ValueError("the dataset is empty")
        self.lengths = [int(n) for n in lengths]
        if not group_by_modality:
            self.lengths = [abs(n) for n in self.lengths]
        self.micro_batch_size, self.world_size, self.rank = micro_batch_size, world_size, rank
        self.grad_accum_steps, self.seed, self.drop_last = grad_accum_steps, seed, drop_last
        self.epoch, self.start = 0, 0
        self._cache: tuple[int, list[int]] | None = None
        step = world_size * micro_batch_size
        total = len(self.lengths)
        self.num_samples_per_rank = (total // step if drop_last else -(-total // step)) * micro_batch_size
        if self.num_samples_per_rank == 0:
            raise ValueError(f"{total} samples cannot fill one micro-batch on each of {world_size} ranks with drop_last")

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order; resets the resume offset."""
        self.epoch, self.start = int(epoch), 0

    def set_start(self, consumed: int) -> None:
        """Skip the first ``consumed`` indices of this rank's current epoch (resume mid-epoch)."""
        if not 0 <= consumed <= self.num_samples_per_rank:
            raise ValueError(f"cannot resume at {consumed}: this rank has {self.num_samples_per_rank} samples per epoch")
        self.start = int(consumed)

    def global_order(self) -> list[int]:
        """The padded (or cut) order of all ranks for the current epoch, before sharding."""
        if self._cache is None or self._cache[0] != self.epoch:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = modality_length_grouped_indices(
                self.lengths, self.micro_batch_size, self.world_size * self.grad_accum_steps, gen
            )
            need = self.num_samples_per_rank * self.world_size
            while len(order) < need:
                order += order[: need - len(order)]
            self._cache = (self.epoch, order[:need])
        return self._cache[1]

    def rank_indices(self) -> list[int]:
        order, b, w = self.global_order(), self.micro_batch_size, self.world_size
        return [i for c in range(self.rank, len(order) // b, w) for i in order[c * b : (c + 1) * b]]

    def __iter__(self) -> Iterator[int]:
        return iter(self.rank_indices()[self.start :])

    def __len__(self) -> int:
        return self.num_samples_per_rank - self.start

    def state_dict(self, consumed: int | None = None) -> dict:
        """Everything needed to resume; pass the number of samples this rank has consumed this epoch."""
        return {
            "epoch": self.epoch,
            "start": self.start if consumed is None else int(consumed),
            "seed": self.seed,
            "num_samples": len(self.lengths),
            "world_size": self.world_size,
            "micro_batch_size": self.micro_batch_size,
            "grad_accum_steps": self.grad_accum_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state`; a ValueError names every setting that differs (the order would not be the same)."""
        mine = self.state_dict()
        keys = ("seed", "num_samples", "world_size", "micro_batch_size", "grad_accum_steps")
        differ = [f"{k} (checkpoint {state.get(k)}, this run {mine[k]})" for k in keys if state.get(k) != mine[k]]
        if differ:
            raise ValueError(f"the sampler's order differs in {'; '.join(differ)}")
        self.set_epoch(state["epoch"])
        self.set_start(state["start"])
