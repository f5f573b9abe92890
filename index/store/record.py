"""The stored form of one gallery tracklet, with validation and the byte encoding of descriptors."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from index.store.errors import InvalidRecord

Platform = Literal["aerial", "ground"]
PLATFORMS: tuple[str, ...] = ("aerial", "ground")
# Descriptors are stored as raw little-endian float32 so both backends hold the same bytes.
DESCRIPTOR_DTYPE = np.dtype("<f4")


@dataclass(frozen=True, eq=False)
class Record:
    """One tracklet of the gallery.

    ``int_id`` is assigned by the store on first write (a persisted counter, never reused) and is
    the id the FAISS index uses; pass ``None`` when writing. ``metadata`` must be JSON-serialisable
    and comes back as parsed JSON (tuples become lists). ``content_hash`` identifies the uploaded
    content: writing the same ``tracklet_id`` again with the same hash and identity is idempotent.
    """

    tracklet_id: str
    identity: str
    num_frames: int
    fingerprint: str
    descriptor: np.ndarray
    content_hash: str
    camera: str | None = None
    platform: Platform | None = None
    session: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    int_id: int | None = None

    def __post_init__(self) -> None:
        for name in ("tracklet_id", "identity", "fingerprint", "content_hash"):
            _require_text(name, getattr(self, name))
        for name in ("camera", "session"):
            value = getattr(self, name)
            if value is not None:
                _require_text(name, value)
        if self.platform is not None and self.platform not in PLATFORMS:
            raise InvalidRecord(f"platform must be one of {PLATFORMS} or None, got {self.platform!r}")
        if isinstance(self.num_frames, bool) or not isinstance(self.num_frames, int) or self.num_frames < 0:
            raise InvalidRecord(f"num_frames must be a non-negative int, got {self.num_frames!r}")
        if not isinstance(self.metadata, dict):
            raise InvalidRecord(f"metadata must be a dict, got {type(self.metadata).__name__}")
        encode_metadata(self.metadata)
        if (
            isinstance(self.created_at, bool)
            or not isinstance(self.created_at, (int, float))
            or not math.isfinite(self.created_at)
        ):
            raise InvalidRecord(f"created_at must be a finite unix time, got {self.created_at!r}")
        object.__setattr__(self, "created_at", float(self.created_at))
        if self.int_id is not None and (
            isinstance(self.int_id, bool) or not isinstance(self.int_id, (int, np.integer)) or self.int_id < 0
        ):
            raise InvalidRecord(f"int_id must be a non-negative int or None, got {self.int_id!r}")
        if self.int_id is not None:
            object.__setattr__(self, "int_id", int(self.int_id))
        object.__setattr__(self, "descriptor", validate_descriptor(self.descriptor))

    @property
    def dim(self) -> int:
        return int(self.descriptor.shape[0])


def _require_text(name: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidRecord(f"{name} must be a non-empty string, got {value!r}")


def validate_descriptor(descriptor: object, name: str = "descriptor") -> np.ndarray:
    """Return ``descriptor`` as a read-only little-endian float32 vector, or raise ``InvalidRecord``."""
    if not isinstance(descriptor, np.ndarray):
        raise InvalidRecord(f"{name} must be a numpy array, got {type(descriptor).__name__}")
    if descriptor.ndim != 1 or descriptor.shape[0] == 0:
        raise InvalidRecord(f"{name} must be a non-empty 1-D vector, got shape {descriptor.shape}")
    if not np.issubdtype(descriptor.dtype, np.floating):
        raise InvalidRecord(f"{name} must be floating point, got dtype {descriptor.dtype}")
    out = np.ascontiguousarray(descriptor, dtype=DESCRIPTOR_DTYPE)
    if not np.all(np.isfinite(out)):
        raise InvalidRecord(f"{name} contains NaN or infinite values")
    if out is descriptor:
        out = out.copy()
    out.flags.writeable = False
    return out


def descriptor_to_bytes(descriptor: np.ndarray) -> bytes:
    return np.ascontiguousarray(descriptor, dtype=DESCRIPTOR_DTYPE).tobytes()


def descriptor_from_bytes(raw: bytes) -> np.ndarray:
    if len(raw) % DESCRIPTOR_DTYPE.itemsize:
        raise InvalidRecord(f"stored descriptor has {len(raw)} bytes, not a multiple of 4")
    out = np.frombuffer(raw, dtype=DESCRIPTOR_DTYPE).copy()
    out.flags.writeable = False
    return out


def encode_metadata(metadata: dict[str, Any]) -> str:
    try:
        return json.dumps(metadata, allow_nan=False, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidRecord(f"metadata must be JSON-serialisable: {exc}") from exc


def validate_frames(frames: object) -> list[bytes]:
    """Frames are the encoded images of a tracklet, kept for re-embedding."""
    if not isinstance(frames, (list, tuple)) or not frames:
        raise InvalidRecord("frames must be a non-empty list of bytes")
    out: list[bytes] = []
    for i, frame in enumerate(frames):
        if not isinstance(frame, (bytes, bytearray, memoryview)):
            raise InvalidRecord(f"frames[{i}] must be bytes, got {type(frame).__name__}")
        out.append(bytes(frame))
    return out
