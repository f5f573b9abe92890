"""Contact sheet of SynthXFD: rows = identity x session, columns = camera views.

Each cell is a real rendered frame, enlarged with nearest-neighbour so far views stay visibly
tiny and blocky; the label under it gives the native crop size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from model.data.synth.plan import SynthConfig, make_plan
from model.data.synth.render import render_frame
from model.data.synth.scene import sample_capture, scene_env
from model.data.synth.views import View, view_by_name

PREVIEW_VIEWS: tuple[str, ...] = (
    "ground-near", "ground-side", "ground-oblique",
    "aerial-P01", "aerial-P03", "aerial-P06",
    "aerial-P07", "aerial-P09", "aerial-P12",
    "aerial-P13", "aerial-P15", "aerial-P18",
)  # fmt: skip

_CELL_W, _CELL_H, _LABEL_W, _HEADER_H, _FOOT_H = 84, 128, 92, 30, 12


def _column_title(view: View) -> str:
    if view.platform == "ground":
        return view.name.replace("ground-", "G ")
    return f"{view.pitch_deg:.0f}d {view.range_m:.0f}m"


def _cell(img: Image.Image) -> Image.Image:
    scale = min(_CELL_W / img.width, _CELL_H / img.height)
    size = (max(1, int(img.width * scale)), max(1, int(img.height * scale)))
    return img.resize(size, Image.Resampling.NEAREST)


def render_preview(config: SynthConfig, path: str | Path, num_identities: int = 4) -> Path:
    """Write the contact sheet PNG for the first ``num_identities`` test identities of ``config``."""
    plan = make_plan(config)
    pids = plan.test_pids[:num_identities]
    views = [view_by_name(n) for n in PREVIEW_VIEWS]
    rows = [(pid, s) for pid in pids for s in (1, 2)]
    width = _LABEL_W + len(views) * _CELL_W
    height = _HEADER_H + len(rows) * (_CELL_H + _FOOT_H)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for c, view in enumerate(views):
        x = _LABEL_W + c * _CELL_W
        draw.text((x + 2, 2), _column_title(view), fill=(0, 0, 0), font=font)
        draw.text((x + 2, 15), view.platform, fill=(90, 90, 90), font=font)
    for r, (pid, session) in enumerate(rows):
        y = _HEADER_H + r * (_CELL_H + _FOOT_H)
        ident = plan.identities[pid]
        draw.text((4, y + 4), f"id {pid:04d}", fill=(0, 0, 0), font=font)
        draw.text((4, y + 18), f"session {session}", fill=(0, 0, 0), font=font)
        draw.text((4, y + 32), f"{ident.height:.2f} m", fill=(90, 90, 90), font=font)
        draw.text((4, y + 46), f"hair {ident.hair_style}", fill=(90, 90, 90), font=font)
        for c, view in enumerate(views):
            env = scene_env(view, np.random.default_rng([config.seed, 3, session, view.camera]))
            rng = np.random.default_rng([config.seed, 9, pid, session, view.camera])
            frame = render_frame(ident, plan.outfits[(pid, session)], 1.0, sample_capture(view, env, rng), 0, rng)
            cell = _cell(frame)
            x = _LABEL_W + c * _CELL_W
            sheet.paste(cell, (x + (_CELL_W - cell.width) // 2, y + _CELL_H - cell.height))
            draw.text((x + 2, y + _CELL_H), f"{frame.width}x{frame.height}", fill=(90, 90, 90), font=font)
        draw.line((0, y - 1, width, y - 1), fill=(200, 200, 200))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
