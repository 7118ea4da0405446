"""Figures of the workflow, one module per stage; each function reads a stage's outputs and
writes one file. ``base`` holds the shared style and the trained/random panel layout."""

import matplotlib

matplotlib.use("Agg")  # figures are written to files; never open a window

from .census import FIGURES, table1, table1_figure, table1_markdown  # noqa: E402

__all__ = ["FIGURES", "table1", "table1_figure", "table1_markdown"]
