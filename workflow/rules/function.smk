# Functional impact and character of stable vs unstable features (C3, C4): masking with the
# reconstruction spliced into the model, activation and surface-form statistics with a browser of
# top contexts; then figures across configurations (trained and random weights side by side).


localrules:
    function_figure,


rule masking:
    input:
        groups=lambda wc: sae_group_dirs(wc.model, wc.weights, wc.hook, wc.variant),
        features="results/{model}/{weights}/{hook}/stability/{variant}/features.parquet",
        eval="results/{model}/{weights}/{hook}/cache/eval",
        tokens="results/{model}/tokens",
        model=model_files,
    output:
        table="results/{model}/{weights}/{hook}/function/{variant}/masking.parquet",
        summary="results/{model}/{weights}/{hook}/function/{variant}/masking_summary.json",
    log:
        "logs/{model}/{weights}/{hook}/masking/{variant}.log",
    benchmark:
        "benchmarks/{model}/{weights}/{hook}/masking/{variant}.tsv"
    conda:
        "../../envs/model.yaml"
    threads: job_threads()
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=gpu_request(),
    params:
        cfg=result_section(config, "function.masking"),
        seed=config["function"]["seed"],
        spec=model_spec,
        random_seed=config["random_seed"],
    script:
        "../scripts/masking.py"


rule surface_stats:
    input:
        features="results/{model}/{weights}/{hook}/stability/{variant}/features.parquet",
        cache=f"results/{{model}}/{{weights}}/{{hook}}/cache/{config['function']['surface']['split']}",
        scan=f"results/{{model}}/{{weights}}/{{hook}}/scan/{{variant}}/{config['function']['surface']['split']}.npz",
        model=model_files,
    output:
        features="results/{model}/{weights}/{hook}/function/{variant}/features.parquet",
        comparison="results/{model}/{weights}/{hook}/function/{variant}/comparison.parquet",
        contexts="results/{model}/{weights}/{hook}/function/{variant}/top_contexts.parquet",
        summary="results/{model}/{weights}/{hook}/function/{variant}/surface_summary.json",
        browser=report(
            "results/{model}/{weights}/{hook}/function/{variant}/browser.html",
            caption="../report/browser.rst",
            category="C4 character",
            subcategory="{weights} {variant}",
        ),
    log:
        "logs/{model}/{weights}/{hook}/surface_stats/{variant}.log",
    benchmark:
        "benchmarks/{model}/{weights}/{hook}/surface_stats/{variant}.tsv"
    conda:
        "../../envs/model.yaml"
    threads: job_threads()
    resources:
        mem_mb=8000,
        runtime=30,
        gpu=gpu_request(),
    params:
        cfg=result_section(config, "function.surface"),
        seed=config["function"]["seed"],
        spec=model_spec,
    script:
        "../scripts/surface_stats.py"


rule function_figure:
    input:
        figures.FUNCTION.inputs([function_dir(c) for c in function_configs()]),
    output:
        png=report(
            figure_png("function"),
            caption="../report/function_figure.rst",
            category="C3-C4 function and character",
        ),
        vector=figures.vector(figure_png("function")),
    log:
        "logs/figures/function/{figure}.log",
    conda:
        "../../envs/analysis.yaml"
    params:
        configs=[function_config(c) for c in function_configs()],
    script:
        "../scripts/function_figure.py"
