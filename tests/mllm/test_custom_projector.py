"""A projector that changes the image-token count needs only its class and one registry entry (here: this file).

`avgpool{k}_linear` averages each k×k block of patches (prefix tokens pass through) and projects linearly; the
model, processor, training step and save/load follow its count without any other edit.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mllm import ModelSpec, ModelSpecError, TowerSpec, load_model, save_pretrained
from mllm.validation import validate_spec
from projector import PROJECTORS, Projector, check_projector, image_token_count


class AvgPoolProjector(Projector):
    def __init__(self, config, k: int):
        super().__init__(config, k=k)
        self.proj = nn.Linear(config.in_features, config.out_features)

    @classmethod
    def output_tokens(cls, grid, prefix_tokens, k):
        return prefix_tokens + (grid[0] // k) * (grid[1] // k)

    @classmethod
    def check(cls, grid, prefix_tokens, k):
        if grid[0] % k or grid[1] % k:
            raise ValueError(f"avgpool{k}: k={k} must divide the tower grid {grid[0]}x{grid[1]}")

    def forward(self, features, grid=None):
        (h, w), k = grid, self.params["k"]
        prefix, patches = features[:, : features.shape[1] - h * w], features[:, features.shape[1] - h * w:]
        maps = patches.transpose(1, 2).reshape(features.shape[0], -1, h, w)
        pooled = F.avg_pool2d(maps, k).flatten(2).transpose(1, 2)
        return self.proj(torch.cat([prefix, pooled], dim=1))


@pytest.fixture
def avgpool_registered(monkeypatch):
    monkeypatch.setitem(PROJECTORS, "avgpool{k}_linear", f"{__name__}:AvgPoolProjector")


def test_registry_entry_alone_defines_the_count(avgpool_registered):
    assert image_token_count("avgpool2_linear", (24, 24)) == 144
    assert image_token_count("avgpool2_linear", (24, 24), prefix_tokens=1) == 145
    check_projector("avgpool2_linear", (24, 24))
    with pytest.raises(ValueError, match="must divide the tower grid 5x5"):
        check_projector("avgpool2_linear", (5, 5))


def test_model_trains_and_round_trips_with_fewer_image_tokens(avgpool_registered, make_tiny_model, make_images,
                                                               tmp_path):
    model, processor = make_tiny_model("llama", projector_type="avgpool2_linear")
    assert model.vision_tower.num_image_tokens == 4  # the tiny tower's 2x2 grid ...
    assert model.num_image_tokens == processor.num_image_tokens == 1  # ... pooled 2x2 -> 1 token
    batch = processor(["<image>\nWhat colour?", "<image>\nAgain?"], [make_images(1), make_images(2)[1:]],
                      padding_side="right")
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == 2
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    before = model.projector.proj.weight.detach().clone()
    loss = model(**batch, labels=labels).loss
    loss.backward()
    assert model.projector.proj.weight.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(before, model.projector.proj.weight)

    model.eval()
    with torch.no_grad():
        logits = model(**batch, return_logits=True).logits
    save_pretrained(model, processor, tmp_path / "ckpt")
    loaded, loaded_processor = load_model(tmp_path / "ckpt")
    assert loaded.spec.projector_type == "avgpool2_linear" and loaded_processor.num_image_tokens == 1
    with torch.no_grad():
        again = loaded(**batch, return_logits=True).logits
    torch.testing.assert_close(again, logits, rtol=0, atol=0)


def test_spec_validation_checks_the_projector_against_the_tower_grid(avgpool_registered, tiny_llm_dirs, tiny_tower_dir):
    def spec(projector_type):
        return ModelSpec(llm=str(tiny_llm_dirs("llama")), projector_type=projector_type,
                         tower=TowerSpec(checkpoint=str(tiny_tower_dir), config=None))

    validate_spec(spec("avgpool2_linear"))  # the tiny tower's 2x2 grid
    with pytest.raises(ModelSpecError, match=r"projector_type 'avgpool3_linear' cannot project tower tiny-eva02-28-14 "
                                             r"\(2x2 grid\): avgpool3: k=3 must divide the tower grid 2x2"):
        validate_spec(spec("avgpool3_linear"))
