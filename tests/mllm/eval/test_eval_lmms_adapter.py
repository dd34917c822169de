"""The lmms-eval adapter's request handling, offline, against lmms-eval's real ``Instance`` when it is
installed and against a stand-in with the same ``.args`` interface otherwise (or in addition)."""
from __future__ import annotations

import dataclasses
import math
import sys

import pytest
import torch
from PIL import Image

from mllm.constants import IGNORE_INDEX
from mllm.eval.lmms_adapter import LLM2CLIPLlava
from mllm.generation import GenerationSettings, generate_text

try:
    import lmms_eval  # noqa: F401  (an empty package __init__: cheap)

    HAVE_LMMS = True
except ImportError:
    HAVE_LMMS = False
TASK, SPLIT = "synth", "test"


@dataclasses.dataclass
class StandInInstance:
    """lmms-eval's Instance as the model sees it: request_type, arguments, and ``args``."""

    request_type: str
    arguments: tuple
    idx: int = 0
    metadata: dict = dataclasses.field(default_factory=dict)

    @property
    def args(self):
        return self.arguments if isinstance(self.arguments, tuple) else (self.arguments,)


@pytest.fixture(params=["lmms_eval", "stand_in"])
def make_request(request):
    if request.param == "lmms_eval":
        if not HAVE_LMMS:
            pytest.skip("lmms-eval not installed")
        from lmms_eval.api.instance import Instance

        def make(kind, arguments, doc_id=0):
            return Instance(request_type=kind, arguments=arguments, idx=0,
                            metadata={"task": TASK, "doc_id": doc_id, "repeats": 1})
        return make
    return lambda kind, arguments, doc_id=0: StandInInstance(kind, arguments)


def _docs(n=5):
    colours = ["red", "blue", "green", "black", "white"]
    return [{"image": Image.new("RGB", (20 + 7 * i, 30), colours[i % 5]),
             "question": f"What is this {i}?" + " really" * i, "answer": colours[i % 5]} for i in range(n)]


def doc_to_visual(doc):
    return [doc["image"]]


@pytest.fixture(scope="module")
def adapter(loaded_checkpoint):
    model, processor = loaded_checkpoint
    lm = LLM2CLIPLlava.from_loaded(model, processor, batch_size=2, max_new_tokens=5)
    lm.task_dict = {TASK: {SPLIT: _docs()}}
    return lm


def _direct(adapter, prompt, image, max_new_tokens=5):
    return generate_text(adapter.model, adapter.processor, [[{"from": "human", "value": prompt}]], [[image]],
                         GenerationSettings(max_new_tokens=max_new_tokens))[0]


def test_generate_until_equals_direct_generation(adapter, make_request):
    docs = adapter.task_dict[TASK][SPLIT]
    reqs = [make_request("generate_until", (d["question"], {"max_new_tokens": 4 if i % 2 else 6, "temperature": 0,
                                                            "until": []}, doc_to_visual, i, TASK, SPLIT), i)
            for i, d in enumerate(docs)]
    out = adapter.generate_until(reqs)
    # markers are added LLaVA's way when the task gives none; request order is kept across groups and batches
    assert out == [_direct(adapter, "<image>\n" + d["question"], d["image"], 4 if i % 2 else 6)
                   for i, d in enumerate(docs)]
    placed = make_request("generate_until", ("Look: <image>\n" + docs[0]["question"], {"max_new_tokens": 6},
                                             doc_to_visual, 0, TASK, SPLIT))
    assert adapter.generate_until([placed]) == [_direct(adapter, "Look: <image>\n" + docs[0]["question"],
                                                        docs[0]["image"], 6)]


def test_until_cuts_the_answer(adapter, make_request):
    doc = adapter.task_dict[TASK][SPLIT][1]
    full = _direct(adapter, "<image>\n" + doc["question"], doc["image"], 6)
    assert len(full) > 3
    stop = full[2:4]
    req = make_request("generate_until", (doc["question"], {"max_new_tokens": 6, "until": stop}, doc_to_visual, 1,
                                          TASK, SPLIT), 1)
    assert adapter.generate_until([req]) == [full.split(stop)[0]]


def test_bad_requests_are_named(adapter, make_request):
    def req(context, kwargs, visual=doc_to_visual):
        return make_request("generate_until", (context, kwargs, visual, 0, TASK, SPLIT))

    with pytest.raises(ValueError, match="num_beams=3 is not supported"):
        adapter.generate_until([req("q", {"num_beams": 3})])
    with pytest.raises(ValueError, match="until"):
        adapter.generate_until([req("q", {"until": 5})])
    with pytest.raises(ValueError, match="2 <image> marker"):
        adapter.generate_until([req("<image> <image> q", {})])
    with pytest.raises(ValueError, match="reads images only"):
        adapter.generate_until([req("q", {}, lambda doc: ["/videos/clip.mp4"])])
    with pytest.raises(ValueError, match="reads images only"):
        adapter.generate_until([req("q", {}, lambda doc: [{"array": [0.0], "sampling_rate": 16000}])])
    assert adapter.generate_until_multi_round([]) == []
    with pytest.raises(TypeError, match="unknown model_args"):
        LLM2CLIPLlava(pretrained="/nowhere", use_flash_attention_2=True)


