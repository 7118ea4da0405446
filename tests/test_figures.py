"""Every figure, drawn from planted stage outputs, is one a referee accepts: it draws the
intervals its input carries (where the input puts them), its legends cover no axes, its text is
readable at the README's width, and it is written as a PNG and a vector file that its rule
declares. The checks are themselves shown failing on figures that break them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.container import ErrorbarContainer  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402
from PIL import Image  # noqa: E402

from saestab import (  # noqa: E402
    autointerp,
    census,
    figures,
    io,
    masking,
    plotting,
    subspaces,
    synthetic,
)
from saestab.evaluation import write_evaluation  # noqa: E402
from saestab.plotting import autointerp as autointerp_plots  # noqa: E402
from saestab.plotting import base, function, geometry, pool  # noqa: E402
from saestab.sae import SAE, SAEConfig, save_sae  # noqa: E402
from saestab.stability import mean_interval  # noqa: E402
from saestab.surface import binned_profile  # noqa: E402

from .conftest import REPO  # noqa: E402
from .test_subspaces import planted  # noqa: E402,F401  (the planted geometry fixture)
from .test_synthetic import SPEC, _features  # noqa: E402

# ---------------------------------------------------------------------------------------------
# the checks


@pytest.fixture()
def drawn(monkeypatch):
    """The figures the plotting code saves, kept open (``plt.close`` deferred to teardown)."""
    figs: list[plt.Figure] = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))
    yield figs
    for f in figs:
        close(f)


def legend_overlaps(fig: plt.Figure) -> list[str]:
    """Each legend's bounding box against every axes (its data area, ticks and labels) and
    against the drawn extent of each data artist in it: what overlaps, named."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    found = []
    for leg in legends:
        box = leg.get_window_extent(r)
        for ax in fig.axes:
            if not ax.get_visible():
                continue
            if box.overlaps(ax.get_tightbbox(r)):
                found.append(f"legend over the axes '{ax.get_title()}'")
            for art in [*ax.lines, *ax.collections, *ax.patches]:
                ext = art.get_window_extent(r)
                if art.get_clip_on():
                    ext = Bbox.intersection(ext, ax.bbox)
                if ext is not None and ext.width * ext.height > 0 and box.overlaps(ext):
                    found.append(f"legend over {type(art).__name__} in '{ax.get_title()}'")
    return found


def small_text(fig: plt.Figure, png: Path) -> list[tuple[str, float]]:
    """Visible text smaller than base.MIN_TEXT_PX once the PNG is shown at most
    figures.README_WIDTH_PX wide: (text, its height in pixels there)."""
    with Image.open(png) as im:
        scale = min(1.0, figures.README_WIDTH_PX / im.width)
    out = []
    for t in fig.findobj(Text):
        if t.get_visible() and t.get_text().strip() and t.figure is not None:
            px = t.get_fontsize() / 72 * base.DPI * scale
            if px < base.MIN_TEXT_PX:
                out.append((t.get_text(), px))
    return out


def data_axes(fig: plt.Figure) -> list[plt.Axes]:
    return [ax for ax in fig.axes if ax.get_visible() and (ax.lines or ax.collections
                                                           or ax.patches)]


def interval_artists(ax: plt.Axes) -> list:
    """Whiskers (errorbar containers, bars' included) and shaded bands (PolyCollections)."""
    return [c for c in ax.containers if isinstance(c, ErrorbarContainer)] + \
        [c for c in ax.collections if isinstance(c, PolyCollection)]


def whiskers(fig: plt.Figure) -> set[tuple[float, float]]:
    """Every whisker of every axes as (low, high) along its direction, rounded."""
    spans = set()
    for ax in fig.axes:
        for c in ax.containers:
            if not isinstance(c, ErrorbarContainer):
                continue
            for lc in c.lines[2]:
                for seg in lc.get_segments():
                    if len(seg) and np.all(np.isfinite(seg)):
                        axis = 0 if seg[0][1] == seg[1][1] else 1  # horizontal or vertical
                        lo, hi = sorted((seg[0][axis], seg[1][axis]))
                        spans.add((round(float(lo), 6), round(float(hi), 6)))
    return spans


def bands(fig: plt.Figure) -> list[tuple[float, float]]:
    """The vertical range of every shaded band."""
    out = []
    for ax in fig.axes:
        for c in ax.collections:
            if isinstance(c, PolyCollection):
                for p in c.get_paths():
                    v = p.vertices[np.isfinite(p.vertices).all(axis=1)]
                    if len(v):
                        out.append((float(v[:, 1].min()), float(v[:, 1].max())))
    return out


