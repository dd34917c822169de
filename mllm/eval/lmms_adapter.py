"""An lmms-eval model: ``lmms-eval --model llm2clip_llava --model_args pretrained=DIR --tasks pope ...``.

lmms-eval (>= 0.7) finds external models through the ``lmms_eval.models`` entry-point group; this package
declares ``llm2clip_llava = "mllm.eval.lmms_adapter:lmms_manifest"`` there, so installing both is enough.
Nothing in ``mllm`` imports this module: lmms-eval stays optional. Without lmms-eval the class still works
on objects shaped like its ``Instance`` (``.args``), which is how its request handling is tested offline.

Requests: ``generate_until`` decodes with the checkpoint's own template through ``generate_text`` (batched,
left-padded, grouped by generation kwargs), then cuts the answer at the first ``until`` string.
``loglikelihood`` scores the continuation's tokens after the same templated prompt generation sees (an empty
context, as in unconditional multiple-choice requests, is scored after BOS alone, without a template) and
returns ``(value, whether greedy decoding would produce exactly those tokens)``. lmms-eval's
``multiple_choice`` scoring picks the *smallest* value (``np.argmin``: its models return a loss), so
``value`` is the summed negative log-likelihood by default; ``loglikelihood=logprob`` returns the summed
log-probability instead (lm-evaluation-harness's convention, larger is better).
"""
from __future__ import annotations

import json
import logging
import os

try:  # subclass lmms-eval's base when it is installed (its registry checks this)
    from lmms_eval.api.model import lmms as _LmmsBase

    HAVE_LMMS_EVAL = True
except ImportError:  # pragma: no cover - exercised when lmms-eval is absent
    _LmmsBase = object
    HAVE_LMMS_EVAL = False

MODEL_ID = "llm2clip_llava"
CLASS_PATH = "mllm.eval.lmms_adapter.LLM2CLIPLlava"
_KNOWN_GEN_KWARGS = {"until", "max_new_tokens", "temperature", "top_p", "top_k", "do_sample", "num_beams"}
log = logging.getLogger(__name__)


