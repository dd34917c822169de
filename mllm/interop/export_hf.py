"""`export CKPT OUT --format llava-hf`: our checkpoint as a directory transformers' Llava loads by itself.

transformers' `LlavaForConditionalGeneration` builds its tower with `AutoModel` and selects
`hidden_states[vision_feature_layer]`, dropping the first token for the "default" strategy: exactly our
CLIP tower's `select_layer`/`patch` semantics. An EVA02 tower has no transformers model that yields those
states (timm's wrapper gives NCHW features without CLS), so EVA02 checkpoints are refused.

The `<image>` token must have an embedding row in transformers' Llava (it looks every id up before
overwriting image positions), while ours may lie outside the vocabulary: the embedding and `lm_head` grow to
cover it (rounded up to a multiple of 64, as llava-hf checkpoints are), each new row the mean of the old ones.
A new `lm_head` row's logit is then the mean of the real logits, never above their maximum, so greedy
decoding cannot pick it and generations equal ours.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from vision_tower.clip import hf_clip_vision_config
from vision_tower.config import PRESETS, resolve_config

from ..config import MLLMConfig
from ..llm import DTYPES, base_causal_lm, stop_token_ids
from ..modeling import image_tokens_per_image
from ..serialization import load_model
from .hf_processor import (
    TEMPLATES,
    adjust_tokenizer,
    chat_template,
    check_processor,
    image_processor,
    save_tokenizer,
)
from .llava_hf import EXPORT_INFO
from .output import check_output_dir, staged_output
from .source import InteropError

logger = logging.getLogger(__name__)

FORMATS = ("llava-hf",)
_EVA_REFUSAL = (
    "{ckpt} has an EVA02 vision tower ({name}), which the llava-hf format cannot express: transformers' Llava "
    "needs a transformers vision model returning per-layer hidden states with a CLS token, and EVA02 has none "
    "(timm's wrapper yields NCHW features without CLS); serve this checkpoint with llm2clip-llava "
    "(chat, demo, eval, Python API), or train with a CLIP-architecture tower (--tower llm2clip-openai-l-14-336 or "
    "openai-clip-vit-l-14-336) to export"
)


def tower_arch(checkpoint: Path, manifest: MLLMConfig) -> tuple[str | None, str | None]:
    """(arch, name) of the checkpoint's tower from configs alone (no weights); arch None when none says."""
    spec, contents = manifest.base_tower(checkpoint), manifest.contents
    sources: list = [checkpoint / contents["vision_tower"] / "config.json"] if "vision_tower" in contents else []
    sources += [spec.config] if spec.config is not None else []
    if spec.checkpoint and Path(spec.checkpoint, "config.json").is_file():
        sources.append(Path(spec.checkpoint, "config.json"))
    sources += [p for p in PRESETS.values() if spec.checkpoint and p.hub_id == spec.checkpoint]
    for source in sources:
        try:
            config = resolve_config(str(source) if isinstance(source, Path) else source)
        except (ValueError, TypeError):
            continue
        return config.arch, config.name or spec.name
    return None, spec.name


def check_exportable(checkpoint: Path, manifest: MLLMConfig) -> None:
    """Everything that makes a checkpoint unexportable and is visible without loading weights."""
    arch, name = tower_arch(checkpoint, manifest)
    if arch == "eva02":
        raise InteropError(_EVA_REFUSAL.format(ckpt=checkpoint, name=name))
    if manifest.projector_type != "mlp2x_gelu":
        raise InteropError(f"{checkpoint} has a {manifest.projector_type} projector; transformers' Llava has one "
                           f"projector, linear-GELU-linear (mlp2x_gelu)")
    if manifest.template not in TEMPLATES:
        raise InteropError(f"{checkpoint} uses template {manifest.template!r}, which has no llava-hf chat template "
                           f"(exportable: {', '.join(TEMPLATES)})")


