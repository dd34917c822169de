"""Templates: LLaVA-exact prompts, and labels that are exactly the assistant turns plus their end tokens."""
import copy
import os
import shutil
import sys
from pathlib import Path

import mistral_common
import pytest
import transformers

from mllm.constants import IGNORE_INDEX, IMAGE_TOKEN
from mllm.data.labels import check_supervision, label_from_spans
from mllm.templates import TemplateError, encode, render, render_spans
from mllm.tokenization import add_image_token

SYSTEM_V1 = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
CHATML = (
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA2 = (  # the Llama-2-chat template: BOS as text before every [INST], content stripped, raises on bad order
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)


def _llama(tmp_path_factory, name):
    d = tmp_path_factory.mktemp(name)
    shutil.copy(Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1", d / "tokenizer.model")
    tok = transformers.LlamaTokenizer.from_pretrained(d)
    add_image_token(tok)
    return tok


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return _llama(tmp_path_factory, "llama")


@pytest.fixture(scope="module")
def chatml(tmp_path_factory):
    tok = _llama(tmp_path_factory, "chatml")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}, replace_extra_special_tokens=False)
    tok.chat_template = CHATML
    return tok


@pytest.fixture(scope="module")
def bpe_chatml():
    """A byte-level BPE tokenizer (the GPT-2/Llama-3/Qwen family) trained here, with ChatML and no BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    corpus = ["What color is the bus? White and red. How many wheels? Four. A cat sat on the mat.", "日本語 naïve 🦙"] * 20
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(corpus, trainer)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}, replace_extra_special_tokens=False)
    add_image_token(tok)
    tok.chat_template = CHATML
    return tok


@pytest.fixture(scope="module")
def llama2(tmp_path_factory):
    tok = _llama(tmp_path_factory, "llama2")
    tok.chat_template = LLAMA2
    return tok


def H(v):
    return {"from": "human", "value": v}


def G(v):
    return {"from": "gpt", "value": v}


CONVS = {
    "image_single": [H("<image>\nWhat color is the bus?"), G("White and red.")],
    "image_end_marker": [H("Describe the image.\n<image>"), G("A dog on grass.")],
    "multi_turn": [H("What is this?\n<image>"), G("A cat."), H("And its colour?"), G("Black, mostly.\nWith white paws."),
                   H("Sure?"), G("Yes.")],
    "text_only": [H("Write a haiku about rain."), G("Soft rain on the roof\nwhispers to the sleeping town\nmorning smells of earth")],
    "unicode": [H("<image>\n日本語で説明して 🦙"), G("これは犬です 🐶 — naïve café")],
    "two_images": [H("<image>\n<image>\nCompare them."), G("The left one is larger.")],
}


def _runs(ids, labels):
    """Maximal runs of supervised tokens, checking labels equal ids where supervised."""
    runs, cur = [], []
    for tok, lab in zip(ids, labels):
        if lab == IGNORE_INDEX:
            if cur:
                runs.append(cur)
            cur = []
        else:
            assert lab == tok
            cur.append(tok)
    return runs + ([cur] if cur else [])


def _decode(tok, ids):
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False).lstrip()


def _expected_responses(template, conv):
    answers = [t["value"] for t in conv if t["from"] == "gpt"]
    if template == "vicuna_v1":
        return [a + "</s>" for a in answers]
    if template == "plain":
        return [a + "\n" for a in answers]
    if template in ("chatml", "bpe_chatml"):
        return [a + "<|im_end|>" for a in answers]
    return [a.strip() + " </s>" for a in answers]  # llama2


@pytest.mark.parametrize("kind", list(CONVS))
@pytest.mark.parametrize("template", ["vicuna_v1", "plain", "chatml", "llama2", "bpe_chatml"])
def test_supervised_tokens_decode_to_exactly_the_answers(request, template, kind, llama):
    conv = CONVS[kind]
    if template == "plain" and (len(conv) != 2 or IMAGE_TOKEN not in conv[0]["value"]):
        with pytest.raises(TemplateError) as err:
            encode(conv, "plain", llama, image_token_id=llama.convert_tokens_to_ids(IMAGE_TOKEN), num_image_tokens=4)
        assert err.value.reason == "template_unsupported"
        return
    chat = template in ("chatml", "llama2", "bpe_chatml")
    tok = request.getfixturevalue(template) if chat else llama
    name = "chat_template" if chat else template
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    enc = encode(conv, name, tok, image_token_id=image_id, num_image_tokens=5)
    runs = [_decode(tok, r) for r in _runs(enc.input_ids, enc.labels)]
    assert runs == [e.lstrip() for e in _expected_responses(template, conv)]
    n_images = sum(t["value"].count(IMAGE_TOKEN) for t in conv)
    assert enc.num_images == n_images
    assert enc.input_ids.count(image_id) == 5 * n_images
    assert all(lab == IGNORE_INDEX for t, lab in zip(enc.input_ids, enc.labels) if t == image_id)
    bos = tok.bos_token_id
    if template in ("vicuna_v1", "plain"):
        assert enc.input_ids[0] == bos and enc.input_ids[1] != bos
    if template == "llama2":  # BOS is template text before every [INST]: never doubled, never added on top
        assert enc.input_ids[0] == bos and enc.input_ids[1] != bos
        assert enc.input_ids.count(bos) == sum(t["from"] == "human" for t in conv)
    if template in ("chatml", "bpe_chatml"):
        assert bos is None or bos not in enc.input_ids


def test_exactly_one_bos_whether_or_not_the_tokenizer_adds_it(tmp_path):
    shutil.copy(Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1", tmp_path / "tokenizer.model")
    adds = transformers.LlamaTokenizer.from_pretrained(tmp_path, add_bos_token=True)
    plain_tok = transformers.LlamaTokenizer.from_pretrained(tmp_path)
    assert adds("x").input_ids[0] == adds.bos_token_id and plain_tok("x").input_ids[0] != plain_tok.bos_token_id
    conv = [H("q"), G("a")]
    a = encode(conv, "vicuna_v1", adds, image_token_id=None, num_image_tokens=1)
    b = encode(conv, "vicuna_v1", plain_tok, image_token_id=None, num_image_tokens=1)
    assert a.input_ids == b.input_ids and a.input_ids.count(adds.bos_token_id) == 1 and a.input_ids[0] == adds.bos_token_id


def test_labels_hold_with_a_legacy_prefix_space_tokenizer(tmp_path):
    # LLaVA's tokenization-mismatch warnings came from legacy vs non-legacy "▁" handling after "</s>";
    # span-based labels do not depend on it
    from tokenizers import pre_tokenizers

    shutil.copy(Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1", tmp_path / "tokenizer.model")
    tok = transformers.LlamaTokenizer.from_pretrained(tmp_path)
    add_image_token(tok)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=False)
    assert tok.convert_ids_to_tokens(tok("a</s>USER", add_special_tokens=False).input_ids)[2] == "▁US"
    for conv in CONVS.values():
        enc = encode(conv, "vicuna_v1", tok, image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN), num_image_tokens=2)
        runs = [_decode(tok, r) for r in _runs(enc.input_ids, enc.labels)]
        assert runs == [e.lstrip() for e in _expected_responses("vicuna_v1", conv)]


def test_vicuna_v1_byte_exact():
    # Expected strings written out from LLaVA-1.5's conversation.py (conv_vicuna_v1.get_prompt) after
    # train.py's preprocess_multimodal, commit c121f04.
    conv = [H("What color is the bus?\n<image>"), G("White and red."), H("How many wheels?"), G("Four.")]
    assert render(conv, "vicuna_v1") == (
        SYSTEM_V1 + " USER: <image>\nWhat color is the bus? ASSISTANT: White and red.</s>"
        "USER: How many wheels? ASSISTANT: Four.</s>"
    )
    assert render(conv[:3], "vicuna_v1", add_generation_prompt=True) == (
        SYSTEM_V1 + " USER: <image>\nWhat color is the bus? ASSISTANT: White and red.</s>USER: How many wheels? ASSISTANT:"
    )
    assert render([H("  <image>  hi there \n"), G(" ok ")], "vicuna_v1") == SYSTEM_V1 + " USER: <image>\nhi there ASSISTANT:  ok </s>"
    assert render([H("<image>"), G("x")], "vicuna_v1") == SYSTEM_V1 + " USER: <image> ASSISTANT: x</s>"
    assert render([H("a <image> b"), G("c")], "vicuna_v1") == SYSTEM_V1 + " USER: <image>\na  b ASSISTANT: c</s>"
    # text-only turns are left exactly as written (no strip), a leading gpt turn is dropped
    assert render([G("hello"), H(" q \n"), G("a\n")], "vicuna_v1") == SYSTEM_V1 + " USER:  q \n ASSISTANT: a\n</s>"
    # user/assistant role names and a system turn (LLaVA: Conversation.system)
    conv2 = [{"from": "system", "value": "Be brief."}, {"from": "user", "value": "Hi"}, {"from": "assistant", "value": "Hey"}]
    assert render(conv2, "vicuna_v1") == "Be brief. USER: Hi ASSISTANT: Hey</s>"


def test_plain_drops_instruction_and_supervises_caption_and_newline(llama):
    conv = [H("Describe briefly.\n<image>"), G("A red bus on a street.")]
    assert render(conv, "plain") == "<image>A red bus on a street.\n"
    assert render(conv[:1], "plain", add_generation_prompt=True) == "<image>"
    enc = encode(conv, "plain", llama, image_token_id=llama.convert_tokens_to_ids(IMAGE_TOKEN), num_image_tokens=3)
    assert enc.labels[:4] == [IGNORE_INDEX] * 4  # BOS + 3 placeholders
    assert _decode(llama, [t for t, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE_INDEX]) == "A red bus on a street.\n"


def test_chat_template_generation_form_and_system(chatml, llama2):
    conv = [{"from": "system", "value": "Be brief."}, H("<image>\nWhat?"), G("A cat."), H("Colour?")]
    assert render(conv, "chat_template", chatml, add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<image>\nWhat?<|im_end|>\n"
        "<|im_start|>assistant\nA cat.<|im_end|>\n<|im_start|>user\nColour?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render(conv, "chat_template", llama2, add_generation_prompt=True) == (
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n<image>\nWhat? [/INST] A cat. </s><s>[INST] Colour? [/INST]"
    )
    enc = encode(conv, "chat_template", chatml, image_token_id=chatml.convert_tokens_to_ids(IMAGE_TOKEN),
                 num_image_tokens=2, add_generation_prompt=True)
    assert all(lab == IGNORE_INDEX for lab in enc.labels)
    assert chatml.decode(enc.input_ids[-3:]).endswith("assistant\n")


def test_assistant_text_equal_to_template_words_is_located_correctly(chatml):
    # "assistant" also occurs in the role header: spans come from the sentinel skeleton, not from str.find
    conv = [H("assistant"), G("assistant"), H("user"), G("<|im_start|>user")]
    enc = encode(conv, "chat_template", chatml, image_token_id=None, num_image_tokens=1)
    runs = [_decode(chatml, r) for r in _runs(enc.input_ids, enc.labels)]
    assert runs == ["assistant<|im_end|>", "<|im_start|>user<|im_end|>"]


@pytest.mark.parametrize(
    "conv,reason",
    [
        ([], "no_conversations"),
        ("not a list", "malformed_record"),
        ([H("hi"), "oops"], "malformed_record"),
        ([H("hi"), {"from": "gpt", "value": 3}], "malformed_record"),
        ([H("hi"), {"from": "robot", "value": "x"}], "unknown_role"),
        ([H("hi"), G("   ")], "empty_turn"),
        ([H(""), G("x")], "empty_turn"),
        ([H("a"), H("b"), G("c")], "non_alternating"),
        ([H("a"), G("b"), G("c")], "non_alternating"),
        ([H("a"), {"from": "system", "value": "s"}, G("c")], "non_alternating"),
        ([H("a"), G("see <image>")], "image_in_assistant_turn"),
        ([H("only a question")], "no_assistant_turn"),
        ([G("leading gpt only")], "no_conversations"),
    ],
)
def test_malformed_conversations_raise_categorised_errors(conv, reason, llama):
    with pytest.raises(TemplateError) as err:
        encode(conv, "vicuna_v1", llama, image_token_id=llama.convert_tokens_to_ids(IMAGE_TOKEN), num_image_tokens=2)
    assert err.value.reason == reason


def test_leading_gpt_turn_is_dropped_like_llava(llama):
    enc = encode([G("stray"), H("q"), G("a")], "vicuna_v1", llama, image_token_id=None, num_image_tokens=1)
    assert enc.dropped_leading_assistant
    assert [_decode(llama, r) for r in _runs(enc.input_ids, enc.labels)] == ["a</s>"]


def test_generation_prompt_needs_a_final_user_turn():
    with pytest.raises(TemplateError):
        render([H("q"), G("a")], "vicuna_v1", add_generation_prompt=True)


def test_truncation_never_cuts_images(llama):
    image_id = llama.convert_tokens_to_ids(IMAGE_TOKEN)
    conv = [H("<image>\nDescribe."), G("word " * 40)]
    full = encode(conv, "vicuna_v1", llama, image_token_id=image_id, num_image_tokens=50)
    last_image = max(i for i, t in enumerate(full.input_ids) if t == image_id)
    cut = encode(conv, "vicuna_v1", llama, image_token_id=image_id, num_image_tokens=50, max_length=last_image + 10)
    assert cut.truncated and len(cut.input_ids) == last_image + 10 and cut.input_ids == full.input_ids[: last_image + 10]
    assert cut.length_before_truncation == len(full.input_ids)
    with pytest.raises(TemplateError) as err:
        encode(conv, "vicuna_v1", llama, image_token_id=image_id, num_image_tokens=50, max_length=last_image)
    assert err.value.reason == "images_do_not_fit"
    first_label = next(i for i, lab in enumerate(full.labels) if lab != IGNORE_INDEX)
    with pytest.raises(TemplateError) as err:
        encode(conv, "vicuna_v1", llama, image_token_id=image_id, num_image_tokens=50, max_length=first_label)
    assert err.value.reason == "no_supervised_tokens"
    with pytest.raises(TemplateError) as err:
        encode(conv[:1], "vicuna_v1", llama, image_token_id=image_id, num_image_tokens=50, max_length=20,
               add_generation_prompt=True)
    assert err.value.reason == "prompt_too_long"


def test_image_token_id_must_be_the_tokenizers(tmp_path, llama):
    shutil.copy(Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1", tmp_path / "tokenizer.model")
    bare = transformers.LlamaTokenizer.from_pretrained(tmp_path)  # no <image> token registered
    with pytest.raises(ValueError, match="add_image_token"):
        encode([H("<image>\nq"), G("a")], "vicuna_v1", bare, image_token_id=0, num_image_tokens=2)
    with pytest.raises(ValueError, match="no image_token_id"):
        encode([H("<image>\nq"), G("a")], "vicuna_v1", llama, image_token_id=None, num_image_tokens=2)


def test_sentencepiece_starts_a_new_word_after_an_image_like_llava(llama):
    # LLaVA's tokenizer_image_token tokenizes the text between images separately: "▁White", not "White"
    image_id = llama.convert_tokens_to_ids(IMAGE_TOKEN)
    plain = encode([H("<image>"), G("White bus.")], "plain", llama, image_token_id=image_id, num_image_tokens=1)
    assert llama.convert_ids_to_tokens(plain.input_ids)[:3] == ["<s>", IMAGE_TOKEN, "▁White"]
    v1 = encode([H("<image>\nq"), G("日本")], "vicuna_v1", llama, image_token_id=image_id, num_image_tokens=1)
    tokens = llama.convert_ids_to_tokens(v1.input_ids)
    assert tokens[tokens.index(IMAGE_TOKEN) + 1:][:2] == ["▁", "<0x0A>"]
    # the space after "ASSISTANT:" is predicted too (the generation prompt ends at the colon), as in LLaVA
    supervised = [t for t, lab in zip(tokens, v1.labels) if lab != IGNORE_INDEX]
    assert supervised == ["▁", "日", "本", "</s>"]


def test_consistency_check_catches_wrong_masks(llama):
    r = render_spans([H("Question here?"), G("The answer."), H("More?"), G("Done.")], "vicuna_v1")
    enc = llama(r.text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    good = label_from_spans(ids, offsets, r.spans)
    check_supervision(llama, r.text, ids, offsets, good, r.spans)  # the real labels pass
    one_more = list(good)
    first = next(i for i, lab in enumerate(good) if lab != IGNORE_INDEX)
    one_more[first - 1] = ids[first - 1]  # also supervise the ":" of "ASSISTANT:"
    one_less = list(good)
    one_less[first] = IGNORE_INDEX
    shifted = [IGNORE_INDEX] + good[:-1]  # LLaVA's classic off-by-one
    for bad in (one_more, one_less, shifted, [IGNORE_INDEX] * len(ids)):
        with pytest.raises(TemplateError) as err:
            check_supervision(llama, r.text, ids, offsets, bad, r.spans)
        assert err.value.reason in ("mask_mismatch", "no_supervised_tokens")


def test_chat_template_that_rewrites_content_is_reported(llama, tmp_path):
    tok = copy.deepcopy(llama)
    tok.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] | upper + '</s>' }}{% endfor %}"
    with pytest.raises(TemplateError) as err:
        encode([H("hi"), G("there")], "chat_template", tok, image_token_id=None, num_image_tokens=1)
    assert err.value.reason == "template_mismatch"
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # no end-of-turn at all
    with pytest.raises(ValueError, match="end-of-turn"):
        render([H("hi"), G("there")], "chat_template", tok)


def test_chat_template_errors_are_categorised(llama2):
    conv = [{"from": "system", "value": "s"}, G("a"), H("b"), G("c")]  # leading gpt dropped -> fine
    assert "[INST]" in render(conv, "chat_template", llama2)
    with pytest.raises(TemplateError) as err:
        llama2_bad = copy.deepcopy(llama2)
        llama2_bad.chat_template = "{{ raise_exception('nope') }}"
        render([H("a"), G("b")], "chat_template", llama2_bad)
    assert err.value.reason == "template_error"


@pytest.mark.skipif(not os.environ.get("LLAVA_REPO"), reason="set LLAVA_REPO to a LLaVA checkout to run the differential test")
def test_vicuna_v1_matches_llava_conversation_code():
    """Differential test against LLaVA's own conversation.py over random conversations (needs a checkout)."""
    import random

    sys.path.insert(0, os.environ["LLAVA_REPO"])
    from llava import conversation as conversation_lib  # noqa: E402

    words = ["the", "bus", "日本語", "🦙", "USER:", "</s>", "\n", "  ", "\t", ".", "<s>", "naïve", "{{ }}"]
    rng = random.Random(0)
    for _ in range(2000):
        turns = []
        for i in range(rng.choice([2, 4, 6])):
            text = "".join(rng.choice(words) + rng.choice(["", " ", "\n"]) for _ in range(rng.randint(1, 8)))
            turns.append((i % 2, text if text.strip() else "x"))
        turns[0] = (0, "<image>\n" + turns[0][1].strip()) if rng.random() < 0.7 else turns[0]
        conv = conversation_lib.conv_templates["vicuna_v1"].copy()
        conv.messages = []
        for role, text in turns:
            conv.append_message(conv.roles[role], text)
        ours = render([H(t) if r == 0 else G(t) for r, t in turns], "vicuna_v1")
        assert ours == conv.get_prompt()
