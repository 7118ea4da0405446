# Feature pools (C7): per configuration, disjoint seed subsets pooled into de-duplicated SAEs,
# post-trained briefly and compared with standard SAEs; then one figure and table across them.


localrules:
    pool_figure,


rule pool_saes:
    input:
        groups=lambda wc: sae_group_dirs(wc.model, wc.weights, wc.hook, wc.variant),
        pairwise="results/{model}/{weights}/{hook}/stability/{variant}/pairwise.npz",
        pairwise_meta="results/{model}/{weights}/{hook}/stability/{variant}/pairwise.json",
        train="results/{model}/{weights}/{hook}/cache/train",
        eval="results/{model}/{weights}/{hook}/cache/eval",
    output:
        summary="results/{model}/{weights}/{hook}/pool/{variant}/summary.json",
        table="results/{model}/{weights}/{hook}/pool/{variant}/pool_table.csv",
        evals="results/{model}/{weights}/{hook}/pool/{variant}/evals.csv",
        cross="results/{model}/{weights}/{hook}/pool/{variant}/cross_maxcos.parquet",
        saes=directory("results/{model}/{weights}/{hook}/pool/{variant}/saes"),
    log:
        "logs/{model}/{weights}/{hook}/pool_saes/{variant}.log",
    benchmark:
        "benchmarks/{model}/{weights}/{hook}/pool_saes/{variant}.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: job_threads()
    resources:
        # one pool's source SAEs in memory at a time, with room for d_in up to ~2300
        mem_mb=lambda wc: 8000
        + SAE_CFG["n_seeds"] * SAE_CFG["variants"][wc.variant]["d_sae"] // 40,
        runtime=120,
        gpu=gpu_request(),
    params:
        pool=config["pool"],
        theta=config["stability"]["theta"],
        recipe=lambda wc: SAE_CFG["variants"][wc.variant],
        data_seed=SAE_CFG["data_seed"],
    script:
        "../scripts/pool_saes.py"


rule pool_figure:
    input:
        summaries=[f"{pool_dir(c)}/summary.json" for c in pool_configs()],
        cross=[f"{pool_dir(c)}/cross_maxcos.parquet" for c in pool_configs()],
    output:
        figure=report(
            figure_png("pool", "pool_stability"),
            caption="../report/pool_stability.rst",
            category="C7 feature pool",
        ),
        vector=figures.vector(figure_png("pool", "pool_stability")),
        csv="results/tables/pool_table.csv",
        md="results/tables/pool_table.md",
    log:
        "logs/figures/pool/pool_stability.log",
    conda:
        "../../envs/analysis.yaml"
    params:
        configs=[pool_config(c) for c in pool_configs()],
    script:
        "../scripts/pool_figure.py"
