# Shared helpers: wildcard constraints, paths and input functions.
import glob


wildcard_constraints:
    model="[A-Za-z0-9_-]+",
    weights="trained|random",
    hook="[A-Za-z0-9_.]+",
    split="train|eval",
    variant="[A-Za-z0-9_.-]+",
    group="[0-9]+",
    figure="[a-z0-9_]+",


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


def model_files(wildcards):
    """Files a model needs on disk before it can be loaded (only gguf models have any)."""
    if MODELS[wildcards.model]["source"] == "gguf":
        return [f"resources/models/{wildcards.model}/model.gguf"]
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


CENSUS_FIGURES = [
    "stability_cdf",
    "p_hat_hist",
    "stability_vs_frequency",
    "theta_sweep",
    "labels_vs_n",
    "training_length",
]


def all_targets():
    """Everything the default target builds; later stages extend this list."""
    saes = [d for c in sae_configs() for d in sae_group_dirs(*c)]
    census = [census_file(c, "summary.json") for c in sae_configs()]
    figures = expand("results/figures/census/{figure}.png", figure=CENSUS_FIGURES)
    tables = ["results/tables/table1.md", "results/figures/census/table1.png"]
    return cache_dirs("train") + cache_dirs("eval") + saes + census + figures + tables