def export_checkpoint(checkpoint: str | Path, output: str | Path, *, format: str = "llava-hf",
                      dtype: str = "bf16") -> tuple[Path, list[str]]:
    """Write `output` in `format` from our checkpoint; returns (output, summary lines)."""
    if format not in FORMATS:
        raise InteropError(f"unknown export format {format!r}; choose {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise InteropError(f"unknown dtype {dtype!r}")
    checkpoint = Path(checkpoint)
    check_output_dir(output)
    manifest = MLLMConfig.load(checkpoint)
    check_exportable(checkpoint, manifest)
    llm, tower, projector, tokenizer, base = _load_parts(checkpoint, dtype)
    if tower.config.arch == "eva02":  # configs did not say; the weights do
        raise InteropError(_EVA_REFUSAL.format(ckpt=checkpoint, name=tower.config.name))
    if tower.config.arch != "clip":
        raise InteropError(f"{checkpoint} has a {tower.config.arch} vision tower; the llava-hf export supports "
                           f"CLIP-architecture towers")
    template_text = chat_template(manifest.template, tokenizer)
    changes, generic = adjust_tokenizer(tokenizer, manifest.image_token_id, add_bos=manifest.template != "chat_template")
    model = build_llava(llm, tower, projector, manifest.image_token_id, len(tokenizer), DTYPES[dtype],
                        eos_token_ids=stop_token_ids(tokenizer, llm))
    with staged_output(output) as staging:
        model.save_pretrained(str(staging), safe_serialization=True)
        _save_processor(staging, tokenizer, tower, manifest, template_text, generic_class=generic)
        info = {"exported_by": "llm2clip-llava", "source": str(checkpoint), "template": manifest.template,
                "image_aspect_ratio": manifest.image_aspect_ratio, "tower_name": manifest.tower.name,
                "model_max_length": manifest.model_max_length, "merged_adapter_into": base,
                "tokenizer_changes": changes}
        (staging / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
        _verify(staging, manifest)
    summary = [
        f"format: llava-hf (LlavaForConditionalGeneration), {dtype}",
        (f"vision tower: {tower.config.name} -> vision_feature_layer {tower.select_layer}, strategy "
         f"{model.config.vision_feature_select_strategy}, {image_tokens_per_image(tower, projector)} image tokens"),
        f"vocabulary: {model.config.text_config.vocab_size} rows, <image> = {model.config.image_token_id}",
        f"processor: LlavaImageProcessor ({manifest.image_aspect_ratio}), chat template {manifest.template}",
    ]
    if base:
        summary.append(f"LoRA adapter merged into the {base} base weights")
    summary += [f"tokenizer: {c}" for c in changes]
    return Path(output), summary


def _load_parts(checkpoint: Path, dtype: str):
    """LLM (a LoRA/QLoRA adapter merged on load, as `merge` does), tower, projector and tokenizer, on the CPU."""
    model, processor = load_model(checkpoint, dtype=DTYPES[dtype], device="cpu", merge_on_load=True)
    base = model.config.extra.get("merged_on_load") if "adapter" in model.config.contents else None
    return base_causal_lm(model.llm), model.vision_tower, model.projector, processor.tokenizer, base


def build_llava(llm, tower, projector, image_token_id: int, tokenizer_size: int, dtype: torch.dtype,
                eos_token_ids: list[int]):
    """transformers' LlavaForConditionalGeneration holding our weights (built on meta, filled by assignment)."""
    from transformers import (
        GenerationConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    decoder, lm_head = llm.get_decoder(), llm.get_output_embeddings()
    tied = bool(getattr(llm.config, "tie_word_embeddings", False))
    vocab = llm.config.vocab_size
    needed = max(vocab, image_token_id + 1, tokenizer_size)
    new_vocab = vocab if needed == vocab else -(-needed // 64) * 64
    decoder_state = {k: v.to(dtype) for k, v in decoder.state_dict().items()}
    head_state = {k: v.to(dtype) for k, v in lm_head.state_dict().items()}
    embed_key = next(k for k in decoder_state if k.endswith("embed_tokens.weight"))
    decoder_state[embed_key] = _grow(decoder_state[embed_key], new_vocab)
    head_state["weight"] = _grow(head_state["weight"], new_vocab)

    text_config = llm.config.__class__.from_dict({**llm.config.to_dict(), "vocab_size": new_vocab})
    text_config.dtype = dtype
    vision_config = hf_clip_vision_config(tower.config)
    config = LlavaConfig(
        vision_config=vision_config, text_config=text_config, image_token_index=image_token_id,
        image_seq_length=image_tokens_per_image(tower, projector), projector_hidden_act="gelu",
        vision_feature_select_strategy="default" if tower.select_feature == "patch" else "full",
        vision_feature_layer=tower.select_layer, multimodal_projector_bias=True, tie_word_embeddings=tied,
    )
    config.dtype = dtype
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    model.model.language_model.load_state_dict(decoder_state, strict=True, assign=True)
    if tied:
        model.tie_weights()
    else:
        model.lm_head.load_state_dict(head_state, strict=True, assign=True)
    model.model.vision_tower.load_state_dict({k: v.to(dtype) for k, v in tower.model.state_dict().items()},
                                             strict=True, assign=True)
    proj = projector.state_dict()
    model.model.multi_modal_projector.load_state_dict(
        {f"linear_{1 if k.startswith('layers.0.') else 2}.{k.split('.')[-1]}": v.to(dtype) for k, v in proj.items()},
        strict=True, assign=True)
    model.generation_config = GenerationConfig(  # stop where our generation stops: EOS and end-of-turn tokens
        bos_token_id=llm.config.bos_token_id, pad_token_id=getattr(llm.config, "pad_token_id", None),
        eos_token_id=eos_token_ids if len(eos_token_ids) > 1 else eos_token_ids[0])
    return model


def _grow(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """`weight` with new rows up to `rows`, each the mean of the existing rows."""
    extra = rows - weight.shape[0]
    if extra <= 0:
        return weight
    return torch.cat([weight, weight.float().mean(0, keepdim=True).to(weight.dtype).expand(extra, -1)]).contiguous()


def _save_processor(directory: Path, tokenizer, tower, manifest: MLLMConfig, template_text: str,
                    generic_class: bool) -> None:
    from transformers import LlavaProcessor

    images = image_processor(tower.config, manifest.image_aspect_ratio)
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=tower.patch_size,
                               vision_feature_select_strategy="default" if tower.select_feature == "patch" else "full",
                               chat_template=template_text, image_token=manifest.image_token,
                               num_additional_image_tokens=1)
    processor.save_pretrained(str(directory))
    images.save_pretrained(str(directory))  # preprocessor_config.json, for transformers 4 loaders
    save_tokenizer(tokenizer, directory, template_text, generic_class=generic_class)


def _verify(directory: Path, manifest: MLLMConfig) -> None:
    """Reload the written processor as a user would and check it renders and tokenizes as our code does."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(directory), trust_remote_code=False)
    check_processor(processor, manifest.template, manifest.image_token_id)
