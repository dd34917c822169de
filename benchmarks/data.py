"""Data preprocessing throughput per worker: this project's path vs the LLaVA-1.5 path, in the same run.

Both paths do one training sample end to end on one CPU thread (a DataLoader worker): decode a 640x480
JPEG, pad to square, produce the 336x336 normalised tensor, render the conversation, tokenize and mask.
  ours:   LLaVADataset.__getitem__ (RecordStore, templates.encode with offsets + consistency check,
          vision_tower.load_image, ImageProcessor(image_aspect_ratio="pad"), default torch resampling backend;
          also shown
          with backend="pil", which is bit-identical to LLaVA's pixels).
  llava:  LLaVA-1.5's algorithm re-implemented here: Image.open().convert("RGB"), expand2square,
          CLIPImageProcessor.preprocess, preprocess_multimodal, conv_vicuna_v1 prompt, tokenizer_image_token,
          preprocess_v1's per-round re-tokenising mask. Variants: the LLaVA-era PIL/numpy CLIPImageProcessor
          (transformers 5: CLIPImageProcessorPil) or transformers 5's default torchvision one; the same fast
          tokenizer as ours or a slow SentencePiece tokenizer (LLaVA loads use_fast=False).
Writes benchmarks/results/data.json. Usage: python benchmarks/data.py [--samples 100] [--repeats 7]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mllm.data import LLaVADataset  # noqa: E402
from mllm.tokenization import add_image_token  # noqa: E402
from vision_tower import ImageProcessor, load_image  # noqa: E402

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")
WORDS = ("the a bus red white street people standing near two large small building window car left right "
         "image shows there is are of in on with and color what how many where why").split()


def make_data(root: Path, n: int, n_images: int = 16, seed: int = 0) -> Path:
    """640x480 JPEGs with natural-image-like content and mix665k-like multi-turn records."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:480, 0:640]
    for k in range(n_images):
        base = np.stack([(xx * (k + 1) % 256), (yy * 2 + k * 9) % 256, ((xx + yy) // 3) % 256], -1).astype(np.float32)
        img = np.clip(base + rng.normal(0, 18, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"img{k}.jpg", quality=90)
    r = random.Random(seed)
    records = []
    for i in range(n):
        turns = []
        for t in range(r.choice([1, 1, 2, 3])):
            q = " ".join(r.choice(WORDS) for _ in range(r.randint(5, 15))) + "?"
            a = " ".join(r.choice(WORDS) for _ in range(r.randint(5, 60))) + "."
            turns += [{"from": "human", "value": q + ("\n<image>" if t == 0 else "")}, {"from": "gpt", "value": a}]
        records.append({"id": str(i), "image": f"img{i % n_images}.jpg", "conversations": turns})
    path = root / "data.json"
    path.write_text(json.dumps(records))
    return path


class LLaVAStylePath:
    """LLaVA-1.5's LazySupervisedDataset.__getitem__ for one image sample (algorithm as in llava/train/train.py)."""

    def __init__(self, records, image_folder, tokenizer, image_processor, image_token_index=-200):
        self.records, self.image_folder = records, image_folder
        self.tokenizer, self.processor, self.image_token_index = tokenizer, image_processor, image_token_index

    def _tok(self, text):  # LLaVA's tokenizer adds BOS itself; make sure of it for tokenizers that do not
        ids = self.tokenizer(text).input_ids
        return ids if ids[:1] == [self.tokenizer.bos_token_id] else [self.tokenizer.bos_token_id] + ids

    def tokenizer_image_token(self, prompt):
        chunks = [self._tok(c) for c in prompt.split("<image>")]
        ids = [chunks[0][0]]
        for n, chunk in enumerate(chunks):
            if n:
                ids.append(self.image_token_index)
            ids.extend(chunk[1:])
        return ids

    def pixels(self, i):
        image = Image.open(os.path.join(self.image_folder, self.records[i]["image"])).convert("RGB")
        color = tuple(int(x * 255) for x in self.processor.image_mean)
        w, h = image.size
        if w != h:  # expand2square
            side = max(w, h)
            canvas = Image.new(image.mode, (side, side), color)
            canvas.paste(image, ((side - w) // 2, (side - h) // 2))
            image = canvas
        return self.processor.preprocess(image, return_tensors="pt")["pixel_values"][0]

    def text(self, i):
        source = copy.deepcopy(self.records[i]["conversations"])
        for sentence in source:  # preprocess_multimodal
            if "<image>" in sentence["value"]:
                sentence["value"] = ("<image>\n" + sentence["value"].replace("<image>", "").strip()).strip()
        prompt = SYSTEM + " "
        for j, sentence in enumerate(source):
            prompt += ("USER" if j % 2 == 0 else "ASSISTANT") + ": " + sentence["value"] + (" " if j % 2 == 0 else "</s>")
        input_ids = torch.tensor(self.tokenizer_image_token(prompt), dtype=torch.long)
        target = input_ids.clone()
        cur_len = 1
        target[:cur_len] = -100
        for rou in prompt.split("</s>"):  # preprocess_v1 masking
            if rou == "":
                break
            parts = rou.split(" ASSISTANT: ")
            if len(parts) != 2:
                break
            parts[0] += " ASSISTANT: "
            round_len = len(self.tokenizer_image_token(rou))
            instruction_len = len(self.tokenizer_image_token(parts[0])) - 2
            target[cur_len:cur_len + instruction_len] = -100
            cur_len += round_len
        target[cur_len:] = -100
        return input_ids, target

    def __call__(self, i):
        pixel_values = self.pixels(i)
        input_ids, labels = self.text(i)
        return {"input_ids": input_ids, "labels": labels, "image": pixel_values}


def interleaved(paths: dict, n: int, repeats: int) -> dict:
    """Samples per CPU-second of this process, per path, measured round-robin ``repeats`` times.

    CPU time (``time.process_time``, all threads of this process) rather than wall time: on a shared machine
    other processes inflate wall time at random, while a worker's throughput is what its CPU time allows.
    """
    for fn in paths.values():
        for i in range(min(n, 20)):
            fn(i)
    rates = {name: [] for name in paths}
    for _ in range(repeats):
        for name, fn in paths.items():
            t0 = time.process_time()
            for i in range(n):
                fn(i)
            rates[name].append(n / (time.process_time() - t0))
    return rates


def _mean_cpu_ms(fn, n):
    times = []
    for i in range(n):
        t0 = time.process_time()
        fn(i)
        times.append((time.process_time() - t0) * 1e3)
    return round(statistics.mean(times), 3)


def breakdown(n, image_folder, records, processor, ds, llava):
    """Mean CPU milliseconds per sample and stage, for our path and the LLaVA-era path."""
    path = lambda i: os.path.join(image_folder, records[i]["image"])  # noqa: E731
    text_only = LLaVADataset(ds.records.path, ds.tokenizer, template=ds.template, image_loader=lambda p: None,
                             num_image_tokens=ds.num_image_tokens, max_length=ds.max_length)
    images = [load_image(path(i)) for i in range(n)]
    return {
        "ours": {
            "text_record_encode_check": _mean_cpu_ms(lambda i: text_only.get(i, with_pixels=False), n),
            "decode_jpeg_load_image": _mean_cpu_ms(lambda i: load_image(path(i)), n),
            "image_processor_pad_336": _mean_cpu_ms(lambda i: processor([images[i]]), n),
        },
        "llava_pil_clip": {
            "text_prompt_tokenize_mask": _mean_cpu_ms(llava.text, n),
            "decode_expand2square_clip_preprocess": _mean_cpu_ms(llava.pixels, n),
        },
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # one DataLoader worker: one thread, no tokenizers thread pool
    os.environ["TOKENIZERS_PARALLELISM"] = "false"

    import mistral_common
    from transformers import CLIPImageProcessor, LlamaTokenizer
    from transformers.models.clip import CLIPImageProcessorPil
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

    work = Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        model = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
        (work / "tok").mkdir()
        shutil.copy(model, work / "tok" / "tokenizer.model")
        fast = LlamaTokenizer.from_pretrained(work / "tok")
        add_image_token(fast)
        slow = SentencePieceBackend(vocab_file=str(model), bos_token="<s>", eos_token="</s>", unk_token="<unk>")
        data = make_data(work, args.samples)
        records = json.loads(data.read_text())
        processor = ImageProcessor(336, MEAN, STD, image_aspect_ratio="pad")
        ds = LLaVADataset(data, fast, template="vicuna_v1", image_folder=work, image_processor=processor,
                          num_image_tokens=576, max_length=2048)
        clip_kw = dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, image_mean=list(MEAN),
                       image_std=list(STD), resample=3, do_center_crop=True)
        llava = LLaVAStylePath(records, work, fast, CLIPImageProcessorPil(**clip_kw))
        ds_pil = LLaVADataset(data, fast, template="vicuna_v1", image_folder=work, max_length=2048, num_image_tokens=576,
                              image_processor=ImageProcessor(336, MEAN, STD, image_aspect_ratio="pad", backend="pil"))
        paths = {
            "ours": ds.__getitem__,
            "ours_pil_backend": ds_pil.__getitem__,
            "llava_pil_clip_fast_tok": llava,
            "llava_pil_clip_slow_tok": LLaVAStylePath(records, work, slow, CLIPImageProcessorPil(**clip_kw)),
            "llava_tv_clip_fast_tok": LLaVAStylePath(records, work, fast, CLIPImageProcessor(**clip_kw)),
        }
        # pixels vs LLaVA's expand2square + CLIPImageProcessor, in normalised units (1 grey level = 1/255/std ~ 0.015)
        pixel_diff = max(float((ds[i]["pixel_values"][0] - llava.pixels(i)).abs().max()) for i in range(8))
        pil_diff = max(float((ds_pil[i]["pixel_values"][0] - llava.pixels(i)).abs().max()) for i in range(8))
        results = {}
        for name, runs in interleaved(paths, args.samples, args.repeats).items():
            results[name] = {"samples_per_s": round(max(runs), 2), "median": round(statistics.median(runs), 2),
                             "all_runs": [round(r, 2) for r in runs]}
            print(f"{name:<28} best {max(runs):8.1f}  median {statistics.median(runs):8.1f} samples/CPU-s")
        ours = results["ours"]["samples_per_s"]
        speedups = {k: round(ours / v["samples_per_s"], 3) for k, v in results.items() if k.startswith("llava")}
        pil_backend = results["ours_pil_backend"]["samples_per_s"]
        report = {
            "benchmark": "data preprocessing per worker (1 thread): 640x480 JPEG -> pad -> 336 tensor, tokenize, mask",
            "unit": "samples per CPU-second of one process (best of the interleaved passes)",
            "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                        "torch": torch.__version__},
            "samples": args.samples, "repeats": args.repeats,
            "results": results,
            "speedup_vs": speedups,
            "headline": {"reference": "llava_pil_clip_fast_tok", "speedup": speedups["llava_pil_clip_fast_tok"],
                         "target": 1.5, "meets_target": speedups["llava_pil_clip_fast_tok"] >= 1.5},
            "pil_backend_speedup_vs": {k: round(pil_backend / v["samples_per_s"], 3)
                                       for k, v in results.items() if k.startswith("llava")},
            "max_abs_pixel_diff_vs_llava_pil_clip": {"ours": round(pixel_diff, 6), "ours_pil_backend": round(pil_diff, 6)},
            "breakdown_cpu_ms": breakdown(min(args.samples, 100), work, records, processor, ds, llava),
        }
        print(json.dumps({k: report[k] for k in ("speedup_vs", "pil_backend_speedup_vs", "breakdown_cpu_ms",
                                                  "max_abs_pixel_diff_vs_llava_pil_clip")}, indent=1))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
