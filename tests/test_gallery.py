"""The README gallery: downscaled copies of the figures a run made; missing ones are skipped."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from saestab import gallery  # noqa: E402
from saestab.figures import README_WIDTH_PX  # noqa: E402


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


def test_readme_gallery_shows_each_figure_on_its_row_at_most_readme_wide(tmp_path: Path) -> None:
    figs = tmp_path / "figures"
    for rel, size in (("census/stability_cdf.png", (12, 4)), ("census/table1.png", (4, 3))):
        (figs / rel).parent.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=size)
        ax.plot([0, 1], [0, 1])
        fig.savefig(figs / rel, dpi=100)
        plt.close(fig)
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- gallery:begin -->\nold\n<!-- gallery:end -->\n\nrest\n")
    assert gallery.main([str(figs), str(tmp_path / "docs" / "gallery"), "--readme",
                         str(readme)]) == 0
    text = readme.read_text()
    assert "old" not in text and text.endswith("<!-- gallery:end -->\n\nrest\n")
    rows = [line for line in text.splitlines() if line.startswith("<p><img")]
    captions = dict(gallery.MAIN_FIGURES)
    # the wide figure is shown README_WIDTH_PX wide, the narrow one at its own 400 px
    assert rows == [
        f'<p><img src="docs/gallery/census-stability_cdf.png" width="{README_WIDTH_PX}" '
        f'alt="{captions["census/stability_cdf.png"]}"><br>'
        f'{captions["census/stability_cdf.png"]}</p>',
        f'<p><img src="docs/gallery/census-table1.png" width="400" '
        f'alt="{captions["census/table1.png"]}"><br>{captions["census/table1.png"]}</p>']


def test_readme_table_comes_from_the_summary(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- summary:begin -->\nold table\n<!-- summary:end -->\n\nrest\n")
    summary = {"rows": [
        {"id": "C1", "kind": "claim", "value": 3.14159, "ci_low": 2.0, "ci_high": 4.0,
         "floor": "ratio ≥ 2", "verdict": "inconclusive", "reason": "not converged: topk",
         "rule_verdict": "reproduced"},
        {"id": "C1 null: homogeneous p", "kind": "null", "value": 1.0, "ci_low": 0.9,
         "ci_high": 1.1, "floor": "ratio ≥ 2", "verdict": "not reproduced", "reason": None}]}
    gallery.update_readme(readme, gallery.readme_table(summary))
    text = readme.read_text()
    assert "old table" not in text and text.endswith("<!-- summary:end -->\n\nrest\n")
    assert ("| C1 | claim | 3.14 [2, 4] | ratio ≥ 2 | reproduced | inconclusive: not converged: "
            "topk |") in text
    assert "| C1 null: homogeneous p | null | 1 [0.9, 1.1] | ratio ≥ 2 | – | not reproduced |" \
        in text
    readme.write_text("a\n<!-- compute:begin -->\nold\n<!-- compute:end -->\nb\n")
    compute = {"total_seconds": 1234.5, "n_jobs": 3,
               "per_rule_seconds": {"train_saes": 1000.25, "masking": 234.25}}
    gallery.update_readme(readme, gallery.readme_compute({"compute": compute}),
                          gallery.COMPUTE_BEGIN, gallery.COMPUTE_END)
    text = readme.read_text()
    assert "old" not in text and "1,234 s of job time over 3 benchmarked jobs (train_saes " \
        "1,000 s, masking 234 s)" in text
    assert gallery.readme_compute({"rows": []}).startswith("No benchmark records")
    bare = tmp_path / "bare.md"
    bare.write_text("no markers")
    import pytest

    with pytest.raises(Exception, match="markers"):
        gallery.update_readme(bare, "t")
