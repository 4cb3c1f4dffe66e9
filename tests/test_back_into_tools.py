"""Pruned diffusers and open_clip models keep working in their own libraries (Ultralytics:
``test_ultralytics.py``). Random weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk


@pytest.mark.slow
def test_a_pruned_diffusers_unet_saves_its_config_and_reloads_through_its_plan(tmp_path):
    """diffusers' config has no field for per-block widths, so ``from_pretrained`` cannot
    rebuild a pruned UNet; ``save_pretrained`` keeps the config and ``pk.load`` replays the
    plan on the model that config builds."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    model = diffusers.UNet2DModel(sample_size=16, block_out_channels=(32, 64), norm_num_groups=8,
                                  down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                  up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()
    inputs = {"sample": torch.randn(1, 3, 16, 16), "timestep": torch.tensor([10])}
    result = pk.prune(model, inputs, pk.FilterPruning(0.5, "l1"))
    assert result.report.ok and result.skipped == []
    model.save_pretrained(tmp_path / "diffusers")
    pk.save(model, tmp_path / "pruned", result.plan)
    with pytest.raises(Exception, match="size mismatch|shape"):
        diffusers.UNet2DModel.from_pretrained(tmp_path / "diffusers")
    config = diffusers.UNet2DModel.load_config(tmp_path / "diffusers")
    fresh = pk.load(diffusers.UNet2DModel.from_config(config).eval(), tmp_path / "pruned")
    with torch.no_grad():
        expected, actual = model(**inputs).sample, fresh(**inputs).sample
    assert torch.equal(expected, actual)


class TextTower(nn.Module):
    """``encode_text`` as a module's forward, sharing the CLIP model's modules."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.transformer, self.token_embedding = clip.transformer, clip.token_embedding
        self.ln_final = clip.ln_final
        self._clip = [clip]  # not a submodule: the image tower is not part of this model

    def forward(self, tokens):
        return self._clip[0].encode_text(tokens)


@pytest.mark.slow
def test_a_pruned_open_clip_model_still_encodes_images_and_text():
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    clip = open_clip.create_model("RN50", pretrained=None).eval()
    tokens = open_clip.get_tokenizer("RN50")(["a photo of a cat", "a diagram"])
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        before = clip(images, tokens)
    params = sum(p.numel() for p in clip.parameters())
    image = pk.prune(clip.visual, images[:1], pk.FilterPruning(0.5, "l1"))
    text = pk.prune(TextTower(clip), tokens, pk.FilterPruning(0.5, "l1"))
    assert image.report.ok and text.report.ok
    assert sum(p.numel() for p in clip.parameters()) < 0.8 * params
    with torch.no_grad():
        after = clip(images, tokens)  # the CLIP model itself, both towers pruned
        logits = after[0] @ after[1].T
    assert [t.shape for t in after[:2]] == [t.shape for t in before[:2]]
    assert torch.allclose(after[0].norm(dim=-1), torch.ones(2), atol=1e-5)
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
