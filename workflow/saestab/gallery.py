"""The README's figure gallery: small copies of a run's main figures, kept in the repository so
that a reader sees the result before running anything.

``python -m saestab.gallery [results/figures] [docs/gallery]`` (or ``make gallery``) rewrites the
gallery from the figures of the last run; figures that the run did not make are skipped and named.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from . import io

# (figure under results/figures, caption) in the order the README shows them
MAIN_FIGURES: tuple[tuple[str, str], ...] = (
    ("census/stability_cdf.png", "C1, control: CDF of feature stability p̂"),
    ("census/table1.png", "C2: stable / unstable share vs explained variance"),
    ("census/training_length.png", "stability vs training length (the small-scale confound)"),
    ("function/masking_ev.png", "C3: ΔEV when masking stable vs mass-matched unstable sets"),
    ("function/masking_ce.png", "C3: ΔCE with the masked reconstruction spliced in"),
    ("function/surface_form.png", "C4: surface form within frequency bins"),
    ("geometry/transfer.png", "C5: cross-seed subspace transfer vs baselines"),
    ("synthetic/stability_vs_recovery.png",
     "C6: synthetic model, latent stability vs subspace recovery"),
    ("pool/pool_stability.png", "C7: feature pools vs standard SAEs"),
)


def build(figures: Path, out: Path, max_width: int = 900) -> list[Path]:
    """Write downscaled PNG copies of :data:`MAIN_FIGURES` found under ``figures`` into ``out``
    (flattened names, e.g. ``census-stability_cdf.png``); returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for rel, _ in MAIN_FIGURES:
        src = figures / rel
        if not src.is_file():
            print(f"gallery: {src} not found (stage not run?), skipped", file=sys.stderr)
            continue
        dst = out / rel.replace("/", "-")
        with Image.open(src) as im:
            im = im.convert("RGB")
            if im.width > max_width:
                im = im.resize((max_width, round(im.height * max_width / im.width)),
                               Image.LANCZOS)
            with io.atomic_path(dst, suffix=".png") as tmp:
                im.save(tmp, format="PNG", optimize=True)
        written.append(dst)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("figures", nargs="?", default="results/figures", type=Path)
    ap.add_argument("out", nargs="?", default="docs/gallery", type=Path)
    ap.add_argument("--max-width", type=int, default=900)
    args = ap.parse_args(argv)
    files = build(args.figures, args.out, args.max_width)
    print(f"gallery: {len(files)} figures in {args.out}")
    return 0 if files else 1


if __name__ == "__main__":
    raise SystemExit(main())
