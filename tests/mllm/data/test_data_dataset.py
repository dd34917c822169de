"""LLaVADataset end to end: formats, multi-image, text-only, every bad-data class, strict mode, DataLoader."""
import shutil

import pytest
import torch
from torch.utils.data import DataLoader

from mllm.constants import IGNORE_INDEX, IMAGE_TOKEN
from mllm.data import Collator, DataError, LLaVADataset, ModalityLengthGroupedSampler, SkippedSample, SkipReport
from vision_tower import ImageProcessor, load_image

S = 28  # small image size keeps the tests fast; the geometry is the same code as 336


def H(v):
    return {"from": "human", "value": v}


def G(v):
    return {"from": "gpt", "value": v}


GOOD = [
    {"id": "img", "image": "rgb.jpg", "conversations": [H("What is shown?\n<image>"), G("Noise.")]},
    {"id": "txt", "conversations": [H("Say hi."), G("Hi!"), H("Again."), G("Hi again!")]},
    {"id": "two", "image": ["rgb.png", "gray.png"], "conversations": [H("<image>\n<image>\nSame?"), G("Yes, same scene.")]},
    {"id": "multi", "image": "palette.png", "conversations": [H("<image>\nColour?"), G("Many."), H("Sure?"), G("Yes.")]},
]
ODD_BUT_VALID = ["rgba.png", "cmyk.jpg", "bilevel.png", "gray16.png", "one_pixel.png", "thin.png"]
BAD_IMAGES = {"missing": "does_not_exist.jpg", "corrupt": "truncated.jpg", "not_image": "not_image.jpg",
              "empty": "zero.jpg", "too_large": "bomb.png", "unsupported_format": "vector.jpg"}
BAD_RECORDS = [
    ("malformed_record", "just a string"),
    ("no_conversations", {"id": "nc", "image": "rgb.jpg"}),
    ("no_conversations", {"id": "ec", "conversations": []}),
    ("unknown_role", {"id": "ur", "conversations": [H("q"), {"from": "bot", "value": "a"}]}),
    ("empty_turn", {"id": "et", "conversations": [H("q"), G("")]}),
    ("non_alternating", {"id": "na", "conversations": [H("q"), H("q2"), G("a")]}),
    ("image_count_mismatch", {"id": "m1", "image": ["rgb.jpg", "rgb.png"], "conversations": [H("<image>\nq"), G("a")]}),
    ("image_count_mismatch", {"id": "m2", "image": "rgb.jpg", "conversations": [H("q"), G("a")]}),
    ("image_count_mismatch", {"id": "m3", "conversations": [H("<image>\nq"), G("a")]}),
    ("malformed_record", {"id": "mi", "image": 5, "conversations": [H("<image>\nq"), G("a")]}),
    ("no_assistant_turn", {"id": "nt", "conversations": [H("just a question")]}),
]


@pytest.fixture(scope="module")
def processor():
    return ImageProcessor(S, image_aspect_ratio="pad")


def _dataset(path, tokenizer, image_dir, processor, **kw):
    return LLaVADataset(path, tokenizer, image_folder=image_dir, image_processor=processor, num_image_tokens=4, **kw)


def _decoded_supervised(tokenizer, item):
    ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
    return tokenizer.decode([t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX], clean_up_tokenization_spaces=False)


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_good_samples(tmp_path, tokenizer, image_dir, processor, write_records, fmt):
    ds = _dataset(write_records(tmp_path / f"d.{fmt}", GOOD, fmt), tokenizer, image_dir, processor)
    items = [ds[i] for i in range(len(ds))]
    assert not any(isinstance(x, SkippedSample) for x in items)
    assert [x["pixel_values"].shape[0] for x in items] == [1, 0, 2, 1]
    assert items[1]["pixel_values"].shape == (0, 3, S, S)
    # pixels are exactly the tower's preprocessing of the file, in marker order
    expected = processor([load_image(image_dir / "rgb.png"), load_image(image_dir / "gray.png")])
    torch.testing.assert_close(items[2]["pixel_values"], expected, rtol=0, atol=0)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert [int((x["input_ids"] == image_id).sum()) for x in items] == [4, 0, 8, 4]
    assert [_decoded_supervised(tokenizer, x) for x in items] == [
        "Noise.</s>", "Hi!</s> Hi again!</s>", "Yes, same scene.</s>", "Many.</s> Yes.</s>"]
    assert [x["id"] for x in items] == ["img", "txt", "two", "multi"] and items[3]["index"] == 3
    assert ds.modality_lengths == [5, -6, 6, 5]  # LLaVA: split() word counts, + image, - text-only