def span(iv: dict) -> tuple[float, float]:
    return round(float(iv["ci_low"]), 6), round(float(iv["ci_high"]), 6)


def check_figure(fig: plt.Figure, png: Path, *, per_seed: int = 0) -> None:
    """What every figure must satisfy; ``per_seed``: the figure shows one line or point per
    seed (at least that many) in place of interval artists."""
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Path(figures.vector(png)).read_bytes()[:5] == b"%PDF-", "no vector copy"
    assert legend_overlaps(fig) == []
    assert small_text(fig, png) == []
    axes = data_axes(fig)
    assert axes, "nothing drawn"
    for ax in axes:
        if per_seed:
            assert len(ax.lines) + sum(len(c.get_offsets()) for c in ax.collections) \
                >= per_seed, ax.get_title()
        else:
            assert interval_artists(ax), f"no interval drawn in '{ax.get_title()}'"


# ---------------------------------------------------------------------------------------------
# the checks fail where they should


def test_checks_catch_a_legend_over_data_small_text_and_missing_intervals(tmp_path, drawn):
    fig, ax = base.panels(1, 1, 3.0)
    ax = ax[0, 0]
    ax.plot(np.linspace(0, 1, 50), np.linspace(0, 1, 50), label="a line")
    ax.legend(loc="center")  # right over the line
    base.save(fig, tmp_path / "bad.png")
    assert legend_overlaps(drawn[-1])
    assert not interval_artists(ax)
    fig, ax = base.panels(1, 1, 3.0, width=16.0)  # twice the width: text shrinks by half
    ax[0, 0].plot([0, 1], [0, 1], label="a line")
    base.legend_below(fig)
    base.save(fig, tmp_path / "wide.png")
    assert small_text(drawn[-1], tmp_path / "wide.png")
    assert legend_overlaps(drawn[-1]) == []  # below the axes: clear of them


# ---------------------------------------------------------------------------------------------
# planted stage outputs

D, M, SEEDS = 32, 24, 5


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _save(path: Path, dirs: np.ndarray, ev: float) -> None:
    sae = SAE(SAEConfig(architecture="topk", d_in=D, d_sae=M, k=4))
    with torch.no_grad():
        sae.W_dec.copy_(torch.from_numpy(dirs.astype(np.float32)))
        sae.W_enc.copy_(sae.W_dec.T)
    save_sae(sae, path)
    freq = np.logspace(-4, -1, M)
    write_evaluation({"ev": ev, "mse": 0.1, "l0": 4.0, "dead_fraction": 0.0,
                      "dense_fraction": 0.0, "n_tokens": 100, "frequency": freq,
                      "mass": freq * 10}, path)


def _seed_groups(root: Path, shared: int, rng: np.random.Generator) -> list[Path]:
    """SAEs of SEEDS seeds (two groups) and epoch-1 and -2 snapshots: ``shared`` directions
    common to every seed with a per-direction noise level from small to large (so that some
    reappear in only some seeds), the rest private."""
    common = _unit(rng.standard_normal((shared, D)))
    noise = np.linspace(0.02, 0.5, shared)[:, None]
    groups = [root / "group0", root / "group1"]
    for s in range(SEEDS):
        g = groups[s % 2]
        for where, scale in ((g / f"seed{s}", 1.0), (g / "snapshots/epoch1" / f"seed{s}", 3.0),
                             (g / "snapshots/epoch2" / f"seed{s}", 1.5)):
            own = common + scale * noise * rng.standard_normal((shared, D))
            dirs = _unit(np.concatenate([own, rng.standard_normal((M - shared, D))]))
            _save(where, dirs, ev=0.7 + 0.01 * s + 0.02 * rng.standard_normal())
    return groups


