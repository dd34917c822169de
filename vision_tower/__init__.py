"""Vision towers for llm2clip-llava: a registry of architectures (`registry.TOWERS`: the LLM2CLIP EVA02 encoder on
timm `Eva`, OpenAI CLIP on transformers, LLM2CLIP's SigLIP2 So400m on timm `VisionTransformer`), checkpoint
loading for every layout they ship in, and image loading/preprocessing."""
from .base import VisionTower
from .checkpoint import VisionCheckpointError, VisionTowerLoadError
from .config import PRESETS, VisionTowerConfig, from_eva_clip_vision_cfg, from_hf_clip_config
from .image_io import ImageLoadError, load_image
from .loader import build_vision_tower, load_vision_tower
from .processor import ImageProcessor

__all__ = [
    "load_vision_tower", "build_vision_tower", "VisionTower", "VisionTowerConfig", "PRESETS", "ImageProcessor",
    "load_image", "ImageLoadError", "VisionCheckpointError", "VisionTowerLoadError", "from_eva_clip_vision_cfg",
    "from_hf_clip_config",
]
