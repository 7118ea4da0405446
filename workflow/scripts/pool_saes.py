"""Feature pools of one SAE configuration: assemble, post-train, compare with standard SAEs."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # the saestab library  # noqa: F821
from saestab import census, io, logs, matching, pooling, runtime
from saestab.activations import ActivationCache

sm = snakemake  # noqa: F821
log = logs.setup(sm.log[0])
runtime.set_threads(sm.threads)
device = runtime.resolve_device(sm.params.device)
p = sm.params
cfg = p.pool
dirs = census.seed_dirs(sm.input.groups)  # the census's order: its pairwise table's index
maxcos, _, _ = matching.load_pairwise(sm.input.pairwise)
if maxcos.shape[0] != len(dirs):
    raise io.InputError(f"{sm.input.pairwise}: a table of {maxcos.shape[0]} SAEs, but "
                        f"{len(dirs)} SAEs were found in {list(sm.input.groups)}")
train = ActivationCache.open(sm.input.train)
tokens = pooling.post_train_tokens(p.recipe, train.n_tokens,
                                   cfg["post_train_fraction"], cfg["post_train_tokens"])
log.info("%d seeds in %d pools; post-training %d tokens", len(dirs), cfg["n_pools"], tokens)
study = pooling.run_pools(
    dirs, maxcos, train, ActivationCache.open(sm.input.eval), p.recipe, theta=p.theta,
    n_pools=cfg["n_pools"], post_tokens=tokens, warmup_steps=cfg["warmup_steps"],
    lr_scale=cfg["post_train_lr_scale"],
    mass_tokens=cfg["mass_tokens"], data_seed=p.data_seed, eval_batch_size=p.eval_batch_size,
    device=device, n_splits=cfg["n_splits"], split_seed=cfg["seed"],
)
pooling.write_pools(study, Path(sm.output.summary).parent, sm.output.saes)
