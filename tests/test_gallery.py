"""The README gallery: downscaled copies of the figures a run made; missing ones are skipped."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from saestab import gallery  # noqa: E402


def test_gallery_downscales_and_skips_missing(tmp_path: Path) -> None:
    figs = tmp_path / "figures"
    (figs / "census").mkdir(parents=True)
    fig, ax = plt.subplots(figsize=(12, 4))
    ax.plot([0, 1], [0, 1])
    fig.savefig(figs / "census" / "stability_cdf.png", dpi=150)
    plt.close(fig)
    out = gallery.build(figs, tmp_path / "gallery", max_width=600)
    assert [p.name for p in out] == ["census-stability_cdf.png"]
    with Image.open(out[0]) as im:
        assert im.width == 600 and abs(im.height - 200) <= 1
    assert gallery.main([str(tmp_path / "nothing"), str(tmp_path / "g2")]) == 1
