"""Validation and decoding of uploaded frames.

A frame is accepted only if all of these hold, checked in this order so nothing expensive happens
before the cheap checks pass:

1. its size is at most ``max_frame_bytes``;
2. its first bytes are a JPEG, PNG or WebP signature (the declared content type and file name are
   ignored: a text file named ``.jpg`` is rejected);
3. PIL's lazy open (which reads only the header) reports the same format, and the header's
   ``width * height`` is at most ``max_pixels`` - a decompression bomb is rejected here, before
   any pixel is decoded (PIL's own ``MAX_IMAGE_PIXELS`` guard is set to the same limit as a
   second line of defence);
4. the pixels decode completely (a truncated or corrupt file is rejected).

For a whole upload (``decode_tracklet``) checks 1-3 run on every frame first, and the pixels the
frames will decode to are summed and held to ``max_request_pixels``, before any frame is decoded.

Each failure raises ``ApiError`` (413 for byte sizes, 415 for a format that is not accepted, 422
for pixels and corrupt data) naming the file.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from service.core.errors import ApiError
from service.encoders import InputSpec, images_to_input, sampled_indices

# PIL reports camera JPEGs with embedded previews as MPO; they are JPEG files.
_DECODED_AS: dict[str, tuple[str, ...]] = {"JPEG": ("JPEG", "MPO"), "PNG": ("PNG",), "WEBP": ("WEBP",)}


# A JPEG is decoded at reduced scale, and any frame shrunk by an integer factor, only down to
# this multiple of the model's input size (see plan_decode).
_OVERSAMPLE = 2


@dataclass(frozen=True)
class FrameLimits:
    max_frame_bytes: int
    max_pixels: int
    # Decoded pixels of all frames of one request; the default leaves callers such as
    # ``sasreid reembed`` (its own trusted frames) unlimited.
    max_request_pixels: int = 1 << 62


def install_pil_guard(max_pixels: int) -> None:
    """Make PIL itself refuse images above ``max_pixels`` (it raises above twice its limit, warns
    between once and twice; ``decode_frame`` turns the warning into a rejection too)."""
    Image.MAX_IMAGE_PIXELS = max_pixels


def sniff_format(data: bytes) -> str | None:
    """The image format named by the leading bytes, or None when it is not an accepted one."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def open_frame(data: bytes, name: str, limits: FrameLimits) -> Image.Image:
    """Checks 1-3 of the module docstring: the frame opened lazily (header read, no pixels)."""
    if len(data) == 0:
        raise ApiError(422, "empty_frame", f"frame {name!r} is empty", field="frames", file=name)
    if len(data) > limits.max_frame_bytes:
        raise ApiError(
            413,
            "frame_too_large",
            f"frame {name!r} has {len(data)} bytes; the limit is {limits.max_frame_bytes} bytes per frame",
            field="frames",
            file=name,
        )
    sniffed = sniff_format(data)
    if sniffed is None:
        raise ApiError(
            415,
            "unsupported_image_format",
            f"frame {name!r} is not a JPEG, PNG or WebP image (checked by content, not by name or type)",
            field="frames",
            file=name,
        )
    with warnings.catch_warnings():
        # Between MAX_IMAGE_PIXELS and twice that PIL only warns; treat that as a bomb too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=[sniffed])
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _too_many_pixels(name, None, limits) from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise _corrupt(name, sniffed, exc) from None
    if image.format not in _DECODED_AS[sniffed]:
        raise _corrupt(name, sniffed, ValueError(f"decoder reports {image.format}"))
    width, height = image.size
    if width < 1 or height < 1:
        raise _corrupt(name, sniffed, ValueError(f"header declares size {width}x{height}"))
    if width * height > limits.max_pixels:
        raise _too_many_pixels(name, (width, height), limits)
    return image


def plan_decode(image: Image.Image, target: tuple[int, int] | None) -> tuple[int, int]:
    """Ask the JPEG decoder to decode at a reduced scale (1/2, 1/4 or 1/8, DCT scaling) when the
    frame is far larger than needed; returns the (width, height) that decoding will produce.

    ``target`` is the model's input size (H, W). The decoder keeps at least
    ``_OVERSAMPLE`` x that size, so the final bicubic resize still works from a supersampled
    image and ordinary crops (under ``2 * _OVERSAMPLE`` x the input size) decode exactly as
    before. PNG and WebP have no reduced decoding; ``load_frame`` shrinks them right after.
    """
    if target is not None and image.format in ("JPEG", "MPO"):
        image.draft("RGB", (target[1] * _OVERSAMPLE, target[0] * _OVERSAMPLE))
    return image.size


