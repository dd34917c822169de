"""An lmms-eval model: ``lmms-eval --model llm2clip_llava --model_args pretrained=DIR --tasks pope ...``.

lmms-eval (>= 0.7) finds external models through the ``lmms_eval.models`` entry-point group; this package
declares ``llm2clip_llava = "mllm.eval.lmms_adapter:lmms_manifest"`` there, so installing both is enough.
Nothing in ``mllm`` imports this module: lmms-eval stays optional. Without lmms-eval the class still works
on objects shaped like its ``Instance`` (``.args``), which is how its request handling is tested offline.

Requests: ``generate_until`` decodes with the checkpoint's own template through ``generate_text`` (batched,
left-padded, grouped by generation kwargs), then cuts the answer at the first ``until`` string;
``generate_until_multi_round`` does the same round after round, as the task's ``doc_to_text`` directs.
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

from ..constants import IMAGE_TOKEN
from ..templates import render
from ..tokenization import tokenize_with_offsets
from .types import prompt_with_image

# lmms-eval imports this module for its model registry on every run, whichever model a run uses: torch, the
# model stack and the image code are imported inside the methods that use them, when our model is chosen.
try:  # subclass lmms-eval's base when it is installed (its registry checks this)
    from lmms_eval.api.model import lmms as _LmmsBase

    HAVE_LMMS_EVAL = True
except ImportError:  # pragma: no cover - exercised when lmms-eval is absent
    _LmmsBase = object
    HAVE_LMMS_EVAL = False

MODEL_ID = "llm2clip_llava"
CLASS_PATH = "mllm.eval.lmms_adapter.LLM2CLIPLlava"
MAX_ROUNDS = 64  # a multi-round task whose doc_to_text never says "done" fails instead of looping forever
_KNOWN_GEN_KWARGS = {"until", "max_new_tokens", "temperature", "top_p", "top_k", "do_sample", "num_beams"}
log = logging.getLogger(__name__)


def lmms_manifest():
    """Entry point payload for lmms-eval's model registry (group ``lmms_eval.models``)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)


def _check_ll_format(value: str) -> None:
    if value not in ("nll", "logprob"):
        raise ValueError(f"loglikelihood must be 'nll' or 'logprob', got {value!r}")


