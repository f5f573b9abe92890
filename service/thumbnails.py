"""Thumbnails of kept frames for ``GET /tracklets/{id}/frames/{index}``.

A stored frame (kept with ``--keep-frames``; validated when it was uploaded) is decoded and shrunk
so that its longer side is at most ``size`` pixels, then sent as JPEG. Frames are never enlarged:
far-distance crops are often smaller than any thumbnail, and the browser scales those up for free
(the console draws them with ``image-rendering: pixelated``) where upscaling here would only
multiply the bytes sent.

Decoding stays cheap even for a large frame: a JPEG is decoded at reduced scale (DCT scaling) down
to the nearest power-of-two reduction above the thumbnail, and the header's pixel count is checked
against ``max_pixels`` before any pixel is decoded, as for uploads.
"""

from __future__ import annotations

import io

from PIL import Image

from service.images import FrameLimits, open_frame

DEFAULT_SIZE = 128
MIN_SIZE = 16
# Bounds the work and the bytes of one request; a thumbnail, not a way to download originals.
MAX_SIZE = 512
JPEG_QUALITY = 85
MEDIA_TYPE = "image/jpeg"


def thumbnail(frame: bytes, size: int, max_pixels: int) -> bytes:
    """``frame`` (JPEG, PNG or WebP bytes) as a JPEG whose longer side is at most ``size``."""
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be in [{MIN_SIZE}, {MAX_SIZE}], got {size}")
    # Stored frames passed the upload limits of the server that kept them; the byte limit of
    # today's settings is not re-applied (a lowered limit must not hide stored pictures), the
    # pixel limit is (it bounds the memory decoding takes).
    image = open_frame(frame, "stored frame", FrameLimits(max_frame_bytes=len(frame), max_pixels=max_pixels))
    if image.format in ("JPEG", "MPO"):
        image.draft("RGB", (size, size))
    image.load()
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    rgb.thumbnail((size, size), Image.Resampling.LANCZOS)  # keeps the aspect ratio, never enlarges
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()
