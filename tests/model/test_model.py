"""SAS-VPReID model behaviour on the tiny config (CPU), large configs on the meta device."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model import ModelConfig, build_model
from model.config import PRESETS

torch.set_num_threads(2)


def tiny(**kw) -> ModelConfig:
    return ModelConfig.preset("tiny", **kw)


def frames(b: int = 2, t: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, 3, 64, 32, generator=g)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_descriptor_shape_for_every_config(name):
    cfg = ModelConfig.preset(name)
    device = "cpu" if name == "tiny" else "meta"  # large configs without allocating weights
    model = build_model(cfg, device=device).eval()
    h, w = cfg.backbone.image_size
    x = torch.zeros(2, 3, 3, h, w, device=device)
    with torch.no_grad():
        out = model(x)
    # v_i: the backbone's pooled feature (plus part stripes for the ResNet); h_M: the token width.
    expected = model.backbone.feature_dim + model.backbone.token_dim + cfg.prsd.num_betas
    assert model.descriptor_dim == expected == model.descriptor_layout[-1].stop
    assert tuple(out.descriptor.shape) == (2, expected)
    assert tuple(out.feats["h"].shape) == (2, model.backbone.token_dim)
    assert tuple(out.betas.shape) == (2, 3, cfg.prsd.num_betas)


def test_paper_input_sizes():
    assert ModelConfig.preset("vit-l-14").backbone.grid == (18, 9)
    assert ModelConfig.preset("vit-b-16").backbone.grid == (16, 8)


def test_embed_is_l2_normalised_and_works_for_any_length():
    model = build_model(tiny())
    for t in (1, 2, 3, 8, 13):
        d = model.embed(frames(2, t))
        assert d.shape == (2, model.descriptor_dim)
        torch.testing.assert_close(d.norm(dim=1), torch.ones(2))


def test_descriptor_does_not_depend_on_batch():
    model = build_model(tiny())
    x = frames(4, 8)
    together = model.embed(x)
    alone = torch.cat([model.embed(x[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


def test_eval_is_deterministic_even_after_training_mode():
    model = build_model(tiny())
    x = frames()
    a = model.embed(x)
    model.train()
    model(x)  # a train-mode forward must not change what embed returns (BN stats aside)
    b = model.embed(x)
    assert model.training, "embed restores the previous mode"
    model.eval()
    c = model.embed(x)
    torch.testing.assert_close(b, c)
    assert a.shape == b.shape


def test_frame_order_matters():
    model = build_model(tiny())
    x = frames(1, 8)
    d = model.embed(x)
    d_rev = model.embed(x.flip(1))
    assert not torch.allclose(d, d_rev, atol=1e-4)


def _step(model, x, pids):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    out = model(x)
    losses = model.compute_losses(out, pids)
    opt.zero_grad()
    losses["total"].backward()
    opt.step()
    return before, losses


def test_one_step_updates_every_trainable_group():
    cfg = tiny(num_classes=3)
    cfg.mevb.temporal_pool = "attention"
    cfg.backbone.side_info = "both"
    model = build_model(cfg)
    pids = torch.tensor([0, 0, 1, 1, 2, 2])
    # Seed the memory so the memory loss has proxies to pull towards.
    model.memory.update(torch.randn(6, cfg.backbone.output_dim), pids)
    x = frames(6, 8)
    model.train()
    out = model(x, camera=torch.tensor([0, 1, 2, 0, 1, 2]), platform=torch.tensor([0, 1, 0, 1, 0, 1]))
    losses = model.compute_losses(out, pids)
    for term in ("triplet", "id", "memory", "shape_prior"):
        assert term in losses and torch.isfinite(losses[term])
    assert float(losses["memory"].detach()) > 0
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    opt.zero_grad()
    losses["total"].backward()
    opt.step()
    unchanged = [n for n, p in model.named_parameters() if p.requires_grad and torch.equal(p, before[n])]
    assert unchanged == []
    groups = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert {"backbone", "mgtm", "prsd", "attention_pool", "classifiers", "bnnecks"} <= groups


def test_selective_fine_tuning_freezes_earlier_blocks():
    cfg = tiny(num_classes=2)
    cfg.backbone.trainable_blocks = 1
    model = build_model(cfg)
    frozen = [n for n, p in model.backbone.named_parameters() if not p.requires_grad]
    assert any(n.startswith("visual.transformer.resblocks.0.") for n in frozen)
    assert "visual.conv1.weight" in frozen
    assert all(p.requires_grad for p in model.backbone.visual.transformer.resblocks[1].parameters())
    before, _ = _step(model, frames(4), torch.tensor([0, 0, 1, 1]))
    for n, p in model.named_parameters():
        if n.replace("backbone.", "", 1) in frozen:
            assert torch.equal(p, before[n]), f"{n} is frozen but changed"
    groups = model.parameter_groups()
    assert all(p.requires_grad for g in groups.values() for _, p in g)
    assert len(groups["pretrained"]) > 0 and len(groups["new"]) > 0


def test_trainable_blocks_validation():
    cfg = tiny()
    cfg.backbone.trainable_blocks = 7
    with pytest.raises(ValueError, match="trainable_blocks"):
        build_model(cfg)


def test_side_info_changes_descriptor():
    cfg = tiny()
    cfg.backbone.side_info = "camera"
    model = build_model(cfg)
    x = frames(1)
    a = model.embed(x, camera=torch.tensor([0]))
    b = model.embed(x, camera=torch.tensor([3]))
    assert not torch.allclose(a, b)


def test_ablations_change_descriptor_dim():
    cfg = tiny()
    cfg.mgtm.enabled = False
    cfg.prsd.enabled = False
    model = build_model(cfg)
    assert model.descriptor_dim == cfg.backbone.output_dim
    assert model.embed(frames(1, 3)).shape == (1, cfg.backbone.output_dim)


def test_memory_update_rules():
    from model.memory import MultiProxyMemory

    mem = MultiProxyMemory(num_classes=3, dim=4, momentum=0.2)
    v = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]])
    pids = torch.tensor([0, 0, 0, 2])
    mem.update(v, pids)
    assert mem.initialized.tolist() == [True, False, True]
    mean0 = torch.nn.functional.normalize(v[:3].mean(0), dim=0)
    torch.testing.assert_close(mem.proxies[0, 0], mean0)
    torch.testing.assert_close(mem.proxies[0, 1], v[2])  # least similar to the mean: the hard one
    # Momentum step: M <- mu M + (1 - mu) v*, renormalised.
    new = torch.tensor([[0.0, 1.0, 0, 0]])
    mem.update(new, torch.tensor([0]))
    expected = torch.nn.functional.normalize(0.2 * mean0 + 0.8 * new[0], dim=0)
    torch.testing.assert_close(mem.proxies[0, 0], expected)
    # Eq. (6) by hand for one sample.
    q = torch.tensor([[0.0, 0, 1.0, 0]])
    loss = mem.loss(q, torch.tensor([2]))
    sims = torch.einsum("d,ypd->yp", q[0], mem.proxies)[[0, 2]]
    manual = -(torch.logsumexp(sims[1], 0) - torch.logsumexp(sims.flatten(), 0))
    torch.testing.assert_close(loss, manual)


def test_config_round_trip_and_unknown_field():
    cfg = tiny(num_classes=7)
    again = ModelConfig.from_dict(cfg.to_dict())
    assert again == cfg
    bad = cfg.to_dict()
    bad["mgtm"]["no_such_field"] = 1
    with pytest.raises(ValueError, match="no_such_field"):
        ModelConfig.from_dict(bad)
    assert dataclasses.asdict(again) == cfg.to_dict()


def test_preprocess_any_size_images():
    from PIL import Image

    model = build_model(tiny())
    imgs = [Image.new("RGB", (13 + i, 29 + 2 * i), (10 * i, 200, 30)) for i in range(5)]
    x = model.preprocess(imgs)
    assert x.shape == (1, 5, 3, 64, 32)
    # CLIP normalisation of the green channel value 200.
    expected = (200 / 255 - model.cfg.mean[1]) / model.cfg.std[1]
    assert abs(float(x[0, 0, 1, 10, 10]) - expected) < 1e-4
    assert model.embed(x).shape == (1, model.descriptor_dim)


def test_reorder_by_relevance_is_a_stable_descending_sort():
    from model.temporal import reorder_by_relevance

    g = torch.Generator().manual_seed(0)
    patches = torch.randn(3, 20, 6, generator=g)
    patches[:, 5] = patches[:, 2]  # exact ties: must keep time order
    patches[:, 11] = patches[:, 2]
    cls = torch.randn(3, 6, generator=g)
    out = reorder_by_relevance(patches, cls)
    rel = torch.nn.functional.cosine_similarity(patches, cls[:, None], dim=-1)
    for i in range(3):
        order = sorted(range(20), key=lambda j, i=i: (-float(rel[i, j]), j))
        torch.testing.assert_close(out[i], patches[i, order])
