"""The figures of each stage and the stage files they read, declared once for the workflow.

The rules take figure names and input files from here, so that every file a figure reads is an
``input:`` of its rule (deleting one makes Snakemake rebuild it, and a changed one redraws the
figure). The drawing functions live in :mod:`saestab.plotting`, keyed by the same names; this
module imports nothing heavy because the Snakefile imports it on every parse (each cluster job
parses it again).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

README_WIDTH_PX = 800
"""The widest a figure is shown in the README gallery; figures are drawn to be readable there."""

VECTOR_FORMAT = "pdf"
"""Every figure is also written in this vector format, beside its PNG (for papers)."""


def vector(png: str | PurePath) -> str:
    """The vector copy of a figure: its PNG path with the :data:`VECTOR_FORMAT` suffix (the
    figure rules declare it as an output, and the plotting code writes it)."""
    return str(PurePath(png).with_suffix(f".{VECTOR_FORMAT}"))


@dataclass(frozen=True)
class FigureFamily:
    """Figures drawn across the configurations of one stage.

    ``reads`` are the files each figure reads from every configuration's stage directory.
    """

    names: tuple[str, ...]
    reads: tuple[str, ...]

    def inputs(self, dirs: list[str]) -> list[str]:
        """Every file the family's figures read, for the given stage directories."""
        return [f"{d}/{name}" for d in dirs for name in self.reads]


CENSUS = FigureFamily(
    names=("stability_cdf", "p_hat_hist", "stability_vs_frequency", "theta_sweep",
           "labels_vs_n", "training_length"),
    reads=("summary.json", "features.parquet", "sweeps.parquet", "n_subsample.parquet",
           "training_length.csv"),
)
FUNCTION = FigureFamily(
    names=("masking_ev", "masking_ce", "frequency", "surface_form"),
    reads=("masking_summary.json", "surface_summary.json", "features.parquet"),
)
GEOMETRY = FigureFamily(
    names=("spectra", "rank_vs_count", "transfer", "angles"),
    reads=("summary.json", "spectra.parquet", "ranks.parquet", "angles.parquet"),
)
SYNTHETIC = FigureFamily(
    names=("recovery_by_rank", "stability_vs_recovery"),
    reads=("by_rank.parquet", "latents.parquet", "components.parquet"),
)
