"""``sasreid export``: the whole embedding path (backbone, MGTM, PRSD, concat) to ONNX.

The graph takes ``frames: float32 [batch, T, 3, H, W]`` (normalised, T fixed at export time,
batch dynamic) and returns ``descriptor: float32 [batch, D]`` (L2-normalised). The checkpoint
fingerprint and the preprocessing constants are written into the model's metadata, so a gallery
built with the checkpoint accepts descriptors from the ONNX model and nothing else.

Export uses torch's TorchScript-based exporter: the dynamo exporter produces the same graph here
but takes ~20x longer on the unrolled scan loops.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model.checkpoint import load_checkpoint
from model.sasreid import SASVPReID

# Parity bound on L2-normalised descriptors: both sides compute in float32, so differences come
# only from operation order and fused kernels (measured ~1e-7). 1e-4 on a unit vector moves a
# cosine score by < 1e-4, far below the gaps that decide a ranking, yet any real export bug
# (wrong op, baked-in batch size, frame mixing) produces differences of 1e-2 or more.
DEFAULT_TOLERANCE = 1e-4
METADATA_PREFIX = "sasreid."


class _Descriptor(nn.Module):
    def __init__(self, model: SASVPReID) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.model(frames).descriptor


@dataclass
class ExportReport:
    path: Path
    fingerprint: str
    frames: int
    descriptor_dim: int
    max_abs_diff: float
    tolerance: float


class ExportError(RuntimeError):
    pass


def onnx_metadata(model: SASVPReID, frames: int) -> dict[str, str]:
    cfg = model.cfg
    return {
        f"{METADATA_PREFIX}fingerprint": str(model.fingerprint),
        f"{METADATA_PREFIX}descriptor_dim": str(model.descriptor_dim),
        f"{METADATA_PREFIX}frames": str(frames),
        f"{METADATA_PREFIX}input_size": json.dumps(list(cfg.backbone.image_size)),
        f"{METADATA_PREFIX}mean": json.dumps(list(cfg.mean)),
        f"{METADATA_PREFIX}std": json.dumps(list(cfg.std)),
        f"{METADATA_PREFIX}config": cfg.backbone.name,
    }


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``sasreid.*`` metadata of an exported model (prefix stripped)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key[len(METADATA_PREFIX):]: p.value for p in model.metadata_props if p.key.startswith(METADATA_PREFIX)}


def check_parity(model: SASVPReID, onnx_path: str | Path, frames: int, batches: tuple[int, ...] = (1, 3),
                 seed: int = 0) -> float:
    """Max abs difference between ONNX Runtime and torch descriptors on random tracklets."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    h, w = model.input_size
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for b in batches:
        x = torch.randn(b, frames, 3, h, w, generator=g)
        ref = model.embed(x, autocast=False).cpu().numpy()
        got = session.run(None, {"frames": x.numpy()})[0]
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


def export_onnx(checkpoint: str | Path, out: str | Path, frames: int | None = None, opset: int = 17,
                tolerance: float = DEFAULT_TOLERANCE) -> ExportReport:
    """Export a checkpoint to ONNX, write its metadata, and verify parity against torch."""
    import onnx

    model = load_checkpoint(checkpoint, device="cpu")
    frames = frames or model.cfg.eval_frames
    if frames < 1:
        raise ExportError("--frames must be >= 1")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    h, w = model.input_size
    example = torch.zeros(2, frames, 3, h, w)
    # The fused inference path of nn.TransformerEncoder (PRSD) has no ONNX symbolic; trace the
    # plain one. It computes the same function.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        torch.onnx.export(
            _Descriptor(model).eval(), (example,), str(tmp), input_names=["frames"],
            output_names=["descriptor"], dynamic_axes={"frames": {0: "batch"}, "descriptor": {0: "batch"}},
            opset_version=opset, dynamo=False,
        )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    proto = onnx.load(str(tmp))
    for key, value in onnx_metadata(model, frames).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(tmp))
    diff = check_parity(model, tmp, frames)
    if not diff <= tolerance:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"ONNX export parity check failed: max abs difference {diff:.3g} > tolerance {tolerance:g}")
    os.replace(tmp, out)
    return ExportReport(out, str(model.fingerprint), frames, model.descriptor_dim, diff, tolerance)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (config.json + model.safetensors)")
    parser.add_argument("--out", required=True, help="output .onnx file")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames per tracklet T baked into the graph (default: the model's eval_frames, 8)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"max abs descriptor difference vs torch (default {DEFAULT_TOLERANCE:g})")


def run(args: argparse.Namespace) -> int:
    import warnings

    from model.checkpoint import CheckpointError

    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    print(f"exporting {args.checkpoint} -> {args.out} (T={args.frames or 'eval_frames'}, opset {args.opset}) ...",
          flush=True)
    try:
        report = export_onnx(args.checkpoint, args.out, args.frames, args.opset, args.tolerance)
    except (CheckpointError, ExportError) as exc:
        print(f"error: {exc}")
        return 1
    print(f"wrote {report.path}  fingerprint {report.fingerprint}  T={report.frames}  D={report.descriptor_dim}")
    print(f"parity vs torch (batch 1 and 3): max abs difference {report.max_abs_diff:.3g} "
          f"(tolerance {report.tolerance:g})")
    return 0
