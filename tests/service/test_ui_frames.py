"""``GET /tracklets/{id}/frames/{index}?size=N``: thumbnails of kept frames, for the console.

A real server on loopback with ``--keep-frames`` and an SQLite store; frames are real PNG / JPEG
files of several sizes, and each answer is decoded and compared with the frame it claims to be.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from service import thumbnails

READ = {"X-API-Key": "test-read-key"}


@pytest.fixture(scope="module")
def frames(make_image: Callable[..., bytes]) -> list[tuple[str, bytes]]:
    """A tall PNG, a wide JPEG (decoded at reduced scale) and a small crop smaller than any thumbnail."""
    return [
        ("0.png", make_image(11, "PNG", size=(400, 200))),
        ("1.jpg", make_image(12, "JPEG", size=(240, 480))),
        ("2.png", make_image(13, "PNG", size=(48, 24))),
    ]


@pytest.fixture(scope="module")
def server(
    checkpoints: Any,
    tmp_path_factory: pytest.TempPathFactory,
    make_settings: Callable[..., Any],
    module_thread_server: Callable[..., Any],
    frames: list[tuple[str, bytes]],
) -> str:
    store = f"sqlite:///{tmp_path_factory.mktemp('frames') / 'gallery.sqlite'}"
    srv = module_thread_server(make_settings(checkpoints.a, store, keep_frames=True))
    with srv.client() as client:
        client.enroll(frames, "alice", tracklet_id="alice_1", camera="cam1")
        dim = client.stats()["dim"]
        fingerprint = client.stats()["fingerprint"]
    vec = np.zeros(dim)
    vec[0] = 1.0
    record = {"tracklet_id": "imported_1", "identity": "imported", "descriptor": vec.tolist(),
              "fingerprint": fingerprint, "num_frames": 4}
    assert httpx.post(f"{srv.url}/tracklets/batch", json=[record],
                      headers={"X-API-Key": "test-write-key"}).status_code == 201
    return str(srv.url)


def _get(url: str, path: str, headers: dict[str, str] | None = None, **params: Any) -> httpx.Response:
    return httpx.get(f"{url}{path}", headers=READ if headers is None else headers, params=params, timeout=30)


def _decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    return image.convert("RGB")


def _close_to(thumb: Image.Image, original: bytes) -> float:
    """Mean absolute pixel difference between ``thumb`` and the original frame resized to it."""
    reference = Image.open(io.BytesIO(original)).convert("RGB").resize(thumb.size, Image.Resampling.LANCZOS)
    return float(np.abs(np.asarray(thumb, dtype=np.float32) - np.asarray(reference, dtype=np.float32)).mean())


def test_a_thumbnail_is_the_frame_resized_to_the_size_asked(server: str, frames: list[tuple[str, bytes]]) -> None:
    for index, size, expected in ((0, 64, (32, 64)), (1, 120, (120, 60)), (0, 512, (200, 400))):
        response = _get(server, f"/tracklets/alice_1/frames/{index}", size=size)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/jpeg"
        thumb = _decoded(response.content)
        assert thumb.size == expected  # (width, height): the longer side is `size`, the aspect kept
        # It is this frame (JPEG noise only), and visibly not the other one.
        assert _close_to(thumb, frames[index][1]) < 12
        assert _close_to(thumb, frames[1 - index][1]) > 30


def test_small_frames_are_never_enlarged_and_the_default_size_is_bounded(server: str) -> None:
    small = _get(server, "/tracklets/alice_1/frames/2", size=thumbnails.MAX_SIZE)
    assert _decoded(small.content).size == (24, 48)
    default = _decoded(_get(server, "/tracklets/alice_1/frames/0").content)
    assert max(default.size) == thumbnails.DEFAULT_SIZE


@pytest.mark.parametrize("size", [thumbnails.MIN_SIZE - 1, thumbnails.MAX_SIZE + 1, 0, 10**12])
def test_sizes_outside_the_bounds_are_refused(server: str, size: int) -> None:
    response = _get(server, "/tracklets/alice_1/frames/0", size=size)
    assert response.status_code == 422
    assert response.json()["detail"]["error"] == "invalid_request"
    assert response.json()["detail"]["field"] == "size"


def test_missing_tracklets_frames_and_keys_answer_stable_codes(server: str) -> None:
    cases = [
        ("/tracklets/alice_1/frames/3", READ, 404, "frame_not_found"),
        ("/tracklets/nobody/frames/0", READ, 404, "tracklet_not_found"),
        ("/tracklets/alice_1/frames/-1", READ, 422, "invalid_request"),
        ("/tracklets/alice_1/frames/0", {}, 401, "missing_api_key"),
        ("/tracklets/alice_1/frames/0", {"X-API-Key": "wrong"}, 401, "invalid_api_key"),
    ]
    for path, headers, status, code in cases:
        response = _get(server, path, headers=headers)
        assert (response.status_code, response.json()["detail"]["error"]) == (status, code), path


def test_an_imported_descriptor_has_no_frames_to_show(server: str) -> None:
    response = _get(server, "/tracklets/imported_1/frames/0")
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert detail["error"] == "frames_not_kept"
    assert "imported as a descriptor" in detail["message"]


def test_etag_revalidation_answers_304_without_a_body(server: str) -> None:
    first = _get(server, "/tracklets/alice_1/frames/0", size=64)
    etag = first.headers["etag"]
    assert first.headers["cache-control"] == "private, no-cache"
    again = _get(server, "/tracklets/alice_1/frames/0", headers={**READ, "If-None-Match": etag}, size=64)
    assert again.status_code == 304 and again.content == b""
    other_size = _get(server, "/tracklets/alice_1/frames/0", headers={**READ, "If-None-Match": etag}, size=65)
    assert other_size.status_code == 200 and other_size.headers["etag"] != etag
