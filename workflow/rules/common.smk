# Shared helpers: wildcard constraints, paths and input functions.
import glob


wildcard_constraints:
    model="[A-Za-z0-9_-]+",
    weights="trained|random",
    hook="[A-Za-z0-9_.]+",
    split="train|eval",


MODELS = config["models"]
WEIGHTS = config["weights"]


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


def all_targets():
    """Everything the default target builds; later stages extend this list."""
    return cache_dirs("train") + cache_dirs("eval")
