"""Every kind of bad request gets the right 4xx status, the one error shape, and changes nothing."""

from __future__ import annotations

import io
import json
import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

WRITE = {"X-API-Key": "test-write-key"}
READ = {"X-API-Key": "test-read-key"}
MAX_FRAMES = 4
MAX_FRAME_BYTES = 64 * 1024
MAX_REQUEST_BYTES = 1024 * 1024
MAX_PIXELS = 1000 * 1000


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose header declares ``width x height`` (a decompression bomb if decoded)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + 3 * min(width, 64)))  # one short row: decoding would fail later
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def noise_png(side: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def gif_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 32), (200, 10, 10)).save(out, format="GIF")
    return out.getvalue()


@dataclass
class Env:
    url: str
    fingerprint: str
    dim: int
    good: list[tuple[str, bytes]]
    other: list[tuple[str, bytes]]


@pytest.fixture(scope="module")
def env(
    checkpoints: Any,
    tmp_path_factory: pytest.TempPathFactory,
    make_settings: Callable[..., Any],
    make_tracklet: Callable[..., list[tuple[str, bytes]]],
    module_thread_server: Callable[..., Any],
) -> Env:
    from service.client import SasreidClient

    store = f"sqlite:///{tmp_path_factory.mktemp('bad') / 'gallery.sqlite'}"
    settings = make_settings(
        checkpoints.a,
        store,
        max_frames_per_tracklet=MAX_FRAMES,
        max_frame_bytes=MAX_FRAME_BYTES,
        max_request_bytes=MAX_REQUEST_BYTES,
        max_pixels=MAX_PIXELS,
    )
    server = module_thread_server(settings)
    good = make_tracklet(11)
    with SasreidClient(server.url, api_key="test-write-key") as client:
        client.enroll(good, "known", tracklet_id="known_1", camera="cam1", platform="ground")
        stats = client.stats()
    return Env(server.url, stats["fingerprint"], stats["dim"], good, make_tracklet(12))


def _files(frames: list[tuple[str, bytes]]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("frames", (name, data, "image/jpeg")) for name, data in frames]


def _enroll(env: Env, frames: list[tuple[str, bytes]], headers: dict[str, str] = WRITE, **fields: str) -> httpx.Response:
    data = {"identity": "newcomer", "tracklet_id": "new_1", **fields}
    return httpx.post(f"{env.url}/tracklets", data=data, files=_files(frames), headers=headers, timeout=60)


def _batch(env: Env, records: list[dict[str, Any]], headers: dict[str, str] = WRITE) -> httpx.Response:
    body = json.dumps(records).encode()  # json.dumps writes NaN as the (non-standard) literal NaN
    return httpx.post(
        f"{env.url}/tracklets/batch",
        content=body,
        headers={**headers, "Content-Type": "application/json"},
        timeout=60,
    )


def _record(env: Env, tid: str = "imported_1", **over: Any) -> dict[str, Any]:
    vec = np.random.default_rng(len(tid)).standard_normal(env.dim)
    rec = {
        "tracklet_id": tid,
        "identity": "imported",
        "descriptor": (vec / np.linalg.norm(vec)).tolist(),
        "fingerprint": env.fingerprint,
        "platform": "aerial",
    }
    rec.update(over)
    return rec


def _nan_descriptor(env: Env) -> list[float]:
    d = _record(env)["descriptor"]
    d[3] = math.nan
    return d


Case = Callable[[Env], httpx.Response]

