"""On-disk descriptor cache, so re-ranking and reporting variants never re-embed a tracklet.

One ``.npz`` file per (checkpoint fingerprint, data root, sampling settings) under the cache
folder, which is never inside the dataset (data is often read-only or shared): ``sasreid evaluate``
uses ``user_cache_dir()``, a training run's final evaluation ``RUN_DIR/descriptor-cache``::

    <fingerprint>-<sha256(root, settings)[:12]>.npz   keys [N] str, descriptors [N, D] float32

A key names a tracklet record and its frames (``split/pid/tracklet|frame count|first|last``),
so a tracklet whose frames changed on disk is a miss. Writes are atomic (temp file + rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from model.data import Tracklet
from model.engine.datasets import tracklet_key

CACHE_ENV = "SASREID_CACHE_DIR"
RUN_CACHE_DIRNAME = "descriptor-cache"  # inside a training run folder
_USER_SUBDIR = ("sasreid", "descriptors")


def user_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The descriptor cache folder of ``sasreid evaluate``, first that applies:

    ``$SASREID_CACHE_DIR``; ``$XDG_CACHE_HOME/sasreid/descriptors`` (only an absolute path, as the
    XDG base-directory spec says); ``$HOME/.cache/sasreid/descriptors``. ``environ`` defaults to
    ``os.environ``; empty values count as unset.
    """
    env = os.environ if environ is None else environ
    explicit = env.get(CACHE_ENV, "")
    if explicit:
        return Path(explicit).expanduser()
    xdg = env.get("XDG_CACHE_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg).joinpath(*_USER_SUBDIR)
    home = env.get("HOME", "")
    return (Path(home) if home else Path.home()).joinpath(".cache", *_USER_SUBDIR)


def record_key(t: Tracklet) -> str:
    """Cache key of a tracklet: its record key plus what identifies its frames on disk."""
    return f"{tracklet_key(t)}|{t.num_frames}|{t.paths[0].name}|{t.paths[-1].name}"


class DescriptorCache:
    """Descriptors of one checkpoint under one set of embedding settings."""

    def __init__(self, directory: str | Path, fingerprint: str, root: str | Path, settings: dict[str, Any]) -> None:
        if not fingerprint:
            raise ValueError("a descriptor cache needs the checkpoint fingerprint")
        self.directory = Path(directory)
        ident = json.dumps({"root": str(Path(root).resolve()), **settings}, sort_keys=True)
        self.path = self.directory / f"{fingerprint}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}.npz"
        self._entries: dict[str, np.ndarray] | None = None

    def _load(self) -> dict[str, np.ndarray]:
        if self._entries is None:
            self._entries = {}
            if self.path.is_file():
                try:
                    with np.load(self.path, allow_pickle=False) as data:
                        keys, desc = data["keys"], data["descriptors"]
                    self._entries = {str(k): desc[i] for i, k in enumerate(keys)}
                except (OSError, KeyError, ValueError) as exc:
                    # A damaged cache is only a lost speed-up: start over and overwrite it.
                    warnings.warn(f"ignoring unreadable descriptor cache {self.path} ({exc})", RuntimeWarning,
                                  stacklevel=2)
        return self._entries

    def get(self, keys: list[str]) -> dict[str, np.ndarray]:
        """The cached descriptors among ``keys``."""
        entries = self._load()
        return {k: entries[k] for k in keys if k in entries}

    def put(self, new: dict[str, np.ndarray]) -> None:
        """Add descriptors and rewrite the cache file atomically."""
        entries = self._load()
        entries.update(new)
        self.directory.mkdir(parents=True, exist_ok=True)
        keys = sorted(entries)
        desc = np.stack([entries[k] for k in keys]).astype(np.float32)
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".npz.tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, keys=np.array(keys), descriptors=desc)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