def _config(root: Path, weights: str, variant: str, stage: str) -> dict:
    return {"model": "m", "weights": weights, "hook": "h", "variant": variant,
            "dir": str(root / weights / stage / variant), "single_model": True}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Stage outputs of three configurations (trained topk and relu, random topk), written by
    the library where it is cheap (census, masking summary) and planted otherwise."""
    root = tmp_path_factory.mktemp("study")
    rng = np.random.default_rng(0)
    configs = [("trained", "topk", 16), ("trained", "relu", 12), ("random", "topk", 0)]
    for weights, variant, shared in configs:
        groups = _seed_groups(root / "saes" / weights / variant, shared, rng)
        c = census.run_census(groups, theta=0.7, eps=0.05, n_draws=3, hungarian_pairs=2,
                              seed=1)
        census.write_census(c, root / weights / "stability" / variant)
        _function_outputs(root / weights / "function" / variant, c.table, rng)
        _pool_outputs(root / weights / "pool" / variant, rng)
    return root, [(w, v) for w, v, _ in configs]


def _function_outputs(out: Path, table: pd.DataFrame, rng: np.random.Generator) -> None:
    """masking_summary.json from planted per-anchor effects (through masking.summarize), a
    surface features table and the surface summary's median frequencies."""
    rows, infos, feats = [], [], []
    effect = {"stable": 0.3, "stable_matched": 0.15, "stable_energy_matched": 0.1}
    for s, t in table.groupby("seed"):
        labels = t["label"].astype(str).to_numpy()
        mass = rng.uniform(1, 2, len(t))
        fs = masking.masking_sets(labels, mass, mass ** 2, rng)
        infos.append({"seed": s, **fs.info})
        for name in ("none", *fs.sets, "all"):
            d = 0.0 if name == "none" else effect.get(name, 0.1) + 0.02 * rng.standard_normal()
            row = {"seed": s, "set": name, "n_features": 0 if name == "none" else
                   (M if name == "all" else int(fs.sets[name].size)), "mass": 1.0,
                   "energy": 1.0, "ev": 0.8 - d, "delta_ev": d}
            if name != "all":
                row.update(delta_ce_err=3 * d, kl_err=3 * d, ce_clean=3.0,
                           delta_ce_noerr=4 * d if name in ("none", "stable", "unstable")
                           else np.nan, kl_noerr=np.nan)
            rows.append(row)
        feats.append(pd.DataFrame({
            "seed": s, "feature": t["feature"].to_numpy(), "label": labels, "live": True,
            "frequency": t["firing_frequency"].to_numpy(),
            "top_token_share": np.where(labels == "unstable", 0.6, 0.3)
            + 0.05 * rng.standard_normal(len(t)),
            "punct_share": rng.uniform(0, 0.2, len(t))}))
    io.write_json(out / "masking_summary.json",
                  masking.summarize(pd.DataFrame(rows), pd.DataFrame(infos)))
    f = pd.concat(feats, ignore_index=True)
    f.to_parquet(out / "features.parquet")
    medians = {lab: [g.loc[g["label"] == lab, "frequency"].median() for _, g in f.groupby("seed")]
               for lab in ("stable", "unstable")}
    io.write_json(out / "surface_summary.json",
                  {f"median_frequency_{lab}": mean_interval(v) for lab, v in medians.items()})


def _pool_outputs(out: Path, rng: np.random.Generator) -> None:
    kinds = ("standard", "standard_continued", "pool_before", "pool_after")
    splits = [{**{f"mutual_stability_{k}": 0.4 + 0.1 * j + 0.02 * rng.standard_normal()
                  for j, k in enumerate(kinds)},
               **{f"ev_{k}": 0.7 - 0.05 * j + 0.01 * rng.standard_normal()
                  for j, k in enumerate(kinds)}} for _ in range(4)]
    io.write_json(out / "summary.json", {
        "theta": 0.7, "splits": splits,
        "ev": {k: mean_interval(0.7 - 0.05 * j + 0.01 * rng.standard_normal(3))
               for j, k in enumerate(kinds)}})
    pd.DataFrame({"kind": np.repeat(kinds, 50), "max_cos": rng.uniform(0, 1, 200)}).to_parquet(
        out / "cross_maxcos.parquet")


def _configs(study, stage: str) -> list[dict]:
    root, configs = study
    return [_config(root, w, v, stage) for w, v in configs]


# ---------------------------------------------------------------------------------------------
# every figure


