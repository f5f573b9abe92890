"""Pretrained CLIP weights from the three local formats, made in the test from a random open_clip CLIP."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model import ModelConfig, build_model
from model.backbones import interpolate_pos_embed
from model.weights import WeightsError


@pytest.fixture(scope="module")
def clip_model():
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    # Same tower as the tiny config but square 32x32 input, like CLIP's square pretraining grid.
    vision = CLIPVisionCfg(layers=2, width=64, head_width=16, patch_size=8, image_size=32)
    text = CLIPTextCfg(context_length=8, vocab_size=100, width=32, heads=2, layers=1)
    return open_clip.model.CLIP(embed_dim=64, vision_cfg=vision, text_cfg=text)


class _VisualOnly(nn.Module):
    """Holds CLIP's visual tower under ``visual.`` like OpenAI's TorchScript archives."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)


def _openai_pt(clip_model, path):
    traced = torch.jit.trace(_VisualOnly(clip_model.visual).eval(), torch.zeros(1, 3, 32, 32), check_trace=False)
    traced.save(str(path))


def _open_clip_ckpt(clip_model, path):
    state = {"module." + k: v for k, v in clip_model.state_dict().items()}
    torch.save({"epoch": 1, "name": "test", "state_dict": state}, path)


def _safetensors(clip_model, path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in clip_model.state_dict().items()}, str(path))


@pytest.mark.parametrize("writer,suffix", [(_openai_pt, ".pt"), (_open_clip_ckpt, ".pt"),
                                           (_safetensors, ".safetensors")])
def test_loads_each_format(tmp_path, clip_model, writer, suffix):
    path = tmp_path / f"weights{suffix}"
    writer(clip_model, path)
    model = build_model(ModelConfig.preset("tiny"), clip_weights=str(path))
    src = clip_model.visual.state_dict()
    dst = model.backbone.visual.state_dict()
    for key in ("conv1.weight", "class_embedding", "proj", "transformer.resblocks.1.mlp.c_fc.weight",
                "ln_post.weight"):
        assert torch.equal(dst[key], src[key]), key
    # 4x4 square grid -> the tiny config's 8x4 person grid; class position kept.
    assert dst["positional_embedding"].shape == (1 + 8 * 4, 64)
    assert torch.equal(dst["positional_embedding"][0], src["positional_embedding"][0])
    torch.testing.assert_close(dst["positional_embedding"],
                               interpolate_pos_embed(src["positional_embedding"], (8, 4)))


def test_interpolation_preserves_a_constant_field():
    pos = torch.ones(1 + 16 * 16, 8)
    out = interpolate_pos_embed(pos, (18, 9))
    assert out.shape == (1 + 18 * 9, 8)
    torch.testing.assert_close(out, torch.ones_like(out))


def test_wrong_architecture_and_bad_files_fail_clearly(tmp_path, clip_model):
    path = tmp_path / "w.safetensors"
    _safetensors(clip_model, path)
    with pytest.raises(WeightsError, match=r"shape mismatch|missing"):
        build_model(ModelConfig.preset("vit-b-16"), device="meta", clip_weights=str(path))
    with pytest.raises(WeightsError, match="not found"):
        build_model(ModelConfig.preset("tiny"), clip_weights=str(tmp_path / "missing.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read weights"):
        build_model(ModelConfig.preset("tiny"), clip_weights=str(junk))