def test_multi_round_follows_doc_to_text_and_equals_direct_generation(adapter, make_request):
    """Round 0 answers the context with doc_to_visual's image; later rounds take doc_to_text's context and
    images; each request ends with its round answers; requests of different lengths batch together."""
    docs = adapter.task_dict[TASK][SPLIT]
    calls = []

    def doc_to_text(doc, lmms_eval_specific_kwargs=None, previous_output=None, round_idx=None,
                    previous_round_info=None):
        rounds = 1 + docs.index(doc) % 3  # doc 0: one round, doc 1: two, doc 2: three
        calls.append((docs.index(doc), round_idx, list(previous_output), previous_round_info))
        if round_idx >= rounds:
            return None, None, True, previous_output, None
        other = docs[(docs.index(doc) + round_idx) % len(docs)]
        return [other["image"]], f"Round {round_idx}: {other['question']}", False, previous_output, {"r": round_idx}

    kwargs = {"max_new_tokens": 5, "temperature": 0, "until": []}
    reqs = [make_request("generate_until_multi_round", (docs[i]["question"], kwargs, doc_to_visual, doc_to_text,
                                                        i, TASK, SPLIT), i) for i in range(3)]
    out = adapter.generate_until_multi_round(reqs)
    assert [len(answers) for answers in out] == [1, 2, 3]
    for i, answers in enumerate(out):
        assert answers[0] == _direct(adapter, f"<image>\n{docs[i]['question']}", docs[i]["image"])
        for r in range(1, len(answers)):
            other = docs[(i + r) % len(docs)]
            assert answers[r] == _direct(adapter, f"<image>\nRound {r}: {other['question']}", other["image"])
    # doc_to_text saw every earlier answer and its own round info back
    assert (2, 2, out[2][:2], {"r": 1}) in calls and (0, 1, out[0][:1], None) in calls


def test_multi_round_that_never_ends_is_stopped(adapter, make_request, monkeypatch):
    import mllm.eval.lmms_adapter as mod

    monkeypatch.setattr(mod, "MAX_ROUNDS", 3)
    docs = adapter.task_dict[TASK][SPLIT]

    def forever(doc, previous_output=None, round_idx=None, previous_round_info=None, **_):
        return [], "again", False, previous_output, None

    req = make_request("generate_until_multi_round", ("q", {"max_new_tokens": 2}, doc_to_visual, forever, 0, TASK,
                                                       SPLIT))
    with pytest.raises(RuntimeError, match="never signalled the end after 3 rounds"):
        adapter.generate_until_multi_round([req])
    assert docs  # the task data is untouched


def _independent_logprob(adapter, context, continuation, image):
    """-(mean CE x n) from the model's own label-only loss path, on the same ids."""
    ctx_ids, cont_ids = adapter._loglikelihood_ids(context, continuation, 1, "test")
    ids = torch.tensor([ctx_ids + cont_ids])
    labels = torch.tensor([[IGNORE_INDEX] * len(ctx_ids) + cont_ids])
    out = adapter.model(input_ids=ids, labels=labels, pixel_values=adapter.processor.image_processor([image]))
    assert out.num_label_tokens == len(cont_ids)
    return -float(out.loss) * len(cont_ids)


def test_loglikelihood_matches_the_loss_and_batching(adapter, make_request, loaded_checkpoint):
    docs = adapter.task_dict[TASK][SPLIT]
    conts = [" red", " blue and green", " A", " the answer is 42", " no"]
    reqs = [make_request("loglikelihood", (d["question"], c, doc_to_visual, i, TASK, SPLIT), i)
            for i, (d, c) in enumerate(zip(docs, conts))]
    batched = adapter.loglikelihood(reqs)  # batch_size 2: left-padded batches of different lengths
    single = LLM2CLIPLlava.from_loaded(*loaded_checkpoint, batch_size=1, loglikelihood="logprob")
    single.task_dict = adapter.task_dict
    ones = single.loglikelihood(reqs)
    for (nll, greedy), (lp1, greedy1), d, c in zip(batched, ones, docs, conts):
        # default: summed negative log-likelihood (lmms-eval's multiple_choice takes the argmin)
        assert nll > 0 and math.isclose(-nll, lp1, rel_tol=1e-4, abs_tol=1e-4) and greedy == greedy1
        assert math.isclose(-nll, _independent_logprob(adapter, "<image>\n" + d["question"], c, d["image"]),
                            rel_tol=1e-4, abs_tol=1e-4)
    assert len({round(v, 3) for v, _ in batched}) == len(conts)
    # doc_to_target given as a function of the doc, and an unconditional ("", choice) request
    target_req = make_request("loglikelihood", (docs[0]["question"], lambda doc: " " + doc["answer"], doc_to_visual, 0,
                                                TASK, SPLIT))
    assert math.isclose(adapter.loglikelihood([target_req])[0][0], batched[0][0], rel_tol=1e-4, abs_tol=1e-4)
    (uncond, _), = adapter.loglikelihood([make_request("loglikelihood", ("", " red"))])
    assert uncond > 0 and math.isfinite(uncond)
    with pytest.raises(ValueError, match="'nll' or 'logprob'"):
        LLM2CLIPLlava.from_loaded(*loaded_checkpoint, loglikelihood="loss")


