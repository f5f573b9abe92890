"""Shared by the benchmark scripts: the machine description and section-wise updates of RESULTS.md."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from types import ModuleType

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine_line(*libraries: ModuleType) -> str:
    """One line naming the machine: cores, CPU model, memory, load, Python, OS and the versions of
    ``libraries`` (modules with ``__version__``, e.g. ``torch``)."""
    mem = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        kb = int(meminfo.read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    versions = "".join(f", {lib.__name__} {lib.__version__}" for lib in libraries)
    return (f"Machine: {os.cpu_count()} cores, {cpu_model()}{mem}, load average {load} at write time, "
            f"Python {platform.python_version()}{versions}, {platform.system()} {platform.release()}.")


def write_section(title: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the ``## title`` section of RESULTS.md, leaving other sections untouched."""
    header = f"## {title}"
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    lines = old.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == header), None)
    text = f"{header}\n\n{body.rstrip()}\n"
    if start is None:
        path.write_text(old.rstrip("\n") + "\n\n" + text)
        return
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = "".join(lines[end:])
    path.write_text("".join(lines[:start]) + text + ("\n" + tail if tail else ""))
