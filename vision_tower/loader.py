"""`load_vision_tower` / `build_vision_tower`: one entry point for hub ids, directories and single files.

Weights are read, their layout detected and mapped to canonical names, the config is taken from the caller,
the directory or (failing both) matched against the presets by shape, and the tower is loaded strictly.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import re

import torch

from .base import CONFIG_NAME, VisionTower
from .checkpoint import (
    Canonical, VisionCheckpointError, VisionTowerLoadError, canonicalize, infer_structure, read_weights,
)
from .config import CONFIG_MODEL_TYPE, DEFAULT_PRESET, PRESETS, VisionTowerConfig, config_from_dict, resolve_config
from .registry import tower_class

logger = logging.getLogger(__name__)


def _preset_for_hub_id(repo_id: str) -> VisionTowerConfig | None:
    return next((p for p in PRESETS.values() if p.hub_id == repo_id), None)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_PICKLE_EXT = (".pt", ".pth", ".bin", ".ckpt")


def build_vision_tower(config=DEFAULT_PRESET, *, select_layer: int = -2, select_feature: str = "patch",
                       dtype: torch.dtype = torch.float32, device=None) -> VisionTower:
    """A randomly initialised, frozen tower (tests, quickstart, benchmarks); same classes as the loader."""
    cfg = resolve_config(config)
    tower = tower_class(cfg.arch)(cfg, select_layer=select_layer, select_feature=select_feature)
    return tower.to(device=device, dtype=dtype).freeze()


def load_vision_tower(checkpoint=None, config=None, *, select_layer: int = -2, select_feature: str = "patch",
                      dtype: torch.dtype = torch.float32, device=None, revision: str | None = None) -> VisionTower:
    """Load a frozen tower.

    checkpoint: hub id, local directory (config + *.safetensors, a `.pt`, or `save_pretrained` output) or one
        weight file (.safetensors/.pt/.bin; EVA-CLIP `visual.*`, HF CLIP `vision_model.*`, ... layouts).
        None: the hub id of `config` (default preset `llm2clip-eva02-l-14-336`).
    config: preset name, EVA-CLIP `vision_cfg` (dict or JSON path), HF CLIP config, or `VisionTowerConfig`.
    revision: branch, tag or commit of a hub checkpoint (None: the default branch); unused for local paths.
    """
    explicit = resolve_config(config) if config is not None else None
    if checkpoint is None:
        preset = explicit or PRESETS[DEFAULT_PRESET]
        if not preset.hub_id:
            raise VisionTowerLoadError(f"config {preset.name!r} names no hub repository; pass checkpoint=<path>")
        checkpoint = preset.hub_id
    files, dir_config, ours = locate_checkpoint(checkpoint, explicit, revision)
    # a preset's hub id names the preset, used when neither the caller nor the download says otherwise
    fallback = None if os.path.exists(os.fspath(checkpoint)) else _preset_for_hub_id(os.fspath(checkpoint))
    weights: dict[str, torch.Tensor] = {}
    for path in files:
        part = read_weights(path)
        clash = sorted(set(part) & set(weights))
        if clash:
            raise VisionCheckpointError(f"{path} repeats keys already read from another file: {clash[:5]}")
        weights.update(part)
    canonical = canonicalize(weights)
    cfg = _choose_config(explicit, dir_config, ours, canonical, checkpoint, fallback)
    if cfg.arch != canonical.arch:
        raise VisionCheckpointError(f"checkpoint holds a {canonical.arch} tower ({canonical.layout} layout) but the "
                                    f"config is arch {cfg.arch!r} ({cfg.name})")
    tower = tower_class(cfg.arch)(cfg, select_layer=select_layer, select_feature=select_feature, device="meta")
    tower.to_empty(device="cpu")
    tower.init_non_persistent_buffers()
    tower.load_canonical_state_dict(canonical.tensors)
    tower.check_checkpoint(canonical)
    return tower.to(device=device, dtype=dtype).freeze()


# ---------------------------------------------------------------------------------------------- locating
def locate_checkpoint(checkpoint, hint: VisionTowerConfig | None = None, revision: str | None = None):
    """(weight files to read, config found next to them or None, whether that config is our own format)."""
    path = os.fspath(checkpoint)
    if os.path.isfile(path):
        return [path], None, False
    if os.path.isdir(path):
        return _files_in_dir(path)
    if is_hub_id(path):
        return _files_in_dir(_download(path, hint, revision))
    raise VisionTowerLoadError(f"checkpoint {path!r} is not an existing file or directory, nor a hub id (owner/name)")


def is_hub_id(text: str) -> bool:
    """Whether `text` has the shape of a Hugging Face Hub repository id (owner/name)."""
    return bool(_HUB_ID.match(text)) and not text.startswith(".")


def declared_config(checkpoint=None, config=None) -> VisionTowerConfig | None:
    """The config `load_vision_tower(checkpoint, config)` will use, when knowable without reading weights or the
    network: the given config, the config saved in a checkpoint directory, or the preset of a hub id (None
    otherwise, e.g. a single weight file whose sizes only the weights tell). Raises what the load would."""
    if config is not None:
        return resolve_config(config)
    if checkpoint is None:
        return PRESETS[DEFAULT_PRESET]
    path = os.fspath(checkpoint)
    if os.path.isdir(path):
        return _dir_config(path)[0]
    if not os.path.exists(path):
        if not is_hub_id(path):
            raise VisionTowerLoadError(f"checkpoint {path!r} is not an existing file or directory, nor a hub id "
                                       f"(owner/name)")
        return _preset_for_hub_id(path)
    return None


def _dir_config(directory: str) -> tuple[VisionTowerConfig | None, bool]:
    """(config.json of a checkpoint directory if this loader reads it, whether it is our own format)."""
    dir_config, ours = None, False
    cfg_path = os.path.join(directory, CONFIG_NAME)
    if os.path.isfile(cfg_path):
        try:
            with open(cfg_path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            raise VisionTowerLoadError(f"unreadable {cfg_path}: {exc}") from exc
        ours = isinstance(data, dict) and data.get("model_type") == CONFIG_MODEL_TYPE
        try:
            dir_config = config_from_dict(data, origin=cfg_path)
        except ValueError as exc:
            if ours:
                raise
            logger.info("ignoring %s (not a tower config this loader reads): %s", cfg_path, exc)
    return dir_config, ours


def _files_in_dir(directory: str) -> tuple[list[str], VisionTowerConfig | None, bool]:
    dir_config, ours = _dir_config(directory)
    safetensors = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
    pickles = sorted(p for p in glob.glob(os.path.join(directory, "*")) if p.endswith(_PICKLE_EXT))
    torch_pt = [p for p in pickles if p.endswith((".pt", ".pth"))]
    if ours and safetensors:
        files = safetensors
    elif len(torch_pt) == 1:
        files = torch_pt  # e.g. LLM2CLIP-EVA02-L-14-336.pt, the ground-truth EVA-CLIP checkpoint
    elif len(torch_pt) > 1:
        raise VisionTowerLoadError(f"{directory} holds several .pt files {torch_pt}; pass the one to load")
    elif safetensors:
        files = safetensors
    elif pickles:
        files = pickles
    else:
        raise VisionTowerLoadError(f"no weight files (*.safetensors, *.pt, *.bin) in {directory}: "
                                   f"{sorted(os.listdir(directory))[:10]}")
    logger.info("loading vision weights from %s", ", ".join(os.path.basename(f) for f in files))
    return files, dir_config, ours


def _download(repo_id: str, hint: VisionTowerConfig | None, revision: str | None = None) -> str:
    """Fetch only the files needed (at `revision`, if given) into the HF cache and return the snapshot directory."""
    try:
        import huggingface_hub as hub
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise VisionTowerLoadError("huggingface_hub is needed to download hub checkpoints") from exc
    preset = hint if hint is not None and hint.hub_id == repo_id else _preset_for_hub_id(repo_id)
    pinned = {"revision": revision} if revision else {}  # None: the default branch
    try:
        if preset is not None and preset.hub_filename:
            path = hub.hf_hub_download(repo_id, preset.hub_filename, **pinned)
            return os.path.dirname(path)
        try:
            files = hub.list_repo_files(repo_id, **pinned)
        except Exception:  # offline: a cached snapshot, if any
            return hub.snapshot_download(repo_id, local_files_only=True, **pinned)
        wanted = _pick_hub_files(files)
        if not wanted:
            raise VisionTowerLoadError(f"hub repo {repo_id} has no weight files: {files[:20]}")
        return hub.snapshot_download(repo_id, allow_patterns=wanted + ([CONFIG_NAME] if CONFIG_NAME in files else []),
                                     **pinned)
    except VisionTowerLoadError:
        raise
    except Exception as exc:
        raise VisionTowerLoadError(
            f"could not get {repo_id!r}{f' at revision {revision!r}' if revision else ''} from the Hugging Face Hub "
            f"({type(exc).__name__}: {exc}); no local file or "
            f"directory has that name either. Offline or no access? Download the weights elsewhere and pass the "
            f"local file or directory as checkpoint="
        ) from exc


def _pick_hub_files(files: list[str]) -> list[str]:
    top = [f for f in files if "/" not in f]
    pt = [f for f in top if f.endswith((".pt", ".pth"))]
    if len(pt) == 1:
        return pt
    st = [f for f in top if f.endswith(".safetensors")]
    if st:
        return st
    return [f for f in top if f.endswith(".bin")]


# ---------------------------------------------------------------------------------------------- config
def _choose_config(explicit, dir_config, ours: bool, canonical: Canonical, origin, fallback=None
                   ) -> VisionTowerConfig:
    if dir_config is not None and not ours and (explicit is not None or dir_config.arch != canonical.arch):
        # a foreign config.json (HF CLIP) only helps when nothing better says what the weights are
        logger.info("not using %s/config.json (%s) for %s weights", origin, dir_config.arch, canonical.layout)
        dir_config = None
    if explicit is not None:
        if dir_config is not None and dir_config.structure() != explicit.structure():
            diff = {k: (v, dir_config.structure()[k]) for k, v in explicit.structure().items()
                    if dir_config.structure()[k] != v}
            raise VisionCheckpointError(f"config {explicit.name or explicit.arch!r} contradicts the config saved with "
                                        f"{origin} (field: (given, saved)): {diff}")
        return explicit
    if dir_config is not None:
        return dir_config
    if fallback is not None and fallback.arch == canonical.arch:
        return fallback
    return match_preset(canonical, origin)


def match_preset(canonical: Canonical, origin="checkpoint") -> VisionTowerConfig:
    """The preset whose sizes equal the checkpoint's; errors unless exactly one structure fits."""
    info = infer_structure(canonical)
    fits = [p for p in PRESETS.values() if all(getattr(p, k) == v for k, v in info.items())]
    structures = {tuple(sorted(p.structure().items())) for p in fits}
    if len(structures) != 1:
        raise VisionCheckpointError(
            f"cannot tell which tower {origin} is (sizes {info}; matching presets: {[p.name for p in fits]}); "
            f"pass config= a preset name ({', '.join(PRESETS)}) or an EVA-CLIP vision_cfg JSON")
    chosen = fits[0]
    if len(fits) > 1:  # same network, different provenance: keep the structure, drop the name
        chosen = chosen.replace(name=None, hub_id=None, hub_filename=None, source=None)
    logger.info("config for %s inferred from its shapes: %s", origin, chosen.name or "(unnamed) " + chosen.arch)
    return chosen
