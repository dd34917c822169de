"""Stage 0: short warm-ups that stand in for the pretrained backbones real users start from.

A real LLaVA run starts from a CLIP-pretrained tower and a pretrained LLM; random tiny ones know nothing.
Two brief, separate warm-ups give them what pretraining would, on scenes drawn from their own splits
(never the held-out one):
  * the tower learns to see: attribute classification (colour, shape, side, size) on rendered scenes, the
    role CLIP/LLM2CLIP pretraining plays; the classification heads are dropped afterwards;
  * the LLM learns the language and to use its context: language modelling on conversations preceded by
    their scene's caption in plain words (a pretrained LLM already answers from facts in its context). No
    image reaches the LLM here, so it learns the format and the answer words, not how to see.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from torch import nn

from .synthetic import to_turns

logger = logging.getLogger(__name__)


def pretrain_tower(tower, config, *, num_images: int, steps: int, batch_size: int, lr: float,
                   seed: int, image_processor, log_every: int = 25) -> dict:
    """Classification of the task's scene attributes (`config.tower_targets`) on freshly rendered scenes; trains
    the whole tower in place. A scalar target is read from the mean-pooled features, a per-patch list of
    targets from each patch's own feature (dense: where things are)."""
    images, labels = [], []
    for _, scene, image, _, _ in config.scenes("stage0-tower", num_images):
        images.append(image)
        labels.append(config.tower_targets(scene, tower.grid_size))
    pixels = image_processor(images)
    classes = config.tower_classes()
    targets = {k: torch.tensor([lab[k] for lab in labels]) for k in classes}
    heads = nn.ModuleDict({k: nn.Linear(tower.hidden_size, n) for k, n in classes.items()})
    tower.unfreeze()
    tower.train()
    params = [p for p in tower.parameters() if p.requires_grad] + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    start, history = time.time(), []
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(images), (batch_size,), generator=gen)
        patches = tower(pixels[idx])  # the patch features: what the projector will see
        feats = patches.mean(dim=1)
        logits = {k: head(feats if targets[k].dim() == 1 else patches).flatten(0, -2) for k, head in heads.items()}
        loss = sum(nn.functional.cross_entropy(logits[k], targets[k][idx].flatten()) for k in heads)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % log_every == 0 or step == steps:
            acc = {k: round(float((logits[k].argmax(-1) == targets[k][idx].flatten()).float().mean()), 3)
                   for k in heads}
            value = float(loss.detach())
            history.append({"step": step, "loss": round(value, 4), **acc})
            logger.info("  stage 0 tower  step %d/%d  loss %.4f  batch accuracy %s", step, steps, value, acc)
    tower.freeze()
    return {"steps": steps, "images": num_images, "seconds": round(time.time() - start, 1), "history": history}


def write_lm_corpus(config, num_scenes: int, path) -> int:
    """Text-only LLaVA JSON: conversations about fresh scenes, each scene's caption standing where its image
    will be, plus caption-copying turns. Trained with the ordinary `finetune` command (mode full)."""
    records = []
    for i, scene, _, questions, rng in config.scenes("stage0-lm", num_scenes):
        caption = scene.caption()
        for j, group in enumerate(config.conversations(scene, questions, rng)):
            records.append({"id": f"lm-{i:06d}-{j}", "conversations": to_turns(group, caption)})
        records.append({"id": f"lm-caption-{i:06d}", "conversations": [
            {"from": "human", "value": f"{caption}\nDescribe the image briefly."}, {"from": "gpt", "value": caption}]})
    rng.shuffle(records)
    Path(path).write_text(json.dumps(records, indent=1) + "\n")
    return len(records)