def load_frame(image: Image.Image, name: str, target: tuple[int, int] | None) -> Image.Image:
    """Check 4: decode the pixels, as RGB, shrunk by an integer factor towards ``target``."""
    fmt = image.format or "image"
    width, height = image.size
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image.load()
            rgb = image if image.mode == "RGB" else image.convert("RGB")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _too_many_pixels(name, (width, height), None) from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise _corrupt(name, fmt, exc) from None
    if target is not None:
        factor = min(width // (target[1] * _OVERSAMPLE), height // (target[0] * _OVERSAMPLE))
        if factor >= 2:
            # Box-filter reduction: one pass over the pixels, and the full-size copy is freed now
            # instead of living until the whole tracklet is decoded.
            rgb = rgb.reduce(factor)
    return rgb


def decode_frame(
    data: bytes, name: str, limits: FrameLimits, target: tuple[int, int] | None = None
) -> Image.Image:
    """Validate one uploaded frame and return it decoded as an RGB image (reduced towards
    ``target`` = the model's input size (H, W) when given; full size otherwise)."""
    image = open_frame(data, name, limits)
    plan_decode(image, target)
    return load_frame(image, name, target)


def _too_many_pixels(name: str, size: tuple[int, int] | None, limits: FrameLimits | None) -> ApiError:
    what = f"{size[0]}x{size[1]} = {size[0] * size[1]} pixels" if size else "more pixels than allowed"
    limit = limits.max_pixels if limits is not None else Image.MAX_IMAGE_PIXELS
    return ApiError(
        422,
        "image_too_large",
        f"frame {name!r} declares {what}; the limit is {limit} pixels per frame "
        "(rejected before decoding)",
        field="frames",
        file=name,
    )


def _corrupt(name: str, fmt: str, exc: BaseException) -> ApiError:
    return ApiError(
        422,
        "corrupt_image",
        f"frame {name!r} looks like {fmt} but cannot be decoded: {exc}",
        field="frames",
        file=name,
    )


def decode_tracklet(frames: Sequence[tuple[str, bytes]], limits: FrameLimits, spec: InputSpec) -> np.ndarray:
    """Validate and decode every uploaded frame (all of them, so a bad frame is always rejected even
    when sampling would skip it), then build the model input ``[T, 3, H, W]``.

    Memory stays near one decoded frame plus the ``eval_frames`` kept ones, whatever the upload:
    every header is checked first (and the request's decoded pixels summed against
    ``max_request_pixels``) before any pixel is decoded; then frames are decoded one at a time,
    at reduced scale where the format allows (see ``plan_decode``), and only the frames sampling
    picks are kept. Decoding every frame at full size and keeping them all took a 64-frame
    request of 4000x4000 JPEGs to +4 GB.
    """
    if len(frames) == 0:
        raise ValueError("a tracklet needs at least one frame")
    opened: list[Image.Image | None] = []
    decoded_pixels = 0
    for name, data in frames:
        image = open_frame(data, name, limits)
        width, height = plan_decode(image, spec.size)
        decoded_pixels += width * height
        opened.append(image)
    if decoded_pixels > limits.max_request_pixels:
        raise ApiError(
            422,
            "too_many_pixels",
            f"the {len(frames)} frames would decode to {decoded_pixels} pixels; the limit is "
            f"{limits.max_request_pixels} decoded pixels per request (JPEGs far above the model's input "
            "size count at their reduced decoding scale); send smaller crops or fewer frames",
            field="frames",
        )
    picks = sampled_indices(len(frames), spec)
    wanted = set(picks)
    kept: dict[int, Image.Image] = {}
    for i, (name, _) in enumerate(frames):
        image = opened[i]
        assert image is not None
        opened[i] = None  # drop the parser (and its buffer) as soon as the frame is decoded
        small = load_frame(image, name, spec.size)
        if i in wanted:
            kept[i] = small
    return images_to_input([kept[i] for i in picks], spec)
