"""The training data stream of one rank: dataset → its own sampler shard → DataLoader → batches.

Each rank builds a plain DataLoader over `ModalityLengthGroupedSampler`, which already yields this rank's
share (accelerate does not re-shard it), so the position in an epoch is just a count of micro-batches and
resuming mid-epoch is exact. The loader gets its own generator so creating it never consumes the global
RNG (which a resumed run restores bit for bit).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from ..data import Collator, LLaVADataset, ModalityLengthGroupedSampler, SkipReport

logger = logging.getLogger(__name__)


class TrainData:
    def __init__(self, dataset: LLaVADataset, sampler: ModalityLengthGroupedSampler, collator: Collator, *,
                 micro_batch_size: int, num_workers: int, seed: int):
        self.dataset, self.sampler, self.collator = dataset, sampler, collator
        self.micro_batch_size, self.num_workers, self.seed = micro_batch_size, num_workers, seed
        self.skip_report = SkipReport()

    @property
    def micro_batches_per_epoch(self) -> int:
        return -(-self.sampler.num_samples_per_rank // self.micro_batch_size)

    def iter_epoch(self, epoch: int, start_micro_batch: int = 0) -> Iterator[dict]:
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(min(start_micro_batch * self.micro_batch_size, self.sampler.num_samples_per_rank))
        loader = DataLoader(
            self.dataset, batch_size=self.micro_batch_size, sampler=self.sampler, collate_fn=self.collator,
            num_workers=self.num_workers, generator=torch.Generator().manual_seed(self.seed + epoch),
            pin_memory=torch.cuda.is_available(), persistent_workers=False,
            prefetch_factor=2 if self.num_workers > 0 else None,
        )
        return iter(loader)

    def merged_skips(self, accelerator) -> SkipReport:
        """This run's skip report over all ranks (a collective call: every rank must make it)."""
        if accelerator.num_processes == 1:
            return self.skip_report
        from accelerate.utils import gather_object

        return SkipReport.merged(gather_object([self.skip_report.to_dict()]))


def build_train_data(config, processor, *, rank: int, world_size: int, grad_accum: int, records=None) -> TrainData:
    """`records`: the data file's RecordStore when preflight has read it already (else the file is read here)."""
    dataset = LLaVADataset(
        records if records is not None else config.data_path, processor.tokenizer, template=config.template, image_folder=config.image_folder or None,
        image_processor=processor.image_processor, num_image_tokens=processor.num_image_tokens,
        image_token_id=processor.image_token_id, max_length=config.model_max_length, strict=config.strict_data,
    )
    sampler = ModalityLengthGroupedSampler(
        dataset.modality_lengths, config.micro_batch_size, world_size=world_size, rank=rank,
        grad_accum_steps=grad_accum, seed=config.seed, group_by_modality=config.group_by_modality_length,
    )
    collator = Collator(processor.tokenizer.pad_token_id, pad_to_multiple_of=8,
                        image_size=processor.image_processor.image_size)
    if rank == 0:
        logger.info("data: %d records from %s; %d samples per rank per epoch", len(dataset), config.data_path,
                    sampler.num_samples_per_rank)
    return TrainData(dataset, sampler, collator, micro_batch_size=config.micro_batch_size,
                     num_workers=config.num_workers, seed=config.seed)