CASES: list[tuple[str, Case, int, str]] = [
    # ---- frames ----------------------------------------------------------------------------
    ("corrupt_png", lambda e: _enroll(e, [("a.png", e.good[0][1][:40] + b"\x00" * 200)]), 422, "corrupt_image"),
    ("truncated_jpeg", lambda e: _enroll(e, [("a.jpg", _jpeg(e)[: len(_jpeg(e)) // 2])]), 422, "corrupt_image"),
    ("zero_frames", lambda e: _multipart_without_frames(e), 422, "no_frames"),
    ("file_in_other_field", lambda e: httpx.post(f"{e.url}/tracklets", data={"identity": "x"},
                                                 files={"photo": ("a.png", e.good[0][1])}, headers=WRITE), 422,
     "unexpected_file"),
    ("form_urlencoded", lambda e: httpx.post(f"{e.url}/tracklets", data={"identity": "x"}, headers=WRITE), 415,
     "unsupported_media_type"),
    ("too_many_frames", lambda e: _enroll(e, e.good * 3), 422, "too_many_frames"),
    ("frame_too_large", lambda e: _enroll(e, [("big.png", noise_png(160))]), 413, "frame_too_large"),
    ("request_too_large", lambda e: _enroll(e, [(f"{i}.png", noise_png(140, i)) for i in range(20)]), 413,
     "request_too_large"),
    ("bomb_50000x50000", lambda e: _enroll(e, [("bomb.png", png_header_only(50000, 50000))]), 422, "image_too_large"),
    ("bomb_just_over_limit", lambda e: _enroll(e, [("bomb.png", png_header_only(1200, 1000))]), 422,
     "image_too_large"),
    ("text_named_jpg", lambda e: _enroll(e, [("crop.jpg", b"this is not an image, just text\n" * 4)]), 415,
     "unsupported_image_format"),
    ("gif", lambda e: _enroll(e, [("crop.gif", gif_bytes())]), 415, "unsupported_image_format"),
    ("empty_file", lambda e: _enroll(e, [("crop.png", b"")]), 422, "empty_frame"),
    ("bad_frame_mixed_in", lambda e: _enroll(e, [*e.other, ("crop.jpg", b"GIF89a...")]), 415,
     "unsupported_image_format"),
    ("frames_as_text", lambda e: httpx.post(f"{e.url}/tracklets", data={"identity": "x", "frames": "abc"},
                                            files=_files(e.other), headers=WRITE), 422, "invalid_frame"),
    # ---- fields ----------------------------------------------------------------------------
    ("bad_platform", lambda e: _enroll(e, e.other, platform="satellite"), 422, "invalid_request"),
    ("bad_metadata_json", lambda e: _enroll(e, e.other, metadata="{not json"), 422, "invalid_request"),
    ("metadata_not_object", lambda e: _enroll(e, e.other, metadata="[1, 2]"), 422, "invalid_request"),
    ("metadata_nan", lambda e: _enroll(e, e.other, metadata='{"x": NaN}'), 422, "invalid_request"),
    ("missing_identity", lambda e: httpx.post(f"{e.url}/tracklets", files=_files(e.other), headers=WRITE), 422,
     "invalid_request"),
    ("slash_in_tracklet_id", lambda e: _enroll(e, e.other, tracklet_id="a/b"), 422, "invalid_request"),
    ("unknown_field", lambda e: _enroll(e, e.other, colour="red"), 422, "invalid_request"),
    ("json_to_enroll", lambda e: httpx.post(f"{e.url}/tracklets", json={"identity": "x"}, headers=WRITE), 415,
     "unsupported_media_type"),
    ("conflicting_content", lambda e: _enroll(e, e.other, identity="known", tracklet_id="known_1", camera="cam1",
                                              platform="ground"), 409, "tracklet_conflict"),
    # ---- bulk import -----------------------------------------------------------------------
    ("batch_wrong_dimension", lambda e: _batch(e, [_record(e, descriptor=[1.0] + [0.0] * (e.dim + 1))]), 422,
     "dimension_mismatch"),
    ("batch_nan", lambda e: _batch(e, [_record(e, descriptor=_nan_descriptor(e))]), 422, "non_finite_descriptor"),
    ("batch_wrong_fingerprint", lambda e: _batch(e, [_record(e, fingerprint="0123456789abcdef")]), 422,
     "fingerprint_mismatch"),
    ("batch_not_normalised", lambda e: _batch(e, [_record(e, descriptor=[0.5] * e.dim)]), 422, "invalid_descriptor"),
    ("batch_one_bad_of_three", lambda e: _batch(e, [_record(e, "ok_1"), _record(e, "ok_2"),
                                                    _record(e, "bad_3", descriptor=[2.0] * e.dim)]), 422,
     "invalid_descriptor"),
    ("batch_duplicate_ids", lambda e: _batch(e, [_record(e, "dup"), _record(e, "dup", identity="other")]), 409,
     "tracklet_conflict"),
    ("batch_empty", lambda e: _batch(e, []), 422, "empty_batch"),
    ("batch_not_json", lambda e: httpx.post(f"{e.url}/tracklets/batch", content=b"[{oops",
                                            headers={**WRITE, "Content-Type": "application/json"}), 422,
     "invalid_json"),
    ("batch_missing_field", lambda e: _batch(e, [{k: v for k, v in _record(e).items() if k != "fingerprint"}]), 422,
     "invalid_request"),
    # ---- unknown ids -----------------------------------------------------------------------
    ("get_unknown_tracklet", lambda e: httpx.get(f"{e.url}/tracklets/nope", headers=READ), 404, "tracklet_not_found"),
    ("delete_unknown_tracklet", lambda e: httpx.delete(f"{e.url}/tracklets/nope", headers=WRITE), 404,
     "tracklet_not_found"),
    ("get_unknown_identity", lambda e: httpx.get(f"{e.url}/identities/nobody", headers=READ), 404,
     "identity_not_found"),
    ("delete_unknown_identity", lambda e: httpx.delete(f"{e.url}/identities/nobody", headers=WRITE), 404,
     "identity_not_found"),
    ("query_unknown_tracklet", lambda e: httpx.post(f"{e.url}/query", json={"tracklet_id": "nope"}, headers=READ),
     404, "tracklet_not_found"),
    # ---- auth ------------------------------------------------------------------------------
    ("no_key_read", lambda e: httpx.get(f"{e.url}/stats"), 401, "missing_api_key"),
    ("no_key_write", lambda e: _enroll(e, e.other, headers={}), 401, "missing_api_key"),
    ("wrong_key", lambda e: httpx.get(f"{e.url}/stats", headers={"X-API-Key": "guess"}), 401, "invalid_api_key"),
    ("read_key_enroll", lambda e: _enroll(e, e.other, headers=READ), 403, "forbidden"),
    ("read_key_batch", lambda e: _batch(e, [_record(e)], headers=READ), 403, "forbidden"),
    ("read_key_delete", lambda e: httpx.delete(f"{e.url}/tracklets/known_1", headers=READ), 403, "forbidden"),
    ("read_key_delete_identity", lambda e: httpx.delete(f"{e.url}/identities/known", headers=READ), 403, "forbidden"),
    # ---- query options ---------------------------------------------------------------------
    ("query_top_k_zero", lambda e: httpx.post(f"{e.url}/query", json={"tracklet_id": "known_1", "top_k": 0},
                                              headers=READ), 422, "invalid_request"),
    ("query_k1_too_big", lambda e: httpx.post(f"{e.url}/query", json={"tracklet_id": "known_1", "rerank": True,
                                                                      "k1": 500}, headers=READ), 422,
     "invalid_rerank"),
    ("query_lambda_out_of_range", lambda e: httpx.post(f"{e.url}/query", data={"lambda": "2", "rerank": "true"},
                                                       files=_files(e.other), headers=READ), 422, "invalid_request"),
    ("query_no_frames", lambda e: _multipart_without_frames(e, "/query", "top_k"), 422, "no_frames"),
    ("query_bad_platform", lambda e: httpx.post(f"{e.url}/query", data={"platform": "space"}, files=_files(e.other),
                                                headers=READ), 422, "invalid_request"),
    ("identities_limit_zero", lambda e: httpx.get(f"{e.url}/identities", params={"limit": 0}, headers=READ), 422,
     "invalid_request"),
    ("identities_limit_huge", lambda e: httpx.get(f"{e.url}/identities", params={"limit": 10**6}, headers=READ), 422,
     "invalid_request"),
]


def _jpeg(env: Env) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(env.good[0][1])).convert("RGB").resize((96, 192)).save(out, format="JPEG", quality=95)
    return out.getvalue()


def _multipart_without_frames(env: Env, path: str = "/tracklets", field: str = "identity") -> httpx.Response:
    # A multipart body with one text field and no file (httpx would send a url-encoded form).
    boundary = "sasreidboundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"\r\n\r\n3\r\n--{boundary}--\r\n').encode()
    return httpx.post(
        f"{env.url}{path}",
        content=body,
        headers={**WRITE, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )


def _snapshot(env: Env) -> tuple[dict[str, Any], dict[str, Any]]:
    stats = httpx.get(f"{env.url}/stats", headers=READ).json()
    known = httpx.get(f"{env.url}/tracklets/known_1", headers=READ).json()
    return {k: stats[k] for k in ("tracklets", "identities", "indexed_tracklets", "fingerprint")}, known


@pytest.mark.parametrize(("case", "request_fn", "status", "error"), CASES, ids=[c[0] for c in CASES])
def test_rejected_and_gallery_unchanged(
    env: Env, case: str, request_fn: Case, status: int, error: str
) -> None:
    before = _snapshot(env)
    response = request_fn(env)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail"}
    detail = body["detail"]
    assert detail["error"] == error, detail
    assert isinstance(detail["message"], str) and len(detail["message"]) > 10
    assert set(detail) <= {"error", "message", "field", "file"}
    assert _snapshot(env) == before
    # Nothing was half-stored either: the ids these cases use are absent.
    for tid in ("new_1", "imported_1", "ok_1", "ok_2", "dup"):
        assert httpx.get(f"{env.url}/tracklets/{tid}", headers=READ).status_code == 404


def test_error_names_the_file_and_field(env: Env) -> None:
    response = _enroll(env, [*env.other, ("evil.jpg", b"plain text, not a JPEG")])
    detail = response.json()["detail"]
    assert (detail["file"], detail["field"]) == ("evil.jpg", "frames")
    response = _enroll(env, env.other, platform="satellite")
    assert response.json()["detail"]["field"] == "platform"
    response = _batch(env, [_record(env), _record(env, "imported_2", descriptor=[1.0])])
    assert response.json()["detail"]["field"] == "records[1].descriptor"


def test_oversized_body_rejected_before_reading(env: Env) -> None:
    """A Content-Length above the limit is answered without the body being sent at all."""
    import socket
    from urllib.parse import urlparse

    target = urlparse(env.url)
    with socket.create_connection((target.hostname, target.port), timeout=10) as sock:
        head = (
            "POST /tracklets HTTP/1.1\r\nHost: x\r\nX-API-Key: test-write-key\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {MAX_REQUEST_BYTES * 50}\r\n\r\n"
        )
        sock.sendall(head.encode())  # and never the body
        chunks = []
        while chunk := sock.recv(65536):  # the server closes the connection after answering
            chunks.append(chunk)
        answer = b"".join(chunks).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 413")
    assert "request_too_large" in answer


def test_good_upload_still_accepted(env: Env, tmp_path: Path) -> None:
    """The limits do not reject ordinary frames: a WebP and a PNG within limits enroll fine."""
    webp = io.BytesIO()
    Image.open(io.BytesIO(env.other[0][1])).save(webp, format="WEBP")
    response = _enroll(env, [("f0.webp", webp.getvalue()), env.other[1]], tracklet_id="fine_1")
    assert response.status_code == 201, response.text
    assert httpx.delete(f"{env.url}/tracklets/fine_1", headers=WRITE).status_code == 200


def test_chunked_body_cut_off_at_the_limit(env: Env) -> None:
    """Without a Content-Length the body is counted as it streams and refused once over the limit."""
    def body() -> Any:
        yield b"--b\r\nContent-Disposition: form-data; name=\"frames\"; filename=\"a.png\"\r\n\r\n"
        for _ in range(2 * MAX_REQUEST_BYTES // 65536):
            yield b"\x00" * 65536

    before = _snapshot(env)
    response = httpx.post(
        f"{env.url}/tracklets",
        content=body(),
        headers={**WRITE, "Content-Type": "multipart/form-data; boundary=b"},
        timeout=60,
    )
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert response.status_code == 413
    assert response.json()["detail"]["error"] == "request_too_large"
    assert _snapshot(env) == before