def test_unusual_modes_and_sizes_are_kept(tmp_path, tokenizer, image_dir, processor, write_records):
    records = [{"id": name, "image": name, "conversations": [H("<image>\nq"), G("a")]} for name in ODD_BUT_VALID]
    ds = _dataset(write_records(tmp_path / "d.json", records), tokenizer, image_dir, processor)
    for i in range(len(ds)):
        item = ds[i]
        assert not isinstance(item, SkippedSample), item
        assert item["pixel_values"].shape == (1, 3, S, S) and torch.isfinite(item["pixel_values"]).all()


def test_every_bad_image_class_is_skipped_with_reason_and_path(tmp_path, tokenizer, image_dir, processor, write_records):
    records = [{"id": reason, "image": ["rgb.jpg", name], "conversations": [H("<image><image>q"), G("a")]}
               for reason, name in BAD_IMAGES.items()]
    ds = _dataset(write_records(tmp_path / "d.json", records), tokenizer, image_dir, processor)
    for i, (reason, name) in enumerate(BAD_IMAGES.items()):
        item = ds[i]
        assert isinstance(item, SkippedSample)
        assert (item.index, item.id, item.reason) == (i, reason, reason)
        assert item.path == str(image_dir / name)


def test_image_processing_failure_names_the_image(tmp_path, tokenizer, image_dir, processor, write_records):
    def picky(images):
        if any(im.size == (1, 1) for im in images):
            raise ValueError("cannot process a 1x1 image")
        return processor(images)

    records = [{"id": "p", "image": ["rgb.jpg", "one_pixel.png"], "conversations": [H("<image><image>q"), G("a")]}]
    ds = _dataset(write_records(tmp_path / "d.json", records), tokenizer, image_dir, picky)
    item = ds[0]
    assert (item.reason, item.path) == ("image_processing_failed", str(image_dir / "one_pixel.png"))
    wrong_shape = _dataset(tmp_path / "d.json", tokenizer, image_dir, lambda ims: torch.zeros(1, 3, S, S))
    assert wrong_shape[0].reason == "image_processing_failed" and "shape" in wrong_shape[0].detail


def test_every_malformed_record_class_is_skipped(tmp_path, tokenizer, image_dir, processor, write_records):
    lines = [r for _, r in BAD_RECORDS] + ["{broken json"]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(r if r == "{broken json" else __import__("json").dumps(r) for r in lines))
    ds = _dataset(path, tokenizer, image_dir, processor)
    got = [ds[i] for i in range(len(ds))]
    assert all(isinstance(x, SkippedSample) for x in got)
    assert [x.reason for x in got] == [r for r, _ in BAD_RECORDS] + ["invalid_json"]
    assert got[1].id == "nc"


def test_truncation_keeps_images_whole_or_drops_the_sample(tmp_path, tokenizer, image_dir, processor, write_records):
    records = [
        {"id": "long", "image": "rgb.jpg", "conversations": [H("<image>\nq"), G("word " * 200)]},
        # the marker moves to the start of the turn (LLaVA), but the answer lies beyond max_length
        {"id": "late", "image": "rgb.jpg", "conversations": [H("x " * 300 + "<image>"), G("a")]},
        # the second image sits beyond max_length: never cut through placeholders, drop the sample
        {"id": "two", "image": ["rgb.jpg", "rgb.png"], "conversations": [H("<image>\n" + "y " * 80), G("a"), H("<image>\nb"), G("c")]},
    ]
    ds = _dataset(write_records(tmp_path / "d.json", records), tokenizer, image_dir, processor, max_length=64)
    first = ds[0]
    assert first["truncated"] and len(first["input_ids"]) == 64 and first["full_length"] > 64
    assert _decoded_supervised(tokenizer, first).startswith("word word")
    assert (ds[1].reason, ds[2].reason) == ("no_supervised_tokens", "images_do_not_fit")


