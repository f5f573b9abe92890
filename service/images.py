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
from service.encoders import InputSpec, prepare_tracklet

# PIL reports camera JPEGs with embedded previews as MPO; they are JPEG files.
_DECODED_AS: dict[str, tuple[str, ...]] = {"JPEG": ("JPEG", "MPO"), "PNG": ("PNG",), "WEBP": ("WEBP",)}


@dataclass(frozen=True)
class FrameLimits:
    max_frame_bytes: int
    max_pixels: int


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


def decode_frame(data: bytes, name: str, limits: FrameLimits) -> Image.Image:
    """Validate one uploaded frame and return it decoded as an RGB image."""
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
        try:
            image.load()
            return image.convert("RGB")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _too_many_pixels(name, (width, height), limits) from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise _corrupt(name, sniffed, exc) from None


def _too_many_pixels(name: str, size: tuple[int, int] | None, limits: FrameLimits) -> ApiError:
    what = f"{size[0]}x{size[1]} = {size[0] * size[1]} pixels" if size else "more pixels than allowed"
    return ApiError(
        422,
        "image_too_large",
        f"frame {name!r} declares {what}; the limit is {limits.max_pixels} pixels per frame "
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
    when sampling would skip it), then build the model input ``[T, 3, H, W]``."""
    images = [decode_frame(data, name, limits) for name, data in frames]
    return prepare_tracklet(images, spec)
