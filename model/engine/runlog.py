"""``RUN_DIR/log.jsonl``: one JSON object per line, appended and flushed as it happens.

Every record has ``event`` (``start``, ``resume``, ``step``, ``epoch``, ``checkpoint``, ``eval``,
``end``) and ``time`` (UTC ISO 8601). Non-finite floats are written as strings (``"nan"``) so
every line stays strict JSON.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

LOG_NAME = "log.jsonl"  # inside a training run folder


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


class RunLog:
    """Appends records to a JSONL file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **fields: Any) -> dict[str, Any]:
        record = {"event": event, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **fields}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(_clean(record), allow_nan=False) + "\n")
        return record


def read_log(path: Path) -> list[dict[str, Any]]:
    """All records of a log file, in order."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
