# The claim-by-claim summary (C1-C7, dead-salmon control), generated from every stage's outputs.


localrules:
    summary,


rule summary:
    input:
        unpack(summary_inputs),
    output:
        md=report(
            "results/summary.md",
            caption="../report/summary.rst",
            category="Summary",
        ),
        json="results/summary.json",
    log:
        "logs/summary.log",
    conda:
        "../../envs/analysis.yaml"
    params:
        configs=[summary_config(c) for c in sae_configs()],
        synthetic=[summary_synthetic(c) for c in synthetic_configs()],
        main_variant=config["summary"]["main_variant"],
        floors=config["summary"]["floors"],
        health=config["summary"]["health"],
    script:
        "../scripts/summary.py"
