"""Names a client gives for files on the server (import sources, models), kept inside their directory."""

from __future__ import annotations

from pathlib import Path


def inside(root: Path, name: str) -> Path | None:
    """``root / name`` resolved (symlinks followed), or None when ``name`` is absolute or the path
    leaves ``root`` (``..``, a link pointing out): a client's name can never reach other files."""
    base = root.resolve()
    path = (base / name).resolve()
    if Path(name).is_absolute() or not path.is_relative_to(base):
        return None
    return path