def _census_expected(name: str, configs: list[dict]) -> Callable[[plt.Figure], None]:
    """Where a census figure must put which interval of its input."""
    s = json.loads((Path(configs[0]["dir"]) / "summary.json").read_text())
    tl = pd.read_csv(Path(configs[0]["dir"]) / "training_length.csv")

    def cdf(fig):
        assert span(s["unstable"]) in whiskers(fig)
        st = s["stable"]
        assert (round(1 - st["ci_high"], 6), round(1 - st["ci_low"], 6)) in whiskers(fig)

    def sweep(fig):
        row = next(r for r in s["sweeps"] if r["sweep"] == "theta")
        ivs = [r["stable"] for r in s["sweeps"] if r["sweep"] == "theta"]
        lo = min(v["ci_low"] for v in ivs)
        assert any(b[0] == pytest.approx(lo) for b in bands(fig)), row

    def frequency(fig):
        ivs = [r["p_hat"] for r in s["p_hat_by_frequency"] if np.isfinite(r["p_hat"]["ci_low"])]
        assert any(b == (pytest.approx(min(v["ci_low"] for v in ivs)),
                         pytest.approx(max(v["ci_high"] for v in ivs))) for b in bands(fig))

    def length(fig):
        assert any(b == (pytest.approx(tl["stable_ci_low"].min()),
                         pytest.approx(tl["stable_ci_high"].max())) for b in bands(fig))

    return {"stability_cdf": cdf, "theta_sweep": sweep, "stability_vs_frequency": frequency,
            "training_length": length}.get(name, lambda fig: None)


@pytest.mark.parametrize("name", list(plotting.FIGURES))
def test_census_figures(study, tmp_path, drawn, name):
    configs = _configs(study, "stability")
    out = tmp_path / f"{name}.png"
    plotting.FIGURES[name](configs, out)
    check_figure(drawn[-1], out)
    _census_expected(name, configs)(drawn[-1])


def test_table1_figure(study, tmp_path, drawn):
    df = plotting.table1(_configs(study, "stability"))
    out = tmp_path / "table1.png"
    plotting.table1_figure(df, out)
    check_figure(drawn[-1], out)
    r = df.iloc[0]
    assert (round(r.stable_ci_low, 6), round(r.stable_ci_high, 6)) in whiskers(drawn[-1])
    assert (round(r.EV_ci_low, 6), round(r.EV_ci_high, 6)) in whiskers(drawn[-1])


@pytest.mark.parametrize("name", list(function.FIGURES))
def test_function_figures(study, tmp_path, drawn, name):
    configs = _configs(study, "function")
    out = tmp_path / f"{name}.png"
    function.FIGURES[name](configs, out)
    check_figure(drawn[-1], out)
    c0 = Path(configs[0]["dir"])
    if name == "masking_ev":
        s = json.loads((c0 / "masking_summary.json").read_text())
        assert span(s["sets"]["stable"]["delta_ev"]) in whiskers(drawn[-1])
        assert span(s["c3"]["mass"]["delta_ev"]["ratio"]) in whiskers(drawn[-1])
    if name == "surface_form":
        prof = binned_profile(pd.read_parquet(c0 / "features.parquet"), "top_token_share")
        un = prof[(prof["label"] == "unstable") & np.isfinite(prof["ci_low"])]
        assert any(b == (pytest.approx(un["ci_low"].min()), pytest.approx(un["ci_high"].max()))
                   for b in bands(drawn[-1]))


def test_pool_figure(study, tmp_path, drawn):
    configs = _configs(study, "pool")
    out = tmp_path / "pool_stability.png"
    pool.pool_stability(configs, out)
    check_figure(drawn[-1], out)
    s = json.loads((Path(configs[0]["dir"]) / "summary.json").read_text())
    assert span(s["ev"]["pool_after"]) in whiskers(drawn[-1])


@pytest.fixture()
def geometry_configs(planted, tmp_path):  # noqa: F811
    groups, features, cache = planted
    g = subspaces.run_geometry(groups, features, cache, energy=0.9, n_bootstrap=50)
    configs = []
    for w in ("trained", "random"):
        subspaces.write_geometry(g, tmp_path / w)
        configs.append({"model": "m", "weights": w, "hook": "h", "variant": "topk",
                        "dir": str(tmp_path / w)})
    return configs


@pytest.mark.parametrize("name", list(geometry.FIGURES))
def test_geometry_figures(geometry_configs, tmp_path, drawn, name):
    out = tmp_path / f"{name}.png"
    geometry.FIGURES[name](geometry_configs, out)
    # spectra and rank-vs-count show every seed (4 here) in place of an interval
    check_figure(drawn[-1], out, per_seed=4 if name in ("spectra", "rank_vs_count") else 0)
    if name == "transfer":
        s = json.loads((Path(geometry_configs[0]["dir"]) / "summary.json").read_text())
        assert span(s["transfer"]["directions"]["covariance"]) in whiskers(drawn[-1])
    if name == "angles":
        an = pd.read_parquet(Path(geometry_configs[0]["dir"]) / "angles.parquet")
        assert span(subspaces.median_angle_intervals(an)["cross"]) in whiskers(drawn[-1])


