"""`llm2clip-llava quickstart`: the whole pipeline on a laptop-class CPU, proving the model reads images.

Stages (each reused on a re-run when its inputs are unchanged; `--fresh` starts over):
  data    a synthetic task in LLaVA's JSON formats (+ held-out set, + its blank-image twin): shapes by default,
          or small objects on a 4x4 board asked about by position (profile `spatial`)
  base    tiny EVA02 tower + tiny Llama (real 32k SentencePiece tokenizer), random init
  stage0  warm-ups standing in for pretrained backbones (see warmup.py)
  stage1  projector pretraining through `llm2clip-llava pretrain` (preset quickstart_pretrain)
  stage2  4-bit QLoRA instruction tuning through `llm2clip-llava finetune` (preset quickstart_finetune)
  eval    held-out accuracy before training, after, and after with every image blanked, via the eval runner
The final checkpoint lands where `chat`, `demo` and `eval` look by default.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from projector import check_projector
from vision_tower import load_vision_tower

from ..paths import quickstart_dir
from ..quiet import silence_known_warnings
from ..tiny import save_spm_tokenizer, save_tiny_llm, save_tiny_tower
from .profiles import PROFILES, Profile
from .report import write_report
from .spatial import SpatialConfig
from .synthetic import ShapesConfig, generate

logger = logging.getLogger("mllm.quickstart")
STAGES = ("data", "base", "stage0", "stage1", "stage2", "eval")


class StageCache:
    """A stage is done when its marker exists with the same inputs fingerprint (its profile slice + upstream)."""

    def __init__(self, root: Path):
        self.root = root

    def marker(self, stage: str) -> Path:
        return self.root / stage / "stage.json"

    def done(self, stage: str, fingerprint: str) -> dict | None:
        path = self.marker(stage)
        if path.is_file():
            info = json.loads(path.read_text())
            if info.get("fingerprint") == fingerprint:
                return info
        return None

    def finish(self, stage: str, fingerprint: str, info: dict) -> dict:
        path = self.marker(stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        info = {**info, "fingerprint": fingerprint}
        path.write_text(json.dumps(info, indent=2) + "\n")
        return info


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _run_cli(args: list[str], log_path: Path) -> None:
    """Run a console-script command in a subprocess (as a user would), streaming its progress."""
    cmd = [sys.executable, "-m", "mllm.cli", *map(str, args)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in proc.stdout:
            log.write(line)
            if " step " in line or "done:" in line or "Error" in line:
                print("    " + line.rstrip()[-160:], flush=True)
        if proc.wait():
            raise RuntimeError(f"`{' '.join(cmd[2:4])}` failed (exit {proc.returncode}); see {log_path}")


class Quickstart:
    def __init__(self, root: Path, profile: Profile, seed: int):
        self.root, self.profile, self.seed = root, profile, seed
        self.cache = StageCache(root)
        self.timings: dict[str, float] = {}
        self.reused: list[str] = []

    def stage(self, name: str, fingerprint: str, fn) -> dict:
        info = self.cache.done(name, fingerprint)
        if info is not None:
            self.reused.append(name)
            self.timings[name] = info.get("seconds", 0.0)
            print(f"[{name}] reusing {self.root / name} (finished earlier; --fresh to redo)", flush=True)
            return info
        shutil.rmtree(self.root / name, ignore_errors=True)
        (self.root / name).mkdir(parents=True)
        print(f"[{name}] running ...", flush=True)
        start = time.time()
        info = fn(self.root / name)
        info["seconds"] = round(time.time() - start, 1)
        self.timings[name] = info["seconds"]
        print(f"[{name}] done in {info['seconds']:.1f} s", flush=True)
        return self.cache.finish(name, fingerprint, info)

    # ------------------------------------------------------------------ stages
    def task_config(self):
        """The synthetic task's config (`ShapesConfig` or `SpatialConfig`) at the profile's sizes."""
        p = self.profile
        task = {"shapes": ShapesConfig, "spatial": SpatialConfig}[p.task]
        return task(seed=self.seed, image_size=p.image_size, num_pretrain=p.num_pretrain, num_train=p.num_train,
                    num_heldout=p.num_heldout)

    def data(self, out: Path) -> dict:
        info = generate(out, self.task_config())
        return {"counts": info["counts"], "chance": info["chance"]["overall"]}

    def base(self, out: Path) -> dict:
        p = self.profile
        save_spm_tokenizer(out / "tokenizer")
        save_tiny_llm(out / "llm", "llama", seed=self.seed, hidden_size=p.llm_width, num_layers=p.llm_depth,
                      num_heads=p.llm_heads, num_kv_heads=p.llm_heads, intermediate_size=p.llm_width * 3,
                      initializer_range=p.llm_init_std)
        save_tiny_tower(out / "tower", seed=self.seed, image_size=p.image_size, patch_size=p.patch_size,
                        hidden_size=p.tower_width, num_layers=p.tower_depth, num_heads=p.tower_heads,
                        intermediate_size=int(p.tower_width * 8 / 3))
        return {}

    def stage0(self, out: Path) -> dict:
        import torch

        from .warmup import pretrain_tower, write_lm_corpus  # the training stack: only when a stage runs

        p, base, shapes = self.profile, self.root / "base", self.task_config()
        torch.manual_seed(self.seed)
        tower = load_vision_tower(str(base / "tower"), select_layer=-2)
        tower_info = pretrain_tower(tower, shapes, num_images=p.num_pretrain, steps=p.tower_steps,
                                    batch_size=p.tower_batch, lr=p.tower_lr, seed=self.seed,
                                    image_processor=tower.image_processor.with_image_aspect_ratio("pad"))
        tower.save_pretrained(out / "tower")
        n_texts = write_lm_corpus(shapes, p.num_train, out / "lm.json")
        # the LLM warm-up is an ordinary text-only fine-tune (mode full) through the finetune command
        args = ["finetune", "--preset", "quickstart_lm", "--data_path", out / "lm.json",
                "--llm", base / "llm", "--tokenizer", base / "tokenizer", "--tower", "null",
                "--tower_checkpoint", out / "tower", "--output_dir", out / "lm", "--max_steps", p.lm_steps,
                "--global_batch_size", p.lm_batch, "--micro_batch_size", p.lm_batch, "--learning_rate", p.lm_lr,
                "--seed", self.seed, "--num_workers", 0]
        _run_cli(args, out / "lm_command.log")
        lm = json.loads((out / "lm" / "training_summary.json").read_text())
        return {"tower": tower_info, "lm": {"texts": n_texts, "steps": lm["steps"], "final_loss": lm["final_loss"],
                                            "seconds": lm["wall_time_s"]}}

    def _train_args(self, stage_dir: Path, steps: int, batch: int, lr: float) -> list:
        p, base, s0 = self.profile, self.root / "base", self.root / "stage0"
        return ["--llm", s0 / "lm" / "llm", "--tokenizer", base / "tokenizer", "--tower", "null",
                "--tower_checkpoint", s0 / "tower", "--image_folder", self.root / "data", "--output_dir", stage_dir,
                "--max_steps", steps, "--global_batch_size", batch, "--micro_batch_size", batch,
                "--learning_rate", lr, "--seed", self.seed, "--num_workers", 0, "--dtype", "fp32",
                "--projector_type", p.projector_type]

    def stage1(self, out: Path) -> dict:
        p = self.profile
        args = ["pretrain", "--preset", "quickstart_pretrain", "--data_path", self.root / "data" / "pretrain.json",
                *self._train_args(out, p.stage1_steps, p.stage1_batch, p.stage1_lr)]
        _run_cli(args, out / "command.log")
        return json.loads((out / "training_summary.json").read_text())

    def stage2(self, out: Path) -> dict:
        p = self.profile
        args = ["finetune", "--preset", "quickstart_finetune", "--mode", "qlora",
                "--data_path", self.root / "data" / "train.json", "--pretrained_projector", self.root / "stage1",
                "--projector_lr", p.stage2_projector_lr, "--lora_r", p.lora_r, "--lora_alpha", p.lora_alpha,
                *self._train_args(out, p.stage2_steps, p.stage2_batch, p.stage2_lr)]
        _run_cli(args, out / "command.log")
        return json.loads((out / "training_summary.json").read_text())

    def evaluate(self, out: Path) -> dict:
        from .evaluation import evaluate_quickstart  # the eval stack (transformers): only when it runs

        return evaluate_quickstart(self.root, out, self.model_dir(), batch_size=self.profile.eval_batch, seed=self.seed,
                                   projector_type=self.profile.projector_type)

    def model_dir(self) -> Path:
        """The trained checkpoint: stage 2's run directory (published as `<root>/model`)."""
        return self.root / "stage2"


