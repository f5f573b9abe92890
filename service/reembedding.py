"""Re-embedding stored tracklets from their kept frames with another checkpoint.

Shared by ``sasreid reembed`` (the store of a stopped server) and the ``reembed`` job (a running
gallery, ``service.jobs.reembed_job``): both must give a tracklet the descriptor an upload of the
same frames to a server of the new checkpoint would get.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.encoders import Encoder
from service.images import FrameLimits, decode_tracklet

# Frames were validated when uploaded; these limits only keep a tampered store from exploding.
STORED_FRAME_LIMITS = FrameLimits(max_frame_bytes=1 << 30, max_pixels=1 << 31)

FRAMES_NOT_KEPT_HELP = (
    "these tracklets have no kept frames, so they cannot be re-embedded. Frames are kept only by a "
    "server started with --keep-frames (SASREID_KEEP_FRAMES=1); bulk-imported descriptors never have "
    "frames. Re-enroll the gallery with the new checkpoint instead (`sasreid serve --checkpoint NEW "
    "--store NEW_STORE --keep-frames`, then `sasreid enroll`), or re-import descriptors computed "
    "offline with the new checkpoint through POST /tracklets/batch into an empty store."
)


class FrameEmbedder:
    """Embeds kept frames with the server's decoding and frame sampling (``decode_tracklet``),
    stacking tracklets whose model input has the same shape into calls of ``batch_size``.

    ``add`` queues a tracklet (a full batch runs at once); ``take`` runs what is queued and
    returns every descriptor made since the last ``take``. Raises ``ApiError`` (4xx) for a frame
    that cannot be decoded.
    """

    def __init__(self, encoder: Encoder, batch_size: int = 8) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.encoder = encoder
        self.batch_size = batch_size
        self._pending: dict[tuple[int, ...], tuple[list[str], list[np.ndarray]]] = {}
        self._done: dict[str, np.ndarray] = {}

    def add(self, tracklet_id: str, frames: Sequence[bytes]) -> None:
        named = [(f"{tracklet_id}[{i}]", data) for i, data in enumerate(frames)]
        x = decode_tracklet(named, STORED_FRAME_LIMITS, self.encoder.input_spec)
        ids, inputs = self._pending.setdefault(x.shape, ([], []))
        ids.append(tracklet_id)
        inputs.append(x)
        if len(inputs) >= self.batch_size:
            self._run(ids, inputs)

    def take(self) -> dict[str, np.ndarray]:
        for ids, inputs in self._pending.values():
            if inputs:
                self._run(ids, inputs)
        done, self._done = self._done, {}
        return done

    def _run(self, ids: list[str], inputs: list[np.ndarray]) -> None:
        out = self.encoder.encode(np.stack(inputs))
        for tracklet_id, row in zip(ids, out, strict=True):
            self._done[tracklet_id] = row
        ids.clear()
        inputs.clear()