def lmms_manifest():
    """Entry point payload for lmms-eval's model registry (group ``lmms_eval.models``)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)


def _check_ll_format(value: str) -> None:
    if value not in ("nll", "logprob"):
        raise ValueError(f"loglikelihood must be 'nll' or 'logprob', got {value!r}")


class _NoCacheHook:
    def add_partial(self, attr, req, res) -> None:
        pass


class LLM2CLIPLlava(_LmmsBase):
    """``pretrained``: a checkpoint directory; ``batch_size``, ``device``, ``dtype`` (fp32/bf16/fp16),
    ``quantization`` (auto/none/4bit/8bit), ``max_new_tokens`` (used when a task does not set it) and
    ``loglikelihood`` (``nll``, for lmms-eval's argmin scoring, or ``logprob``)."""

    is_simple = True

    def __init__(self, pretrained: str, device: str | None = None, batch_size: int | str = 1,
                 dtype: str | None = None, quantization: str | None = "auto", max_new_tokens: int | str = 1024,
                 loglikelihood: str = "nll", max_batch_size=None, **unknown) -> None:
        if unknown:
            raise TypeError(f"llm2clip_llava got unknown model_args {sorted(unknown)}; known: pretrained, device, "
                            "batch_size, dtype, quantization, max_new_tokens, loglikelihood")
        _check_ll_format(loglikelihood)
        import torch

        from ..serialization import load_model

        if device is None:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        model, processor = load_model(pretrained, quantization=None if quantization == "none" else quantization,
                                      dtype=dtype, device=device)
        self._setup(model, processor, batch_size, max_new_tokens, loglikelihood)

    @classmethod
    def from_loaded(cls, model, processor, batch_size: int | str = 1, max_new_tokens: int | str = 1024,
                    loglikelihood: str = "nll"):
        """Wrap a model already in memory (tests, notebooks)."""
        _check_ll_format(loglikelihood)
        self = cls.__new__(cls)
        self._setup(model, processor, batch_size, max_new_tokens, loglikelihood)
        return self

    def _setup(self, model, processor, batch_size, max_new_tokens, ll_format) -> None:
        super().__init__()
        self.ll_format = ll_format
        for name, default in (("_rank", 0), ("_world_size", 1), ("task_dict", {}), ("cache_hook", _NoCacheHook())):
            if not hasattr(self, name):
                setattr(self, name, default)
        try:
            self.batch_size = int(batch_size)
            self.max_new_tokens = int(max_new_tokens)
        except (TypeError, ValueError) as e:
            raise ValueError(f"batch_size and max_new_tokens must be integers (got {batch_size!r}, "
                             f"{max_new_tokens!r}); 'auto' batch sizes are not supported") from e
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be >= 1")
        self.model, self.processor = model, processor
        self._warned: set[str] = set()

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    # ------------------------------------------------------------------ request parts
    def _visuals(self, doc_to_visual, task, split, doc_id) -> list:
        """The request's images as RGB PIL images (lmms-eval hands PIL images, sometimes paths)."""
        from PIL import Image

        from vision_tower import ImageLoadError, load_image

        if doc_to_visual is None:
            return []
        try:
            doc = self.task_dict[task][split][doc_id]
        except (KeyError, IndexError, TypeError) as e:
            raise KeyError(f"no document {task}/{split}/{doc_id} in task_dict (set by lmms-eval's evaluator)") from e
        visuals = doc_to_visual(doc) or []
        if not isinstance(visuals, (list, tuple)):
            visuals = [visuals]
        flat = [v for sub in visuals for v in (sub if isinstance(sub, (list, tuple)) else [sub])]
        images = []
        for v in flat:
            if not isinstance(v, (Image.Image, str, os.PathLike, bytes)):
                raise ValueError(f"{task} doc {doc_id}: visual of type {type(v).__name__} is not an image; "
                                 "llm2clip_llava reads images only (no video or audio)")
            try:
                images.append(load_image(v))
            except ImageLoadError as e:
                raise ValueError(f"{task} doc {doc_id}: cannot use visual {str(v)[:120]!r} ({e}); "
                                 "llm2clip_llava reads images only (no video or audio)") from e
        return images

    def _prompt(self, context: str, n_images: int, where: str) -> str:
        """LLaVA's rule: markers go first unless the task placed them; their count must match the images."""
        from ..constants import IMAGE_TOKEN
        from .types import prompt_with_image

        markers = context.count(IMAGE_TOKEN)
        if markers == 0:
            return prompt_with_image(context, n_images) if n_images else context
        if markers != n_images:
            raise ValueError(f"{where}: the context has {markers} {IMAGE_TOKEN} marker(s) but {n_images} image(s)")
        return context

    def _settings(self, gen_kwargs: dict):
        from ..generation import GenerationSettings

        gen_kwargs = dict(gen_kwargs or {})
        until = gen_kwargs.get("until") or []
        if isinstance(until, str):
            until = [until]
        if not isinstance(until, (list, tuple)) or not all(isinstance(u, str) for u in until):
            raise ValueError(f"gen_kwargs['until'] must be a string or a list of strings, got {until!r}")
        if int(gen_kwargs.get("num_beams") or 1) > 1:
            raise NotImplementedError("llm2clip_llava decodes greedily (or samples with temperature > 0); "
                                      f"num_beams={gen_kwargs['num_beams']} is not supported")
        ignored = sorted(set(gen_kwargs) - _KNOWN_GEN_KWARGS - self._warned)
        if ignored:
            self._warned.update(ignored)
            log.warning("llm2clip_llava ignores gen_kwargs %s", ignored)
        temperature = float(gen_kwargs.get("temperature") or 0.0)
        if gen_kwargs.get("do_sample") is False:
            temperature = 0.0
        settings = GenerationSettings(
            max_new_tokens=int(gen_kwargs.get("max_new_tokens") or self.max_new_tokens), temperature=temperature,
            top_p=None if gen_kwargs.get("top_p") is None else float(gen_kwargs["top_p"]),
            top_k=None if gen_kwargs.get("top_k") is None else int(gen_kwargs["top_k"]))
        settings.kwargs()  # validate now, with a clear message
        return settings, [u for u in until if u]

    def _progress(self, total: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, disable=self.rank != 0, desc=desc)

    # ------------------------------------------------------------------ lmms-eval API
    def generate_until(self, requests) -> list[str]:
        from ..generation import generate_text

        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        bar = self._progress(len(requests), "llm2clip_llava generate")
        for indices in groups.values():
            settings, until = self._settings(requests[indices[0]].args[1])
            indices = sorted(indices, key=lambda i: -len(requests[i].args[0]))  # longest first: OOM shows early
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                convs, images = [], []
                for i in chunk:
                    context, _, doc_to_visual, doc_id, task, split = requests[i].args
                    visuals = self._visuals(doc_to_visual, task, split, doc_id)
                    prompt = self._prompt(context, len(visuals), f"{task} doc {doc_id}")
                    convs.append([{"from": "human", "value": prompt}])
                    images.append(visuals)
                texts = generate_text(self.model, self.processor, convs, images, settings)
                for i, text in zip(chunk, texts):
                    for stop in until:
                        text = text.split(stop)[0]
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", (requests[i].args[0], requests[i].args[1]), text)
                bar.update(len(chunk))
        bar.close()
        return results  # type: ignore[return-value]

    def _loglikelihood_ids(self, context: str, continuation: str, n_images: int, where: str):
        """(context ids, continuation ids): context as generation sees it; the continuation's tokens are the
        ones it gets when tokenized after the rendered context (lm-eval's convention)."""
        from ..templates import render
        from ..tokenization import tokenize_with_offsets

        tok, proc = self.processor.tokenizer, self.processor
        if not context:
            if n_images:
                raise ValueError(f"{where}: images need a context to carry their {proc.image_token} markers")
            start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
            return [start], list(tok(continuation, add_special_tokens=False)["input_ids"])
        conv = [{"from": "human", "value": self._prompt(context, n_images, where)}]
        ctx_ids = proc.encode_prompt(conv)
        text = render(conv, proc.template, tok, add_generation_prompt=True)
        n_ctx = len(tokenize_with_offsets(tok, text, proc.image_token_id)[0])
        whole = tokenize_with_offsets(tok, text + continuation, proc.image_token_id)[0]
        return ctx_ids, whole[n_ctx:]

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        results: list[tuple[float, bool]] = []
        bar = self._progress(len(requests), "llm2clip_llava loglikelihood")
        for start in range(0, len(requests), self.batch_size):
            rows = []
            for req in requests[start:start + self.batch_size]:
                args = req.args
                if len(args) == 2:  # unconditional multiple-choice request: ("", choice)
                    context, continuation, visuals, where = args[0], args[1], [], "unconditional request"
                else:
                    context, target, doc_to_visual, doc_id, task, split = args
                    where = f"{task} doc {doc_id}"
                    visuals = self._visuals(doc_to_visual, task, split, doc_id)
                    continuation = target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
                ctx_ids, cont_ids = self._loglikelihood_ids(context, str(continuation), len(visuals), where)
                rows.append((ctx_ids, cont_ids, visuals))
            results.extend(self._score_rows(rows))
            bar.update(len(rows))
        bar.close()
        return results

    def _score_rows(self, rows) -> list[tuple[float, bool]]:
        """One left-padded forward for a batch of (context ids, continuation ids, images)."""
        import torch

        out: list[tuple[float, bool]] = [(0.0, True)] * len(rows)  # an empty continuation has probability 1
        scored = [i for i, (_, cont, _) in enumerate(rows) if cont]
        if not scored:
            return out
        input_ids, attention_mask = self.processor.pad([rows[i][0] + rows[i][1] for i in scored], "left")
        images = [im for i in scored for im in rows[i][2]]
        pixel_values = self.processor.image_processor(images) if images else None
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                                return_logits=True).logits
        for row, i in enumerate(scored):
            cont = torch.tensor(rows[i][1], device=logits.device)
            logprobs = torch.log_softmax(logits[row, -len(cont) - 1:-1].float(), dim=-1)
            total = float(logprobs.gather(-1, cont[:, None]).sum())
            out[i] = (total if self.ll_format == "logprob" else -total, bool((logprobs.argmax(-1) == cont).all()))
        return out

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("llm2clip_llava does not implement generate_until_multi_round (multi-round "
                                  "tasks); use single-turn generate_until tasks")
