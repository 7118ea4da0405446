# Per-seed SAE training: one job trains a group of seeds over one pass of the cached activations.


rule train_saes:
    input:
        train="results/{model}/{weights}/{hook}/cache/train",
        eval="results/{model}/{weights}/{hook}/cache/eval",
    output:
        directory("results/{model}/{weights}/{hook}/saes/{variant}/group{group}"),
    log:
        "logs/{model}/{weights}/{hook}/train_saes/{variant}-group{group}.log",
    benchmark:
        "benchmarks/{model}/{weights}/{hook}/train_saes/{variant}-group{group}.tsv"
    # the longest jobs start first: in a 2-core default run (two jobs side by side), the
    # census, surface, pool and masking jobs of both TopK configurations went ahead of the
    # ReLU group's training, which then ran alone on one of the two cores for all 11.5 minutes
    priority: 10
    conda:
        "../../envs/train.yaml"
    threads: job_threads()
    resources:
        mem_mb=8000,
        runtime=240,
        gpu=gpu_request(),
    params:
        variant=lambda wc: SAE_CFG["variants"][wc.variant],
        seeds=lambda wc: group_seeds(int(wc.group)),
        data_seed=SAE_CFG["data_seed"],
        vary_data_seed=lambda wc: SAE_CFG["variants"][wc.variant].get(
            "vary_data_seed", SAE_CFG["vary_data_seed"]
        ),
        snapshots=SAE_CFG["snapshots"],
        # outside the output directory, so that a failed or killed job's checkpoint survives
        # Snakemake's clean-up and the rerun resumes from it
        work_dir=lambda wc: (
            f"results/{wc.model}/{wc.weights}/{wc.hook}/saes/{wc.variant}/.work/group{wc.group}"
        ),
    script:
        "../scripts/train_saes.py"
