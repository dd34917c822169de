"""What the phases share: sizes, the device, and the random full-size models they load (made once, on demand).

The LLM is a 7B Llama shape (Vicuna-7B / Llama-2-7B) with random weights and the tower the full-size
LLM2CLIP EVA02-L-14-336, both saved to disk so every phase loads them through the project's own code paths
(`build_model`, `load_model`, `load_vision_tower`). `tiny=True` keeps every code path at toy size on the CPU.
Like the phases, the artifacts import the model stack when they are first built (see `phases`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mllm.constants import IGNORE_INDEX
from vision_tower.config import DEFAULT_PRESET


@dataclass
class Workload:
    device: torch.device
    workdir: Path
    tiny: bool = False
    micro_batch: int = 4
    text_tokens: int = 224  # text per training sample, on top of the 576 image tokens (LLaVA-665k: ~800 in all)
    steps: int = 5
    warmup: int = 2
    new_tokens: int = 32
    generation_batches: tuple[int, ...] = (1, 4, 8)
    tower_batch: int = 32
    tower_repeats: int = 10
    peak_tflops: float | None = None
    broken: set = field(default_factory=set)  # capabilities the pre-flight found not working
    artifacts: dict = field(default_factory=dict)  # name -> what was made, how big, how long it took
    _made: dict = field(default_factory=dict)

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype: bf16 on CUDA, fp32 on the CPU (as the project's own defaults)."""
        return torch.bfloat16 if self.device.type == "cuda" else torch.float32

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _make(self, name: str, build):
        if name not in self._made:
            start = time.monotonic()
            self._made[name], info = build()
            self.artifacts[name] = {**info, "seconds": round(time.monotonic() - start, 1)}
        return self._made[name]

    # ------------------------------------------------------------------ artifacts
    def tokenizer_dir(self) -> Path:
        def build():
            from mllm.tiny import save_spm_tokenizer, spm_tokenizer_model_path

            source = spm_tokenizer_model_path()
            if not source.is_file():
                raise FileNotFoundError(f"SentencePiece model {source} is missing (run gpu_check.sh --prepare)")
            path = self.workdir / "tokenizer"
            save_spm_tokenizer(path)
            return path, {"source": str(source)}
        return self._make("tokenizer", build)

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.tokenizer_dir()))

    def tower_dir(self) -> Path:
        """The tower, randomly initialised on the device itself (seconds, not the CPU's minute) and saved."""
        def build():
            from mllm.tiny import tiny_tower_config
            from vision_tower import build_vision_tower

            with torch.device(self.device):
                tower = build_vision_tower(tiny_tower_config() if self.tiny else DEFAULT_PRESET,
                                           dtype=self.dtype)
            path = self.workdir / "tower"
            tower.save_pretrained(path)
            info = {"name": tower.config.name, "params": sum(p.numel() for p in tower.parameters()),
                    "image_size": tower.image_size}
            del tower
            return path, info
        return self._make("tower", build)

    def tower_spec(self):
        from mllm import TowerSpec

        path = self.tower_dir()
        return TowerSpec(checkpoint=str(path), config=None, name=self.artifacts["tower"]["name"])

    def llm_dir(self) -> Path:
        """A 7B-shaped Llama with random weights, initialised on the device and saved as bf16 safetensors."""
        def build():
            from transformers import AutoModelForCausalLM, LlamaConfig

            from mllm.tiny import tiny_llm_config

            config = tiny_llm_config("llama") if self.tiny else LlamaConfig(
                vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                bos_token_id=1, eos_token_id=2, pad_token_id=0)
            torch.manual_seed(0)
            with torch.device(self.device):
                model = AutoModelForCausalLM.from_config(config, dtype=self.dtype)
            path = self.workdir / "llm"
            model.save_pretrained(str(path), safe_serialization=True, max_shard_size="5GB")
            info = {"params": sum(p.numel() for p in model.parameters()), "layers": config.num_hidden_layers,
                    "hidden_size": config.hidden_size, "vocab_size": config.vocab_size,
                    "bytes_on_disk": sum(f.stat().st_size for f in path.glob("*.safetensors"))}
            del model
            return path, info
        return self._make("llm", build)

    def qlora_checkpoint(self) -> Path:
        """A QLoRA checkpoint (r128 on every linear) to serve; the stage-2 phase saves its trained one here."""
        def build():
            from mllm import LoraSpec, build_model

            model, processor = build_model(str(self.llm_dir()), tower=self.tower_spec(), tokenizer=self.tokenizer(),
                                           quantization="4bit", dtype=self.dtype, lora=LoraSpec(r=128, alpha=256))
            randomise_lora(model)
            return self._save_checkpoint(model, processor), {"made_by": "qlora_checkpoint (untrained)"}
        return self._make("qlora_checkpoint", build)

    def keep_qlora_checkpoint(self, model, processor) -> None:
        """Save a trained QLoRA model as the checkpoint later phases serve (if none was made yet)."""
        self._make("qlora_checkpoint", lambda: (self._save_checkpoint(model, processor), {"made_by": "stage2_qlora"}))

    def _save_checkpoint(self, model, processor) -> Path:
        from mllm import save_pretrained

        path = self.workdir / "qlora_checkpoint"
        save_pretrained(model, processor, path)
        return path

    # ------------------------------------------------------------------ inputs
    def training_batch(self, processor, rows: int, text_tokens: int, *, padded: bool, seed: int = 0) -> dict:
        """Image + text samples supervised on the second half of their text, right-padded like training's.

        `padded=False`: every row has `text_tokens` (no padding: attention may take the maskless causal kernel).
        `padded=True`: lengths spread evenly around the same mean (same real tokens), padded to the longest.
        """
        self.tower_dir()
        gen = torch.Generator().manual_seed(seed)
        n_img = processor.num_image_tokens
        if padded and rows > 1:
            lengths = [round(text_tokens * (0.5 + i / (rows - 1))) for i in range(rows)]
        else:
            lengths = [text_tokens] * rows
        sequences, label_rows = [], []
        for length in lengths:
            text = torch.randint(100, 30000, (length,), generator=gen).tolist()
            ids = [1] + [processor.image_token_id] * n_img + text
            labels = [IGNORE_INDEX] * (1 + n_img + length // 2) + text[length // 2:]
            sequences.append(ids)
            label_rows.append(labels)
        input_ids, attention_mask = processor.pad(sequences, "right")
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for i, row in enumerate(label_rows):
            labels[i, : len(row)] = torch.tensor(row)
        size = self.artifacts["tower"]["image_size"]
        pixels = torch.randn(rows, 3, size, size, generator=gen)
        return {"input_ids": input_ids.to(self.device), "attention_mask": attention_mask.to(self.device),
                "labels": labels.to(self.device), "pixel_values": pixels.to(self.device),
                "seq_lens": [1 + n_img + n for n in lengths]}

    def images(self, count: int, seed: int = 0) -> list:
        """Distinct random RGB images at the tower's resolution."""
        from PIL import Image

        self.tower_dir()
        gen = torch.Generator().manual_seed(seed)
        size = self.artifacts["tower"]["image_size"]
        return [Image.fromarray(torch.randint(0, 256, (size, size, 3), generator=gen, dtype=torch.uint8).numpy())
                for _ in range(count)]


def randomise_lora(model, seed: int = 0, scale: float = 0.02) -> None:
    """LoRA B starts at zero (the adapter a no-op); give every adapter weight a value so serving it matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_((torch.randn(param.shape, generator=gen) * scale).to(param.dtype))