def copy_stages(source: Path, root: Path, stages=("data", "base", "stage0")) -> None:
    """Start `root` with the finished stages of another run (e.g. to train another projector on the same data and
    warmed-up backbones). Each stage's marker holds its inputs' fingerprint, so a copy that does not match the new
    run's profile is simply redone."""
    for stage in stages:
        if StageCache(source).marker(stage).is_file() and not (root / stage).exists():
            shutil.copytree(source / stage, root / stage, symlinks=True)


def run_quickstart(root: Path, profile: Profile, seed: int, *, fresh: bool = False, publish: bool = True) -> dict:
    if fresh and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    q = Quickstart(root, profile, seed)
    started = time.time()
    p = asdict(profile)
    data_keys = ("task", "image_size", "num_pretrain", "num_train", "num_heldout")
    fp = {"data": _fingerprint(seed, {k: p[k] for k in data_keys})}
    fp["base"] = _fingerprint(seed, {k: p[k] for k in p if k.startswith(("tower_width", "tower_depth", "tower_heads",
                                                                         "llm_", "patch_size", "image_size"))})
    fp["stage0"] = _fingerprint(fp["data"], fp["base"], {k: p[k] for k in p if k.startswith(("tower_", "lm_"))})
    fp["stage1"] = _fingerprint(fp["stage0"], {k: p[k] for k in p if k.startswith(("stage1", "projector"))})
    fp["stage2"] = _fingerprint(fp["stage1"], {k: p[k] for k in p if k.startswith(("stage2", "lora"))})
    fp["eval"] = _fingerprint(fp["stage2"], p["eval_batch"])
    results = {}
    results["data"] = q.stage("data", fp["data"], q.data)
    results["base"] = q.stage("base", fp["base"], q.base)
    results["stage0"] = q.stage("stage0", fp["stage0"], q.stage0)
    results["stage1"] = q.stage("stage1", fp["stage1"], q.stage1)
    results["stage2"] = q.stage("stage2", fp["stage2"], q.stage2)
    results["eval"] = q.stage("eval", fp["eval"], q.evaluate)

    return write_report(root, q, results, profile, seed, time.time() - started, publish=publish)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="llm2clip-llava quickstart",
        description="Generate a synthetic shapes dataset, build a tiny model of the real architectures (EVA02 "
                    "tower, Llama LLM, mlp2x_gelu), train it end to end on the CPU (stage 1 projector, stage 2 "
                    "4-bit QLoRA) and report held-out accuracy with and without the images.",
    )
    parser.add_argument("--output-dir", type=Path, default=None,
                        help=f"where everything goes (default {quickstart_dir()}; its model/ is the default model "
                             "of chat, demo and eval)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="default",
                        help="sizes, steps and task (spatial: small objects on a 4x4 board, asked by position)")
    parser.add_argument("--projector", dest="projector_type", default=None,
                        help="projector type of stages 1 and 2 (default mlp2x_gelu; pixel_shuffle2_mlp2x_gelu merges "
                             "each 2x2 block of patches: 4x fewer image tokens)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="start over instead of reusing finished stages")
    for name in ("num_pretrain", "num_train", "num_heldout", "tower_steps", "lm_steps", "stage1_steps", "stage2_steps"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, dest=name, default=None, help="override the profile")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("httpx", "urllib3", "PIL", "transformers", "vision_tower"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    silence_known_warnings()  # also when main() is called without the console script
    profile = PROFILES[args.profile].replace(**{k: getattr(args, k) for k in (
        "num_pretrain", "num_train", "num_heldout", "tower_steps", "lm_steps", "stage1_steps", "stage2_steps",
        "projector_type")})
    try:  # before minutes of data and warm-ups: the projector must fit the tiny tower's patch grid
        grid = profile.image_size // profile.patch_size
        check_projector(profile.projector_type, (grid, grid))
    except ValueError as exc:
        parser.error(f"--projector: {exc}")
    root = args.output_dir or quickstart_dir()
    report = run_quickstart(root, profile, args.seed, fresh=args.fresh)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
