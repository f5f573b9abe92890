"""Import-time compatibility for CPU-only torch.

Every torchvision wheel on PyPI is a CUDA build; on a CPU-only torch its native extension fails to
load, and ``import torchvision`` then dies in ``_meta_registrations`` with
``operator torchvision::nms does not exist``. open_clip only needs torchvision's pure-Python
transforms, so when (and only when) the native ops are missing we declare the two operator
schemas that torchvision registers fake kernels for. Nothing changes where torchvision's own
extension loads (a real CUDA install): the schemas are then already defined and we return early.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch

# Held at module level: a torch.library.Library drops its definitions when garbage-collected.
_FALLBACK_LIB: torch.library.Library | None = None


def _torchvision_ops_available() -> bool:
    try:
        return hasattr(torch.ops.torchvision, "nms")
    except (AttributeError, RuntimeError):
        return False


def ensure_torchvision_importable() -> None:
    """Make ``import torchvision`` (and so ``import open_clip``) work on a CPU-only torch."""
    global _FALLBACK_LIB
    if "torchvision" in sys.modules or _FALLBACK_LIB is not None:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return  # not installed: open_clip's own import error will say so
    if _torchvision_ops_available():
        return
    ext = os.path.join(os.path.dirname(spec.origin), "_C.so")
    if os.path.exists(ext):
        try:
            torch.ops.load_library(ext)
        except (OSError, RuntimeError):
            pass  # CUDA build against CPU torch: fall through to the schema-only definitions
    if _torchvision_ops_available():
        return
    lib = torch.library.Library("torchvision", "FRAGMENT")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _FALLBACK_LIB = lib
