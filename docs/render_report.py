"""Render an omop-behrt report.html to a PNG with headless Chromium: the screenshot the README shows.

    omop-behrt demo --out /tmp/demo
    python docs/render_report.py /tmp/demo/report/report.html docs/report.png

The page is rendered at 1280 px wide (the width a reader's laptop shows), the blank bottom cropped, then
scaled down and reduced to 256 colours until the file is under ``--max-kb`` (1 MB by default), so the
repository keeps one small image.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from PIL import Image

from omop_behrt.evaluation.report import screenshot


def render(page: Path, png: Path, *, width: int = 1280, max_kb: int = 1000) -> tuple[int, int, int]:
    """Screenshot ``page`` into ``png`` under ``max_kb``; returns (width, height, bytes) of what was written."""
    with tempfile.TemporaryDirectory() as tmp:
        full = Image.open(screenshot(page, Path(tmp) / "full.png", width=width, height=16000)).convert("RGB")
    png.parent.mkdir(parents=True, exist_ok=True)
    scale = 1.0
    while True:
        size = (round(full.width * scale), round(full.height * scale))
        img = full.resize(size, Image.LANCZOS) if scale < 1 else full
        img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(png, optimize=True)
        if png.stat().st_size <= max_kb * 1000 or scale < 0.3:
            return size[0], size[1], png.stat().st_size
        scale *= 0.85


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("html", type=Path, help="the report.html to render")
    ap.add_argument("png", type=Path, nargs="?", default=Path(__file__).parent / "report.png",
                    help="where to write the PNG (default: docs/report.png)")
    ap.add_argument("--width", type=int, default=1280, help="browser window width in pixels (default: 1280)")
    ap.add_argument("--max-kb", type=int, default=1000, help="largest file size in kB (default: 1000)")
    args = ap.parse_args()
    w, h, n = render(args.html, args.png, width=args.width, max_kb=args.max_kb)
    print(f"{args.png}: {w} x {h} px, {n / 1000:.0f} kB")


if __name__ == "__main__":
    main()
