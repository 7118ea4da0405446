# Subspaces of the unstable features (C5): spectra, cross-seed transfer against baselines,
# principal angles; per configuration (real and synthetic), then figures across them.


localrules:
    geometry_figure,


rule geometry:
    input:
        groups=lambda wc: sae_group_dirs(wc.model, wc.weights, wc.hook, wc.variant),
        features="results/{model}/{weights}/{hook}/stability/{variant}/features.parquet",
        eval="results/{model}/{weights}/{hook}/cache/eval",
    output:
        summary="results/{model}/{weights}/{hook}/geometry/{variant}/summary.json",
        spectra="results/{model}/{weights}/{hook}/geometry/{variant}/spectra.parquet",
        ranks="results/{model}/{weights}/{hook}/geometry/{variant}/ranks.parquet",
        transfer="results/{model}/{weights}/{hook}/geometry/{variant}/transfer.parquet",
        angles="results/{model}/{weights}/{hook}/geometry/{variant}/angles.parquet",
    log:
        "logs/{model}/{weights}/{hook}/geometry/{variant}.log",
    benchmark:
        "benchmarks/{model}/{weights}/{hook}/geometry/{variant}.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        geometry=config["geometry"],
    script:
        "../scripts/geometry.py"


rule geometry_figure:
    input:
        figures.GEOMETRY.inputs([geometry_dir(c) for c in geometry_configs()]),
    output:
        png=report(
            figure_png("geometry"),
            caption="../report/geometry_figure.rst",
            category="C5 subspaces",
        ),
        vector=figures.vector(figure_png("geometry")),
    log:
        "logs/figures/geometry/{figure}.log",
    conda:
        "../../envs/analysis.yaml"
    params:
        configs=[geometry_config(c) for c in geometry_configs()],
    script:
        "../scripts/geometry_figure.py"
