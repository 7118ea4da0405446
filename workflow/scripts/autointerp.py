"""Auto-interp of one configuration: explanations of sampled stable and unstable features from
the configured OpenAI-compatible endpoint, classified surface-form vs semantic."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the saestab library  # noqa: F821
from saestab import autointerp, logs

sm = snakemake  # noqa: F821
log = logs.setup(sm.log[0])
cfg = sm.params.autointerp
out_dir = Path(sm.output.summary).parent
cache = autointerp.RequestCache(out_dir / "requests.jsonl")
contexts = autointerp.read_contexts(sm.input.contexts)
with autointerp.ChatClient(autointerp.ClientConfig.from_config(cfg)) as client:
    log.info("%s, model %s; %d answers cached in %s", client.url, cfg["model"], len(cache),
             cache.path)
    table, counts = autointerp.explain_features(
        contexts, client, cache, labels=cfg["labels"], n_features=cfg["n_features"],
        max_contexts=cfg["max_contexts"], seed=cfg["sample_seed"],
        explain_max_tokens=cfg["explain_max_tokens"],
        classify_max_tokens=cfg["classify_max_tokens"])
summary = autointerp.summarize(table, labels=cfg["labels"])
summary.update(configuration=dict(sm.wildcards.items()), endpoint=client.url,
               llm_model=cfg["model"], requests=counts, attempts=client.n_attempts)
autointerp.write_outputs(table, summary, sm.output.explanations, sm.output.summary)
for lab, d in summary["labels"].items():
    log.info("%s: %d features, surface share %s [%.2f, %.2f], %d unparsed", lab,
             d["n_features"], d["surface_share"], d["ci_low"], d["ci_high"], d["n_unparsed"])
log.info("requests: %d asked, %d from the cache", counts["asked"], counts["cached"])
