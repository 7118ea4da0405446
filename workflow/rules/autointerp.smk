# Optional auto-interp (C4): explanations of sampled stable and unstable features from the
# OpenAI-compatible endpoint named by autointerp.endpoint, classified surface-form vs semantic.
# Nothing here is a target unless the endpoint is set. Both rules run on the submitting host
# (localrules): they need outbound network, which cluster nodes often lack, and little else.


localrules:
    autointerp,
    autointerp_figure,


rule autointerp:
    input:
        contexts="results/{model}/{weights}/{hook}/function/{variant}/top_contexts.parquet",
    output:
        explanations=(
            "results/{model}/{weights}/{hook}/autointerp/{variant}/explanations.parquet"
        ),
        summary="results/{model}/{weights}/{hook}/autointerp/{variant}/summary.json",
    log:
        "logs/{model}/{weights}/{hook}/autointerp/{variant}.log",
    conda:
        "../../envs/analysis.yaml"
    resources:
        mem_mb=2000,
        runtime=120,
    params:
        autointerp=config["autointerp"],
    script:
        "../scripts/autointerp.py"


rule autointerp_figure:
    input:
        summaries=[f"{autointerp_dir(c)}/summary.json" for c in sae_configs()],
    output:
        png=report(
            figure_png("autointerp", "surface_share"),
            caption="../report/autointerp_surface_share.rst",
            category="C4 character",
        ),
        vector=figures.vector(figure_png("autointerp", "surface_share")),
    log:
        "logs/figures/autointerp/surface_share.log",
    conda:
        "../../envs/analysis.yaml"
    params:
        configs=[dict(census_config(c), dir=autointerp_dir(c)) for c in sae_configs()],
    script:
        "../scripts/autointerp_figure.py"