@pytest.fixture()
def synthetic_config(tmp_path):
    """Recovery of planted latents (as in test_synthetic): points exact, groups in a fresh
    random basis per seed, with a little noise so that intervals have width."""
    truth = synthetic.make_truth(SPEC)
    rng = np.random.default_rng(0)
    seeds, dirs = [0, 1, 2, 3], []
    for _ in seeds:
        parts = [truth.points + 0.05 * rng.standard_normal(truth.points.shape)]
        for U in truth.groups:
            q = np.linalg.qr(rng.standard_normal((U.shape[1], U.shape[1])))[0]
            parts.append((U @ q).T)
        dirs.append(np.concatenate(parts))
    rec = synthetic.recovery(dirs, seeds, truth, _features(seeds, len(dirs[0]), lambda s, j: 0.5),
                             theta=0.7, eps=0.05)
    synthetic.write_recovery(rec, tmp_path / "recovery")
    return {"model": "lowrank", "weights": "synthetic", "hook": "features",
            "variant": "synth-topk", "dir": str(tmp_path / "recovery")}


@pytest.mark.parametrize("name", list(geometry.SYNTHETIC_FIGURES))
def test_synthetic_figures(synthetic_config, tmp_path, drawn, name):
    out = tmp_path / f"{name}.png"
    geometry.SYNTHETIC_FIGURES[name]([synthetic_config], out)
    check_figure(drawn[-1], out)
    iv = json.loads((Path(synthetic_config["dir"]) / "summary.json").read_text())["intervals"]
    if name == "recovery_by_rank":
        point = next(r for r in iv["by_rank"] if r["kind"] == "point")
        assert span(point["truth_overlap"]) in whiskers(drawn[-1])
    else:
        assert span(iv["components"][0]["max_angle_deg"]) in whiskers(drawn[-1])


def test_autointerp_figure(tmp_path, drawn):
    configs = []
    rng = np.random.default_rng(0)
    for w, v in (("trained", "topk"), ("trained", "relu"), ("random", "topk")):
        d = tmp_path / w / v
        table = pd.DataFrame({"anchor": np.repeat([0, 1, 2], 10),
                              "label": np.tile(["stable"] * 5 + ["unstable"] * 5, 3),
                              "classification": rng.choice(["surface", "semantic"], 30)})
        io.write_json(d / "summary.json", autointerp.summarize(table))
        configs.append({"model": "m", "weights": w, "hook": "h", "variant": v, "dir": str(d)})
    out = tmp_path / "surface_share.png"
    autointerp_plots.surface_share(configs, out)
    check_figure(drawn[-1], out)
    s = json.loads((tmp_path / "trained" / "topk" / "summary.json").read_text())["labels"]
    assert span(s["unstable"]["seed_level"]) in whiskers(drawn[-1])
    assert span(s["unstable"]) in whiskers(drawn[-1])  # the Wilson interval beside it


# ---------------------------------------------------------------------------------------------
# the rules declare each figure's vector file


def test_every_figure_rule_declares_the_vector_file(tmp_path):
    """In a dry run of the test study (auto-interp on), every PNG a job writes under
    results/figures comes with its vector copy among that job's outputs."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(tmp_path), "--configfile", str(REPO / "tests" / "config.yaml"),
           "--config", 'autointerp={"endpoint": "http://127.0.0.1:9"}', "-n", "--forceall",
           "--cores", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    outputs = [line.split(":", 1)[1].split(", ") for line in proc.stdout.splitlines()
               if re.match(r"^\s+output: ", line)]
    pngs = {p.strip() for out in outputs for p in out if p.strip().endswith(".png")}
    expected = {f"results/figures/{stage}/{n}.png" for stage, family in (
        ("census", figures.CENSUS), ("function", figures.FUNCTION),
        ("geometry", figures.GEOMETRY), ("synthetic", figures.SYNTHETIC)) for n in family.names}
    expected |= {"results/figures/census/table1.png", "results/figures/pool/pool_stability.png",
                 "results/figures/autointerp/surface_share.png"}
    assert expected <= pngs
    for out in outputs:
        files = {p.strip() for p in out}
        for png in (p for p in files if p.endswith(".png")):
            assert figures.vector(png) in files, f"{png}: its vector copy is not an output"
