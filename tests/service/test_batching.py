"""Micro-batching with the real tiny encoder: equal shapes share a call, results do not change."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from PIL import Image

from model.sampling import even_indices
from service.batching import BatcherClosed, MicroBatcher
from service.encoders import Encoder, TorchEncoder, prepare_tracklet


@pytest.fixture(scope="module")
def encoder(checkpoints: Any) -> TorchEncoder:
    return TorchEncoder(checkpoints.a)


def _inputs(encoder: TorchEncoder, t: int, seed: int) -> np.ndarray:
    h, w = encoder.input_size
    return np.random.default_rng(seed).standard_normal((t, 3, h, w)).astype(np.float32)


class Recorder:
    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, size: int, seconds: float) -> None:
        with self.lock:
            self.sizes.append(size)


def test_encoder_interface(encoder: TorchEncoder, checkpoints: Any) -> None:
    assert isinstance(encoder, Encoder)
    assert (encoder.backend, encoder.device, encoder.fingerprint) == ("torch", "cpu", checkpoints.fingerprint_a)
    out = encoder.encode(np.stack([_inputs(encoder, 2, 0), _inputs(encoder, 2, 1)]))
    assert out.shape == (2, encoder.dim) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="frames must be"):
        encoder.encode(np.zeros((1, 2, 3, 5, 5), dtype=np.float32))


def test_equal_shapes_share_a_model_call(encoder: TorchEncoder) -> None:
    recorder = Recorder()
    jobs = [_inputs(encoder, 2, i) for i in range(4)] + [_inputs(encoder, 3, 9)]
    # A long wait makes the grouping deterministic: all five jobs are queued before it ends.
    batcher = MicroBatcher(encoder.encode, max_batch=4, max_wait_ms=2000, observer=recorder)
    try:
        futures = [batcher.submit(x) for x in jobs]
        results = [f.result(timeout=120) for f in futures]
    finally:
        batcher.close()
    assert sorted(recorder.sizes) == [1, 4]
    for x, got in zip(jobs, results):
        np.testing.assert_allclose(got, encoder.encode(x[None])[0], atol=1e-5)


def test_max_batch_one_disables_batching(encoder: TorchEncoder) -> None:
    recorder = Recorder()
    batcher = MicroBatcher(encoder.encode, max_batch=1, max_wait_ms=2000, observer=recorder)
    try:
        futures = [batcher.submit(_inputs(encoder, 2, i)) for i in range(3)]
        for f in futures:
            f.result(timeout=120)
    finally:
        batcher.close()
    assert recorder.sizes == [1, 1, 1]


def test_a_failing_batch_fails_only_its_jobs(encoder: TorchEncoder) -> None:
    batcher = MicroBatcher(encoder.encode, max_batch=4, max_wait_ms=0)
    try:
        bad = batcher.submit(np.zeros((2, 3, 5, 5), dtype=np.float32))  # wrong image size
        good = batcher.submit(_inputs(encoder, 2, 0))
        with pytest.raises(ValueError):
            bad.result(timeout=120)
        assert good.result(timeout=120).shape == (encoder.dim,)
    finally:
        batcher.close()
    with pytest.raises(BatcherClosed):
        batcher.submit(_inputs(encoder, 2, 0))


def test_frame_sampling(encoder: TorchEncoder, make_image: Callable[..., bytes]) -> None:
    import io

    images = [Image.open(io.BytesIO(make_image(i))) for i in range(20)]
    short = prepare_tracklet(images[:5], encoder.input_spec)  # short tracklets repeat frames in order
    np.testing.assert_array_equal(short, prepare_tracklet([images[i] for i in [0, 0, 1, 2, 2, 3, 4, 4]],
                                                          encoder.input_spec))
    x = prepare_tracklet(images, encoder.input_spec)
    assert x.shape == (8, 3, *encoder.input_size)
    picked = prepare_tracklet([images[i] for i in even_indices(20, 8).tolist()], encoder.input_spec)
    np.testing.assert_array_equal(x, picked)
