"""The claim-by-claim summary of the study from every stage's outputs."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the saestab library  # noqa: F821
from saestab import io, logs, summary

sm = snakemake  # noqa: F821
log = logs.setup(sm.log[0])
configs = [summary.Config(**{k: (Path(v) if k in summary.STAGES else v) for k, v in c.items()})
           for c in sm.params.configs]
study = summary.Study(configs, synthetic=list(sm.params.synthetic),
                      main_variant=sm.params.main_variant,
                      floors=dict(sm.params.floors), health=dict(sm.params.health),
                      tokens={Path(t).parent.name: Path(t) for t in sm.input.tokens})
claims = summary.build(study)
data = summary.data_splits(study)
compute = summary.compute_time(sm.input.benchmarks)
with io.atomic_path(sm.output.md) as tmp:
    tmp.write_text(summary.to_markdown(claims, data=data, compute=compute), encoding="utf-8")
io.write_json(sm.output.json, summary.to_json(claims, data, compute))
for c in claims:
    log.info("%s (%s): %s%s (%s)", c.id, c.kind, c.verdict,
             "" if c.reason is None else f" [{c.reason}]",
             "–" if c.value is None else f"{c.value:.4g} [{c.ci_low}, {c.ci_high}]")
