# Synthetic model with known point features and low-rank groups (C6): its activations go through
# the same train_saes and stability_census rules as a real model's (weights = "synthetic"); the
# recovery of the ground truth is measured here.


localrules:
    synthetic_figure,


rule synthetic_cache:
    output:
        train=directory("results/{model}/synthetic/{hook}/cache/train"),
        eval=directory("results/{model}/synthetic/{hook}/cache/eval"),
        truth="results/{model}/synthetic/{hook}/truth.npz",
        truth_json="results/{model}/synthetic/{hook}/truth.json",
    log:
        "logs/{model}/synthetic/{hook}/synthetic_cache.log",
    conda:
        "../../envs/analysis.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        spec=lambda wc: config["synthetic"]["models"][wc.model],
    script:
        "../scripts/synthetic_cache.py"


rule synthetic_recovery:
    input:
        truth="results/{model}/synthetic/{hook}/truth.npz",
        truth_json="results/{model}/synthetic/{hook}/truth.json",
        groups=lambda wc: sae_group_dirs(wc.model, "synthetic", wc.hook, wc.variant),
        features="results/{model}/synthetic/{hook}/stability/{variant}/features.parquet",
    output:
        summary="results/{model}/synthetic/{hook}/recovery/{variant}/summary.json",
        by_rank="results/{model}/synthetic/{hook}/recovery/{variant}/by_rank.parquet",
        latents="results/{model}/synthetic/{hook}/recovery/{variant}/latents.parquet",
        components="results/{model}/synthetic/{hook}/recovery/{variant}/components.parquet",
        cross_seed="results/{model}/synthetic/{hook}/recovery/{variant}/cross_seed.parquet",
    log:
        "logs/{model}/synthetic/{hook}/synthetic_recovery/{variant}.log",
    conda:
        "../../envs/analysis.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        assign_threshold=config["synthetic"]["assign_threshold"],
        theta=config["stability"]["theta"],
        eps=config["stability"]["eps"],
    script:
        "../scripts/synthetic_recovery.py"


rule synthetic_figure:
    input:
        summaries=[f"{synthetic_dir(c)}/summary.json" for c in recovery_configs()],
        tables=figures.SYNTHETIC.inputs([synthetic_dir(c) for c in recovery_configs()]),
    output:
        png=report(
            figure_png("synthetic"),
            caption="../report/synthetic_figure.rst",
            category="C6 synthetic model",
        ),
        vector=figures.vector(figure_png("synthetic")),
    log:
        "logs/figures/synthetic/{figure}.log",
    conda:
        "../../envs/analysis.yaml"
    params:
        configs=[
            dict(census_config(c), dir=synthetic_dir(c)) for c in recovery_configs()
        ],
    script:
        "../scripts/synthetic_figure.py"
