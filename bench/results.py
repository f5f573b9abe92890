"""Shared by the benchmark scripts: the machine description and section-wise updates of RESULTS.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
ROOT = RESULTS.parents[1]  # the repository


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


def finished_runs_parser(doc: str, runs_help: str) -> argparse.ArgumentParser:
    """The arguments of the scripts that evaluate finished training runs: ``--data``, ``--runs``,
    ``--results``, ``--json`` and ``--notes``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="dataset root (DetReIDX layout)")
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help=runs_help)
    parser.add_argument("--results", type=Path, default=RESULTS, help="markdown file whose section to replace")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    parser.add_argument("--notes", default="", help="free text appended to the section")
    return parser


def command_line(script: str, argv: list[str] | None) -> str:
    """``python bench/SCRIPT args...`` as run (``argv`` or the process's own arguments)."""
    return f"python bench/{script} " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))


def run_json_worker(script: str | Path, spec: dict[str, object]) -> dict:
    """``python SCRIPT --worker JSON(spec)`` in a fresh interpreter (so its peak memory is its
    own); returns the JSON object on its last line of output, or raises with its stderr."""
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cmd = [sys.executable, str(Path(script).resolve()), "--worker", json.dumps(spec)]
    print(f"  {spec} ...", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"    {result}", flush=True)
    return result


def module_at(rev: str, path: str) -> ModuleType:
    """The module at ``path`` (e.g. ``model/mamba.py``) as it was at git revision ``rev``,
    imported under another name, to measure an earlier implementation beside today's."""
    source = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
    module = ModuleType(f"{Path(path).stem}_at_{rev}")
    sys.modules[module.__name__] = module  # dataclasses look their module up there
    exec(compile(source, f"{rev}:{path}", "exec"), module.__dict__)
    return module
