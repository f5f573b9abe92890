"""Peak memory of large-frame uploads, measured on a real ``sasreid serve`` process (issue 9, item 1).

Before the fix every frame was decoded at full resolution and all of them were held until the
tracklet was built: 16 frames of a 4000x4000 JPEG took the server's peak RSS (VmHWM) up by
~0.8 GB, 64 frames by 4 GB. Now frames are decoded one at a time at reduced JPEG scale, and at
most ``max_concurrent_decodes`` requests decode at once.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

FRAMES = 16  # enough to fail the old code (~48 MB per decoded frame), quick to run on 2 cores
CONCURRENT = 4
GROWTH_LIMIT_MB = 400


def large_jpeg(side: int = 4000) -> bytes:
    """A smooth side x side photo-like JPEG (~0.2 MB): upsampled colour noise."""
    small = np.random.default_rng(0).integers(0, 256, size=(side // 100, side // 100, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((side, side), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=75)
    return out.getvalue()


def vm_hwm_mb(pid: int) -> float:
    """The process's peak resident set size so far (kernel's high-water mark), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def test_large_jpeg_query_peak_memory(
    process_server: Callable[..., Any],
    checkpoints: Any,
    tmp_path: Path,
    make_tracklet: Callable[..., list[tuple[str, bytes]]],
) -> None:
    server = process_server(["--checkpoint", str(checkpoints.a), "--store", f"sqlite:///{tmp_path / 'g.sqlite'}"])
    assert server.proc is not None
    pid = server.proc.pid
    big = large_jpeg()
    assert len(big) * FRAMES < 64 * 1024 * 1024  # within the default request limit
    frames = [(f"f{i:03d}.jpg", big) for i in range(FRAMES)]
    with server.client() as client:
        client.enroll(make_tracklet(1), "someone", tracklet_id="someone_1")
        # Warm-up: the first query pays for the model's buffers and the allocator's arenas.
        client.query(frames=frames[:1], top_k=1)
        before = vm_hwm_mb(pid)
        start = time.monotonic()
        answer = client.query(frames=frames, top_k=1)
        elapsed = time.monotonic() - start
    one = vm_hwm_mb(pid) - before
    assert answer["results"][0]["identity"] == "someone"
    assert one < GROWTH_LIMIT_MB, f"peak RSS grew {one:.0f} MB for one {FRAMES}-frame 4000x4000 query"
    assert elapsed < 60

    # Several at once: the decode slots keep the peak bounded too.
    errors: list[BaseException] = []

    def one_query() -> None:
        try:
            with server.client() as c:
                c.query(frames=frames, top_k=1)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one_query) for _ in range(CONCURRENT)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and not any(t.is_alive() for t in threads)
    together = vm_hwm_mb(pid) - before
    assert together < GROWTH_LIMIT_MB, f"peak RSS grew {together:.0f} MB for {CONCURRENT} concurrent queries"
