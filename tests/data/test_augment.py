from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch

from model.data.augment import (
    AugmentConfig,
    AugmentParams,
    TrackletAugment,
    adjust_hue,
    hsv_to_rgb,
    rgb_to_hsv,
    translate,
)


def test_hsv_round_trip() -> None:
    x = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5)


def test_adjust_hue_matches_colorsys() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.random((3, 4, 6)).astype(np.float32)
    shift = 0.23
    out = adjust_hue(torch.from_numpy(pixels), shift).numpy()
    for y in range(4):
        for x in range(6):
            h, s, v = colorsys.rgb_to_hsv(*pixels[:, y, x])
            expected = colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
            np.testing.assert_allclose(out[:, y, x], expected, atol=1e-5)


def test_adjust_hue_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="hue shift"):
        adjust_hue(torch.rand(3, 2, 2), 0.7)


def _identical_frames(t: int = 5) -> torch.Tensor:
    base = torch.rand(1, 3, 24, 12, generator=torch.Generator().manual_seed(1))
    return base.expand(t, -1, -1, -1).clone()


def test_all_augmentations_consistent_across_frames() -> None:
    aug = TrackletAugment(AugmentConfig(flip_p=1.0, erase_p=1.0, hue_p=1.0))
    frames = _identical_frames()
    for seed in range(10):
        params = aug.draw(np.random.default_rng(seed), 24, 12)
        assert params.flip and params.hue is not None
        out = aug.apply(frames, params)
        assert not torch.allclose(out, frames)
        for t in range(1, out.shape[0]):
            assert torch.equal(out[t], out[0]), "a parameter differed between frames"


def test_apply_flip_erase_hue_effects() -> None:
    frames = _identical_frames(3)
    aug = TrackletAugment(AugmentConfig(erase_fill=(0.0, 0.5, 1.0)))
    flipped = aug.apply(frames, AugmentParams(flip=True, erase=None, hue=None))
    assert torch.equal(flipped, torch.flip(frames, dims=(-1,)))
    erased = aug.apply(frames, AugmentParams(flip=False, erase=(2, 3, 4, 5), hue=None))
    region = erased[:, :, 2:6, 3:8]
    assert torch.equal(region, torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1).expand_as(region))
    outside = erased.clone()
    outside[:, :, 2:6, 3:8] = frames[:, :, 2:6, 3:8]
    assert torch.equal(outside, frames)
    hued = aug.apply(frames, AugmentParams(flip=False, erase=None, hue=0.3))
    assert torch.allclose(hued, adjust_hue(frames, 0.3))


def test_probabilities_respected() -> None:
    aug = TrackletAugment()
    draws = [aug.draw(np.random.default_rng(s), 64, 32) for s in range(400)]
    for rate in (np.mean([d.flip for d in draws]), np.mean([d.erase is not None for d in draws]),
                 np.mean([d.hue is not None for d in draws])):
        assert 0.4 < rate < 0.6
    hues = [d.hue for d in draws if d.hue is not None]
    assert max(abs(h) for h in hues) <= 0.3
    boxes = [d.erase for d in draws if d.erase is not None]
    assert all(0 <= t and 0 <= left and t + h <= 64 and left + w <= 32 for t, left, h, w in boxes)


def test_nothing_applied_when_probabilities_zero() -> None:
    aug = TrackletAugment(AugmentConfig(flip_p=0.0, erase_p=0.0, hue_p=0.0))
    frames = _identical_frames()
    assert torch.equal(aug(frames, np.random.default_rng(0)), frames)


def test_translate_is_pad_then_crop() -> None:
    x = torch.rand(2, 3, 8, 6)
    for dy, dx in ((0, 0), (2, -1), (-3, 2), (1, 1)):
        padded = torch.nn.functional.pad(x, (3, 3, 3, 3))  # black border of 3
        want = padded[..., 3 - dy:3 - dy + 8, 3 - dx:3 - dx + 6]
        torch.testing.assert_close(translate(x, dy, dx), want)


def test_crop_pad_shifts_every_frame_alike_and_stays_in_range() -> None:
    aug = TrackletAugment(AugmentConfig(flip_p=0.0, erase_p=0.0, hue_p=0.0, crop_pad=4))
    frames = torch.rand(1, 3, 16, 8).repeat(3, 1, 1, 1)
    shifts = set()
    for seed in range(40):
        params = aug.draw(np.random.default_rng(seed), 16, 8)
        assert all(-4 <= v <= 4 for v in params.shift)
        shifts.add(params.shift)
        out = aug.apply(frames, params)
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    assert len(shifts) > 10
    off = TrackletAugment(AugmentConfig(crop_pad=0)).draw(np.random.default_rng(0), 16, 8)
    assert off.shift == (0, 0)


def test_color_jitter_and_grey_are_drawn_per_tracklet_and_bounded() -> None:
    """Jitter factors of 1 change nothing; greyscale makes the channels equal; the frames of one
    tracklet get the same change; leaving both off keeps the other draws' streams."""
    from model.data.augment import AugmentConfig, TrackletAugment, color_jitter, grey

    frames = torch.rand(3, 3, 16, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(color_jitter(frames, 1.0, 1.0, 1.0), frames)
    g = grey(frames)
    assert torch.equal(g[:, 0], g[:, 1]) and torch.equal(g[:, 1], g[:, 2])
    out = color_jitter(frames, 1.3, 0.7, 1.3)
    assert out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, frames)
    aug = TrackletAugment(AugmentConfig(flip_p=0, erase_p=0, hue_p=0, jitter_p=1.0, jitter=0.3, gray_p=1.0))
    params = aug.draw(np.random.default_rng(1), 16, 8)
    assert params.jitter is not None and all(0.7 <= f <= 1.3 for f in params.jitter) and params.gray
    same = frames[0:1].expand(3, -1, -1, -1)  # three identical frames stay identical after the change
    res = aug.apply(same, params)
    assert torch.equal(res[0], res[1]) and torch.equal(res[0, 0], res[0, 2])
    base, off = AugmentConfig(crop_pad=2), AugmentConfig(crop_pad=2, jitter_p=0.0, gray_p=0.0)
    a, b = TrackletAugment(base).draw(np.random.default_rng(3), 16, 8), TrackletAugment(off).draw(np.random.default_rng(3), 16, 8)
    assert a == b and a.jitter is None and not a.gray
