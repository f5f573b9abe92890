"""Data layer: tracklet records, dataset loaders, torch datasets/samplers, SynthXFD.

Loaders (no torch needed) are re-exported here; the torch pieces live in
``model.data.video``, ``model.data.sampler`` and ``model.data.augment``.
"""

from model.data.detreidx import CASES, CaseSplit, DetReIDXDataset, load_detreidx, parse_frame_name
from model.data.errors import DatasetError
from model.data.manifest import ManifestRow, read_manifest, write_manifest
from model.data.mars import MarsDataset, load_mars
from model.data.plain import PlainDataset, load_plain
from model.data.tracklet import Tracklet, natural_key
from model.data.validation import ValidationReport, validate_tracklets

__all__ = [
    "CASES",
    "CaseSplit",
    "DatasetError",
    "DetReIDXDataset",
    "ManifestRow",
    "MarsDataset",
    "PlainDataset",
    "Tracklet",
    "ValidationReport",
    "load_detreidx",
    "load_mars",
    "load_plain",
    "natural_key",
    "parse_frame_name",
    "read_manifest",
    "validate_tracklets",
    "write_manifest",
]