def _flag(name: str, value: bool | str) -> bool:
    """A boolean model_arg: lmms-eval passes `--model_args` values as strings (`merge_on_load=true`)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


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
                 loglikelihood: str = "nll", max_batch_size=None, merge_on_load: bool | str = False,
                 **unknown) -> None:
        if unknown:
            raise TypeError(f"llm2clip_llava got unknown model_args {sorted(unknown)}; known: pretrained, device, "
                            "batch_size, dtype, quantization, max_new_tokens, loglikelihood, merge_on_load")
        _check_ll_format(loglikelihood)
        merge_on_load = _flag("merge_on_load", merge_on_load)
        import torch

        from ..serialization import load_model

        if device is None:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        model, processor = load_model(pretrained, quantization=None if quantization == "none" else quantization,
                                      dtype=dtype, device=device, merge_on_load=merge_on_load)
        self._setup(model, processor, batch_size, max_new_tokens, loglikelihood)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """Build from ``--model_args`` plus the keywords lmms-eval adds from its own flags (``batch_size``,
        ``max_batch_size``, ``device``). lmms-eval's base class passes both sets to ``__init__``, which fails
        with "got multiple values for keyword argument 'batch_size'" when ``--model_args`` also sets it; here
        ``--model_args`` wins (it is the more specific), with a warning when the two differ from lmms-eval's
        own default."""
        from lmms_eval.utils import simple_parse_args_string

        args = simple_parse_args_string(arg_string or "")
        for key, value in (additional_config or {}).items():
            if value is None:
                continue
            if key not in args:
                args[key] = value
            elif str(args[key]) != str(value) and not (key == "batch_size" and str(value) == "1"):
                log.warning("model_args %s=%s overrides lmms-eval's --%s %s", key, args[key], key, value)
        return cls(**args)

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
        if doc_to_visual is None:
            return []
        return self._load_visuals(doc_to_visual(self._doc(task, split, doc_id)), f"{task} doc {doc_id}")

    def _doc(self, task, split, doc_id):
        try:
            return self.task_dict[task][split][doc_id]
        except (KeyError, IndexError, TypeError) as e:
            raise KeyError(f"no document {task}/{split}/{doc_id} in task_dict (set by lmms-eval's evaluator)") from e

    @staticmethod
    def _load_visuals(visuals, where: str) -> list:
        """Images, paths or bytes (possibly nested one level, possibly None) -> RGB PIL images."""
        from PIL import Image

        from vision_tower import ImageLoadError, load_image

        visuals = visuals or []
        if not isinstance(visuals, (list, tuple)):
            visuals = [visuals]
        flat = [v for sub in visuals for v in (sub if isinstance(sub, (list, tuple)) else [sub])]
        images = []
        for v in flat:
            if not isinstance(v, (Image.Image, str, os.PathLike, bytes)):
                raise ValueError(f"{where}: visual of type {type(v).__name__} is not an image; "
                                 "llm2clip_llava reads images only (no video or audio)")
            try:
                images.append(load_image(v))
            except ImageLoadError as e:
                raise ValueError(f"{where}: cannot use visual {str(v)[:120]!r} ({e}); "
                                 "llm2clip_llava reads images only (no video or audio)") from e
        return images

    def _prompt(self, context: str, n_images: int, where: str) -> str:
        """LLaVA's rule: markers go first unless the task placed them; their count must match the images."""
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
            raise ValueError("llm2clip_llava decodes greedily (or samples with temperature > 0); "
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
    def _generate(self, prompts: list[tuple[str, list, str]], settings, until: list[str]) -> list[str]:
        """(context, images, where) -> answers cut at the first ``until`` string, in batches of batch_size."""
        from ..generation import generate_text

        texts: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start:start + self.batch_size]
            convs = [[{"from": "human", "value": self._prompt(context, len(images), where)}]
                     for context, images, where in chunk]
            for text in generate_text(self.model, self.processor, convs, [images for _, images, _ in chunk], settings):
                for stop in until:
                    text = text.split(stop)[0]
                texts.append(text)
        return texts

    @staticmethod
    def _group_by_gen_kwargs(requests) -> list[list[int]]:
        """Request indices grouped by generation kwargs (one setting per batch), longest context first."""
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        return [sorted(g, key=lambda i: -len(requests[i].args[0])) for g in groups.values()]  # OOM shows early

    def generate_until(self, requests) -> list[str]:
        results: list[str | None] = [None] * len(requests)
        bar = self._progress(len(requests), "llm2clip_llava generate")
        for group in self._group_by_gen_kwargs(requests):
            settings, until = self._settings(requests[group[0]].args[1])
            for start in range(0, len(group), self.batch_size):
                chunk = group[start:start + self.batch_size]
                prompts = []
                for i in chunk:
                    context, _, doc_to_visual, doc_id, task, split = requests[i].args
                    prompts.append((context, self._visuals(doc_to_visual, task, split, doc_id), f"{task} doc {doc_id}"))
                for i, text in zip(chunk, self._generate(prompts, settings, until)):
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", (requests[i].args[0], requests[i].args[1]), text)
                bar.update(len(chunk))
        bar.close()
        return results  # type: ignore[return-value]

    def _loglikelihood_ids(self, context: str, continuation: str, n_images: int, where: str):
        """(context ids, continuation ids): context as generation sees it; the continuation's tokens are the
        ones it gets when tokenized after the rendered context (lm-eval's convention)."""
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

    def generate_until_multi_round(self, requests) -> list[list[str]]:
        """lmms-eval's multi-round protocol (e.g. MMSearch end-to-end): round 0 answers the request's context
        with its ``doc_to_visual`` images; after each round the task's ``doc_to_text(doc, previous_output=...,
        round_idx=..., previous_round_info=...)`` returns (visuals, context, done, round results, info) for the
        next one. Each request ends with its list of round answers, which the task's ``process_results`` reads.
        Requests still running are batched together round by round."""
        results: list[list[str] | None] = [None] * len(requests)
        bar = self._progress(len(requests), "llm2clip_llava multi-round")
        for group in self._group_by_gen_kwargs(requests):
            settings, until = self._settings(requests[group[0]].args[1])
            state = {}
            for i in group:
                context, _, doc_to_visual, _, doc_id, task, split = requests[i].args
                state[i] = {"context": context, "images": self._visuals(doc_to_visual, task, split, doc_id),
                            "answers": [], "info": None}
            round_idx = 0
            while state:
                if round_idx >= MAX_ROUNDS:
                    stuck = ", ".join(self._where(requests[i], round_idx) for i in list(state)[:3])
                    raise RuntimeError(f"doc_to_text never signalled the end after {MAX_ROUNDS} rounds ({stuck})")
                active = list(state)
                prompts = [(state[i]["context"], state[i]["images"], self._where(requests[i], round_idx))
                           for i in active]
                for i, text in zip(active, self._generate(prompts, settings, until)):
                    state[i]["answers"].append(text)
                round_idx += 1
                for i in active:
                    _, _, _, doc_to_text, doc_id, task, split = requests[i].args
                    st = state[i]
                    visuals, context, done, answers, st["info"] = doc_to_text(
                        self._doc(task, split, doc_id), previous_output=list(st["answers"]), round_idx=round_idx,
                        previous_round_info=st["info"])
                    st["answers"] = list(answers) if answers is not None else st["answers"]
                    if done:
                        results[i] = st["answers"]
                        self.cache_hook.add_partial("generate_until_multi_round",
                                                    (requests[i].args[0], requests[i].args[1]), st["answers"])
                        del state[i]
                        bar.update(1)
                    else:
                        st["context"] = context
                        st["images"] = self._load_visuals(visuals, self._where(requests[i], round_idx))
        bar.close()
        return results  # type: ignore[return-value]

    @staticmethod
    def _where(request, round_idx: int) -> str:
        *_, doc_id, task, _ = request.args
        return f"{task} doc {doc_id} round {round_idx}"