def test_is_greedy_flags_exactly_the_greedy_continuation(adapter):
    doc = adapter.task_dict[TASK][SPLIT][2]
    ctx_ids, _ = adapter._loglikelihood_ids(doc["question"], " x", 1, "test")
    batch = adapter.processor.pad([ctx_ids], "left")
    greedy = adapter.model.generate(input_ids=batch[0], attention_mask=batch[1],
                                    pixel_values=adapter.processor.image_processor([doc["image"]]),
                                    max_new_tokens=4, min_new_tokens=4)[0].tolist()
    (nll, is_greedy), = adapter._score_rows([(ctx_ids, greedy, [doc["image"]])])
    assert is_greedy and nll > 0
    altered = greedy[:-1] + [(greedy[-1] + 1) % 32000]
    (nll2, is_greedy2), = adapter._score_rows([(ctx_ids, altered, [doc["image"]])])
    assert not is_greedy2 and nll2 > nll  # the argmax token was the likeliest one


@pytest.mark.skipif(not HAVE_LMMS, reason="lmms-eval not installed")
def test_entry_point_registers_the_model_with_lmms_eval(tmp_path, monkeypatch, tiny_checkpoint):
    """The exact entry point the package declares, seen by lmms-eval's own registry, builds a working model."""
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    dist = tmp_path / "llm2clip_llava_entrypoint_test-0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: llm2clip-llava-entrypoint-test\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text(
        '[lmms_eval.models]\nllm2clip_llava = "mllm.eval.lmms_adapter:lmms_manifest"\n'.replace('"', ""))
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    registry = ModelRegistryV2()
    registry.load_entrypoint_manifests()
    cls = registry.get_model_class("llm2clip_llava")
    assert cls is LLM2CLIPLlava and cls.is_simple
    lm = cls.create_from_arg_string(f"pretrained={tiny_checkpoint},max_new_tokens=3",
                                    {"batch_size": 2, "max_batch_size": None, "device": "cpu"})
    assert lm.batch_size == 2 and lm.max_new_tokens == 3 and lm.rank == 0 and lm.world_size == 1


def test_batch_size_in_model_args_and_from_lmms_eval_both_work(tiny_checkpoint):
    """lmms-eval passes its own batch_size/device next to --model_args; model_args win instead of crashing with
    "got multiple values for keyword argument 'batch_size'"."""
    pytest.importorskip("lmms_eval")
    lm = LLM2CLIPLlava.create_from_arg_string(f"pretrained={tiny_checkpoint},batch_size=8,max_new_tokens=3",
                                              {"batch_size": 1, "max_batch_size": None, "device": "cpu"})
    assert lm.batch_size == 8 and lm.max_new_tokens == 3
    lm = LLM2CLIPLlava.create_from_arg_string(f"pretrained={tiny_checkpoint}", {"batch_size": "3", "device": "cpu"})
    assert lm.batch_size == 3


def test_merge_on_load_model_arg_reaches_the_loader(tiny_checkpoint, monkeypatch):
    """`--model_args pretrained=...,merge_on_load=true` serves the bf16/fp32 merge, as `eval --merge-on-load` does."""
    import mllm.serialization as serialization

    real_load, seen = serialization.load_model, []

    def spy(directory, **kwargs):
        seen.append(kwargs["merge_on_load"])
        return real_load(directory, **kwargs)

    monkeypatch.setattr(serialization, "load_model", spy)
    for text, expected in (("true", True), ("False", False)):
        LLM2CLIPLlava.create_from_arg_string(f"pretrained={tiny_checkpoint},merge_on_load={text}", {"device": "cpu"})
        assert seen[-1] is expected
    with pytest.raises(ValueError, match="merge_on_load must be true or false"):
        LLM2CLIPLlava(str(tiny_checkpoint), device="cpu", merge_on_load="maybe")
