"""The README's figure gallery: small copies of a run's main figures, kept in the repository so
that a reader sees the result before running anything.

``python -m saestab.gallery [results/figures] [docs/gallery]`` (or ``make gallery``) rewrites the
gallery from the figures of the last run; figures that the run did not make are skipped and named.
With ``--readme README.md`` it also rewrites the README's gallery (between the
``<!-- gallery:begin -->`` and ``<!-- gallery:end -->`` markers: one figure per row, at most
:data:`saestab.figures.README_WIDTH_PX` wide, the width the figures are drawn to be read at), and
with ``--summary results/summary.json`` its results table (between ``<!-- summary:begin -->`` and
``<!-- summary:end -->``) from the run's summary, so that no number in the README is typed by
hand.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from . import io
from .figures import README_WIDTH_PX
from .summary import compute_line

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


BEGIN, END = "<!-- summary:begin -->", "<!-- summary:end -->"
GALLERY_BEGIN, GALLERY_END = "<!-- gallery:begin -->", "<!-- gallery:end -->"
COMPUTE_BEGIN, COMPUTE_END = "<!-- compute:begin -->", "<!-- compute:end -->"


def readme_gallery(files: Sequence[Path], relative_to: Path) -> str:
    """The README's gallery: each written figure (:func:`build`) on its own row, shown at its
    width up to :data:`README_WIDTH_PX`, with its caption from :data:`MAIN_FIGURES`."""
    captions = {rel.replace("/", "-"): cap for rel, cap in MAIN_FIGURES}
    rows = []
    for f in files:
        with Image.open(f) as im:
            width = min(im.width, README_WIDTH_PX)
        src = Path(os.path.relpath(f, relative_to)).as_posix()
        cap = html.escape(captions[f.name])
        rows.append(f'<p><img src="{src}" width="{width}" alt="{cap}"><br>{cap}</p>')
    return "\n".join(rows)


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.3g}"


def readme_table(summary: dict) -> str:
    """The README's results table from a ``summary.json``: one line per row of the summary."""
    lines = ["| row | kind | statistic [95% CI] | floor | rule alone | verdict |",
             "|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        value = "–" if r["value"] is None else \
            f"{_num(r['value'])} [{_num(r['ci_low'])}, {_num(r['ci_high'])}]"
        verdict = r["verdict"] if not r.get("reason") else f"{r['verdict']}: {r['reason']}"
        lines.append(f"| {r['id']} | {r['kind']} | {value} | {r.get('floor') or '–'} | "
                     f"{r.get('rule_verdict') or '–'} | {verdict} |")
    return "\n".join(lines)


def readme_compute(summary: dict) -> str:
    """The README's line on what the run cost: job time per rule, from a ``summary.json``."""
    c = summary.get("compute") or {}
    if not c.get("per_rule_seconds"):
        return "No benchmark records in this run's summary."
    return (f"The run the results above come from took {compute_line(c)}, summed from its "
            "`benchmarks/` records; jobs that run side by side (`parallel_jobs`) make the wall "
            "time shorter than the sum.")


def update_readme(readme: Path, table: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace what lies between the ``begin`` and ``end`` markers of ``readme`` (by default
    the results table's) with ``table``."""
    text = readme.read_text(encoding="utf-8")
    if begin not in text or end not in text or text.index(begin) > text.index(end):
        raise io.InputError(f"{readme}: no '{begin}' ... '{end}' block to write into; add the "
                            "two markers where it belongs")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    with io.atomic_path(readme) as tmp:
        tmp.write_text(f"{head}{begin}\n{table}\n{end}{tail}", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("figures", nargs="?", default="results/figures", type=Path)
    ap.add_argument("out", nargs="?", default="docs/gallery", type=Path)
    ap.add_argument("--max-width", type=int, default=900)
    ap.add_argument("--summary", type=Path, help="a run's summary.json (writes the README table)")
    ap.add_argument("--readme", type=Path, help="the README whose gallery (and, with "
                    "--summary, results table) to rewrite")
    args = ap.parse_args(argv)
    files = build(args.figures, args.out, args.max_width)
    print(f"gallery: {len(files)} figures in {args.out}")
    if args.readme is not None and files:
        update_readme(args.readme, readme_gallery(files, args.readme.parent), GALLERY_BEGIN,
                      GALLERY_END)
        print(f"gallery: figures in {args.readme} rewritten")
    if args.summary is not None:
        if args.readme is None:
            ap.error("--summary needs --readme")
        if not args.summary.is_file():
            raise io.InputError(f"{args.summary}: no summary; run the workflow first (make run)")
        summary = json.loads(args.summary.read_text())
        update_readme(args.readme, readme_table(summary))
        update_readme(args.readme, readme_compute(summary), COMPUTE_BEGIN, COMPUTE_END)
        print(f"gallery: results table in {args.readme} rewritten from {args.summary}")
    return 0 if files else 1


if __name__ == "__main__":
    raise SystemExit(main())
