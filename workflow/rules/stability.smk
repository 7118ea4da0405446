# Stability census: pairwise matching of all seeds of a configuration, per-feature stability,
# sweeps, training-length curve; then figures across configurations and the Table-1 analogue.


localrules:
    census_figure,
    table1,


rule scan_features:
    # one pass of every seed over a cache split, shared by the census (train) and the surface
    # statistics (their split)
    input:
        groups=lambda wc: sae_group_dirs(wc.model, wc.weights, wc.hook, wc.variant),
        cache="results/{model}/{weights}/{hook}/cache/{split}",
    output:
        "results/{model}/{weights}/{hook}/scan/{variant}/{split}.npz",
    log:
        "logs/{model}/{weights}/{hook}/scan_features/{variant}-{split}.log",
    benchmark:
        "benchmarks/{model}/{weights}/{hook}/scan_features/{variant}-{split}.tsv"
    wildcard_constraints:
        split="train|eval",
    conda:
        "../../envs/analysis.yaml"
    threads: job_threads()
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=gpu_request(),
    params:
        top_k=config["function"]["surface"]["top_k"],
        # the census reads the train split's first stability.train_tokens rows (null: all)
        max_tokens=lambda wc: (
            config["stability"]["train_tokens"] if wc.split == "train" else None
        ),
    script:
        "../scripts/scan_features.py"


rule stability_census:
    input:
        groups=lambda wc: sae_group_dirs(wc.model, wc.weights, wc.hook, wc.variant),
        train_scan="results/{model}/{weights}/{hook}/scan/{variant}/train.npz",
    output:
        features="results/{model}/{weights}/{hook}/stability/{variant}/features.parquet",
        summary="results/{model}/{weights}/{hook}/stability/{variant}/summary.json",
        pairwise="results/{model}/{weights}/{hook}/stability/{variant}/pairwise.npz",
        pairwise_meta="results/{model}/{weights}/{hook}/stability/{variant}/pairwise.json",
        fractions="results/{model}/{weights}/{hook}/stability/{variant}/fractions.csv",
        evals="results/{model}/{weights}/{hook}/stability/{variant}/evals.csv",
        sweeps="results/{model}/{weights}/{hook}/stability/{variant}/sweeps.parquet",
        n_subsample="results/{model}/{weights}/{hook}/stability/{variant}/n_subsample.parquet",
        training_length=(
            "results/{model}/{weights}/{hook}/stability/{variant}/training_length.csv"
        ),
    log:
        "logs/{model}/{weights}/{hook}/stability_census/{variant}.log",
    benchmark:
        "benchmarks/{model}/{weights}/{hook}/stability_census/{variant}.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: job_threads()
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        stability=result_section(config, "stability"),
    script:
        "../scripts/stability_census.py"


rule census_figure:
    input:
        figures.CENSUS.inputs([census_dir(c) for c in sae_configs()]),
    output:
        png=report(
            figure_png("census"),
            caption="../report/census_figure.rst",
            category="C1-C2 stability census",
        ),
        vector=figures.vector(figure_png("census")),
    log:
        "logs/figures/census/{figure}.log",
    conda:
        "../../envs/analysis.yaml"
    params:
        configs=[census_config(c) for c in sae_configs()],
    script:
        "../scripts/census_figure.py"


rule table1:
    input:
        summaries=[census_file(c, "summary.json") for c in sae_configs()],
    output:
        csv="results/tables/table1.csv",
        md="results/tables/table1.md",
        png=report(
            figure_png("census", "table1"),
            caption="../report/table1.rst",
            category="C1-C2 stability census",
        ),
        vector=figures.vector(figure_png("census", "table1")),
    log:
        "logs/figures/table1.log",
    conda:
        "../../envs/analysis.yaml"
    params:
        configs=[census_config(c) for c in sae_configs()],
    script:
        "../scripts/table1.py"
