"""Camera-wise centring: each camera's mean unit descriptor removed before ranking."""

from __future__ import annotations

import numpy as np
import pytest

from index.camera_centring import centre_by_camera


def test_removes_a_common_camera_offset_and_recovers_identity():
    # Six people seen by two cameras, each camera adding its own large common offset (its colour
    # cast and background): raw cosine mostly compares the offsets.
    rng = np.random.default_rng(0)
    people = rng.normal(size=(6, 8))
    q = people + 3 * rng.normal(size=8)
    g = people + 0.15 * rng.normal(size=(6, 8)) + 3 * rng.normal(size=8)

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    assert (np.argmax(unit(q) @ unit(g).T, axis=1) == np.arange(6)).mean() < 0.5
    y = centre_by_camera(np.concatenate([q, g]), ["A"] * 6 + ["B"] * 6)
    assert np.allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-6)
    assert np.argmax(y[:6] @ y[6:].T, axis=1).tolist() == list(range(6))


def test_equation_on_known_values():
    x = np.array([[3.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    y = centre_by_camera(x, [0, 0, 1], strength=0.5)
    u = np.array([[1.0, 0.0], [0.0, 1.0]])
    expect = u - 0.5 * u.mean(axis=0)
    expect /= np.linalg.norm(expect, axis=1, keepdims=True)
    assert np.allclose(y[:2], expect, atol=1e-6)
    # A camera with one row is only normalised (its own mean would centre it to zero).
    assert np.allclose(y[2], [2 ** -0.5, 2 ** -0.5], atol=1e-6)
    # strength 0 is plain L2 normalisation.
    assert np.allclose(centre_by_camera(x, [0, 0, 1], strength=0.0)[:2], u, atol=1e-6)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="one camera per row"):
        centre_by_camera(np.ones((3, 2)), [0, 1])
    with pytest.raises(ValueError, match="strength"):
        centre_by_camera(np.ones((2, 2)), [0, 1], strength=1.5)
