"""Sizes and step counts of the quickstart: `default` (the README's command), `ci` (the test suite's) and
`spatial` (the harder spatial task, `benchmarks/spatial_task.py`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    # data: the synthetic task (`shapes`: mllm.quickstart.synthetic.ShapesConfig, `spatial`: spatial.SpatialConfig)
    task: str = "shapes"
    image_size: int = 64
    num_pretrain: int = 1500
    num_train: int = 1500
    num_heldout: int = 100
    # tiny tower (EVA02 structure) and tiny Llama (real 32k SentencePiece vocabulary)
    patch_size: int = 16
    tower_width: int = 96
    tower_depth: int = 4
    tower_heads: int = 4
    llm_width: int = 128
    llm_depth: int = 3
    llm_heads: int = 4
    # init std of the tiny LLM: at transformers' default 0.02 its attention stays near-uniform for hundreds of
    # steps (measured: 400 warm-up steps, context still unread); at ~1/sqrt(width) it learns to read in ~150
    llm_init_std: float = 0.08
    # the projector trained in stages 1 and 2 (any registered type; the tower grid here is 4x4)
    projector_type: str = "mlp2x_gelu"
    # stage 0 warm-ups (stand-ins for pretrained backbones)
    tower_steps: int = 250
    tower_batch: int = 64
    tower_lr: float = 2e-3
    lm_steps: int = 300
    lm_batch: int = 32
    lm_lr: float = 3e-3
    # stage 1 (projector) and stage 2 (QLoRA), through the pretrain/finetune commands
    stage1_steps: int = 200
    stage1_batch: int = 32
    stage1_lr: float = 1e-2
    stage2_steps: int = 300
    stage2_batch: int = 32
    stage2_lr: float = 2e-3
    stage2_projector_lr: float = 1e-3
    lora_r: int = 16
    lora_alpha: int = 32
    eval_batch: int = 64

    def replace(self, **changes) -> "Profile":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


PROFILES = {
    "default": Profile(),
    # the CI test: the default recipe on a smaller held-out set and a shorter tower warm-up (same bars)
    "ci": Profile(num_heldout=40, tower_steps=150),
    # small squares on a 4x4 board (one cell per tower patch), asked about by position and counted
    "spatial": Profile(task="spatial", num_heldout=200, lm_steps=400, stage1_steps=300, stage2_steps=400),
}