def test_strict_mode_names_record_id_and_file(tmp_path, tokenizer, image_dir, processor, write_records):
    path = write_records(tmp_path / "d.json", GOOD + [{"id": "bad7", "image": "zero.jpg", "conversations": [H("<image>q"), G("a")]}])
    ds = _dataset(path, tokenizer, image_dir, processor, strict=True)
    assert not isinstance(ds[0], SkippedSample)
    with pytest.raises(DataError) as err:
        ds[4]
    msg = str(err.value)
    assert f"{path}[4]" in msg and "record 4" in msg and "bad7" in msg and "empty" in msg and "zero.jpg" in msg


def test_strict_mode_error_survives_dataloader_workers(tmp_path, tokenizer, image_dir, processor, write_records):
    path = write_records(tmp_path / "d.json", [{"id": "bad", "image": "truncated.jpg", "conversations": [H("<image>q"), G("a")]}])
    ds = _dataset(path, tokenizer, image_dir, processor, strict=True)
    loader = DataLoader(ds, batch_size=1, collate_fn=Collator(tokenizer.pad_token_id), num_workers=1)
    with pytest.raises(DataError, match=r"record 0 \(id='bad'\): corrupt"):
        next(iter(loader))


def test_dataloader_with_sampler_collator_and_skip_report(tmp_path, tokenizer, image_dir, processor, write_records):
    bad = {"id": "gone", "image": "nope.jpg", "conversations": [H("<image>q"), G("a")]}
    path = write_records(tmp_path / "d.json", GOOD * 3 + [bad])
    ds = _dataset(path, tokenizer, image_dir, processor)
    sampler = ModalityLengthGroupedSampler(ds.modality_lengths, 2, world_size=1, seed=0)
    loader = DataLoader(ds, batch_size=2, sampler=sampler, collate_fn=Collator(tokenizer.pad_token_id), num_workers=2)
    report, seen = SkipReport(), []
    for batch in loader:
        report.add(batch["skipped"])
        assert batch["input_ids"].shape[1] % 8 == 0
        assert batch["pixel_values"].shape[0] == batch["num_images"].sum()
        image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        assert int((batch["input_ids"] == image_id).sum()) == 4 * batch["pixel_values"].shape[0]
        # never a silently fully masked sample
        assert ((batch["labels"] != IGNORE_INDEX).sum(1) > 0).all()
        seen += batch["sample_ids"]
    assert report.counts == {"missing": 1} and set(seen) == {"img", "txt", "two", "multi"}
    assert len(seen) + sum(report.occurrences.values()) == len(sampler) == 14  # 13 records, padded to full batches


def test_image_paths_cannot_leave_the_image_folder(tmp_path, tokenizer, image_dir, processor, write_records):
    """A data file from elsewhere must not make training read arbitrary files: real, decodable images outside the
    folder are still refused (counted as outside_image_folder), paths that stay inside after `..` are fine."""
    folder = tmp_path / "images"
    shutil.copytree(image_dir, folder)
    outside = tmp_path / "outside.jpg"
    shutil.copy(image_dir / "rgb.jpg", outside)
    names = {"climbs_out": "../outside.jpg", "absolute_outside": str(outside),
             "absolute_inside": str(folder / "rgb.jpg"), "stays_inside": "nested/../rgb.jpg"}
    records = [{"id": key, "image": name, "conversations": [H("<image>\nq"), G("a")]} for key, name in names.items()]
    ds = _dataset(write_records(tmp_path / "d.json", records), tokenizer, folder, processor)
    reasons = {ds[i]["id"] if isinstance(ds[i], dict) else ds[i].id: getattr(ds[i], "reason", "kept")
               for i in range(len(records))}
    assert reasons == {"climbs_out": "outside_image_folder", "absolute_outside": "outside_image_folder",
                       "absolute_inside": "outside_image_folder", "stays_inside": "kept"}
    assert ds[0].path == "../outside.jpg" and "--image_folder" in ds[0].detail
    # without --image_folder the paths are the user's own (relative to the working directory, or absolute)
    free = LLaVADataset(write_records(tmp_path / "e.json", records[1:2]), tokenizer, image_processor=processor,
                        num_image_tokens=4)
    assert free[0]["num_images"] == 1
